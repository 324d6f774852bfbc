# finmesh — the Makefile is the interface.
#   make run    the whole mesh on the embedded stack (Kafka + PostgreSQL), with demo data
#   make test   unit, integration and end-to-end tests on the real broker and database
#   make bench  benchmarks; figures land in bench/results/
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
GEN := gen
PROTOS := $(shell find protos -name '*.proto')
KAFKA_JARS := deploy/kafka/target/dependency/.fetched

.PHONY: all install protos kafka-jars lint test test-unit test-integration test-e2e run bench soak topics-doc clean

all: install protos

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements.txt
	echo "$(CURDIR)" > $(VENV)/lib/python3.11/site-packages/finmesh-tree.pth
	echo "$(CURDIR)/$(GEN)" >> $(VENV)/lib/python3.11/site-packages/finmesh-tree.pth
	touch $@

install: $(STAMP)

# Python code for every contract, generated once, into one package (gen/finmesh).
$(GEN)/.stamp: $(STAMP) $(PROTOS)
	rm -rf $(GEN) && mkdir -p $(GEN)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=$(GEN) --pyi_out=$(GEN) --grpc_python_out=$(GEN) $(PROTOS)
	find $(GEN)/finmesh -type d -exec touch {}/__init__.py \;
	touch $@

protos: $(GEN)/.stamp

# The Apache Kafka broker's jars, from Maven Central (version pinned in deploy/kafka/pom.xml).
$(KAFKA_JARS): deploy/kafka/pom.xml
	deploy/kafka/fetch

kafka-jars: $(KAFKA_JARS)

lint: protos
	$(VENV)/bin/buf lint
	$(VENV)/bin/ruff check meshkit services deploy tests bench
	$(PY) -m meshkit.topics check-readme README.md

test: protos kafka-jars
	$(PY) -m pytest -q tests

test-unit: protos
	$(PY) -m pytest -q tests/unit

run: protos kafka-jars
	$(PY) -m deploy.embedded run --demo

bench: protos kafka-jars
	$(PY) -m bench

soak: protos kafka-jars
	$(PY) -m bench.pipeline --minutes 30 --rate 20 --name soak_30min

topics-doc: protos
	$(PY) -m meshkit.topics write-readme README.md

clean:
	rm -rf $(GEN) .stack .pytest_cache
