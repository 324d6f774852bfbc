"""The matcher's speed on the embedded stack (Kafka 4, PostgreSQL 18, one matcher worker process).

A catalog of 30,000 products across 3,000 institutions (each with its lead topic) is written to
the matcher's tables, then, in one run:

1. ready: matcher start → SERVING (catalog loaded from PostgreSQL and verified: count and checksum);
2. throughput: a burst of demands on ``DEMANDS_ACCEPTED`` drained by the matcher (demands matched
   per second, first to last ``DemandMatched``), then the same demands drained by a do-nothing
   Faust agent that only forwards them, then by a plain aiokafka consume-and-produce loop;
3. latency: demands at 300/s and at 1,000/s; latency = the demand's first ``LeadIssued`` on an
   institution's lead topic (the broker's append time) − the moment the ``DemandAccepted`` was
   handed to the producer; then the same 300/s through the do-nothing Faust forwarder alone (the
   matcher stopped), as a yardstick: Faust's own latency on this machine;
4. the reverse join: 100,000 open demands in the matcher's table, the matcher restarted (time to
   SERVING, time until the open demands are held, memory with them held), then a new product: time
   from ``UpsertProduct`` to the last ``DemandMatched`` it causes, and the matcher's own time for
   the join (from its log).

The lead topics are created and written once before the matcher starts, and the broker left to
settle: a broker that has just created 3,000 topics spends a minute on its first writes to them.

    python -m bench.matcher                       # everything, figures in bench/results/matcher.json
    python -m bench.matcher --products 3000 --institutions 300 --demands 5000 --open 10000  # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console

from bench import report
from finmesh.catalog.v1 import product_pb2 as catalog
from finmesh.catalog.v1 import product_pb2_grpc as catalog_grpc
from finmesh.common.v1 import finance_pb2 as finance
from finmesh.demand.v1 import demand_pb2
from finmesh.demand.v1 import events_pb2 as demand_events
from finmesh.enterprise.v1 import enterprise_pb2
from finmesh.institution.v1 import events_pb2 as institution_events
from finmesh.institution.v1 import institution_pb2
from finmesh.lead.v1 import lead_pb2
from finmesh.matching.v1 import events_pb2 as matching
from meshkit import apikeys, codec, db, topics
from meshkit.kafka import ensure_topics, make_producer
from services.matcher import domain, mapping

REPO_ROOT = Path(__file__).resolve().parents[1]
MIGRATIONS = REPO_ROOT / "services" / "matcher" / "migrations"
SCHEMA = "matcher"
# The baselines forward the demands to a scratch topic of the bench's own, named after the demand topic.
FORWARD = replace(topics.DEMANDS_ACCEPTED, name=f"{topics.DEMANDS_ACCEPTED.name}.bench-forward",
                  consumers=("bench",), dead_letter=None)

CATEGORIES = [v for v in finance.LoanCategory.values() if v]
INDUSTRIES = [v for v in finance.KeyIndustry.values() if v]
PROVINCES = ["35", "31", "32", "33", "44", "11", "37", "42", "51", "61"]
TERM_RANGES = [(1, 12), (3, 24), (6, 36), (12, 60), (24, 120), (6, 60), (12, 36), (36, 120)]
STANDARD_TERMS = [6, 12, 18, 24, 36, 48, 60, 84, 120]
YUAN = 100
WAN = 10_000 * YUAN


# -- the data -------------------------------------------------------------------------------------------


def institutions(n: int) -> list[str]:
    return [f"bank-{i:04d}" for i in range(n)]


def make_products(rng: random.Random, banks: list[str], total: int) -> list[catalog.Product]:
    out = []
    for i in range(total):
        bank = banks[i % len(banks)]
        lo = rng.choice([10, 50, 100, 200, 500, 1000]) * WAN
        tmin, tmax = rng.choice(TERM_RANGES)
        rmin = rng.randrange(300, 600, 5)
        p = catalog.Product(
            product_id=f"{bank}-p{i // len(banks)}", institution_id=bank, name=f"Loan {i}",
            product_type=catalog.PRODUCT_TYPE_LOAN, loan_category=rng.choice(CATEGORIES),  # type: ignore[arg-type]
            amount_min_fen=lo, amount_max_fen=lo * rng.choice([5, 10, 20, 50]), term_min_months=tmin,
            term_max_months=tmax, rate_min_bps=rmin, rate_max_bps=rmin + rng.randrange(50, 300, 5),
            status=catalog.PRODUCT_STATUS_ACTIVE, version=1,
        )
        if rng.random() < 0.3:
            p.collateral_required = rng.choice([finance.COLLATERAL_PROPERTY, finance.COLLATERAL_EQUIPMENT,
                                                finance.COLLATERAL_RECEIVABLES])
        if rng.random() < 0.3:
            p.industries.extend(rng.sample(INDUSTRIES, rng.randint(1, 3)))
        if rng.random() < 0.4:
            p.regions.append(rng.choice(PROVINCES))
        if rng.random() < 0.3:
            p.requirements.append(rng.choice([
                catalog.Criterion(field="enterprise.srdi_tier", operator="gte", values=["INNOVATIVE_SME"],
                                  critical=rng.random() < 0.5),
                catalog.Criterion(field="enterprise.years_in_business", operator="gte", values=["2"], critical=True),
                catalog.Criterion(field="enterprise.high_tech", operator="eq", values=["true"], critical=False),
            ]))
        p.updated_at.FromDatetime(datetime(2026, 1, 1, tzinfo=UTC))
        out.append(p)
    return out


def make_demand(rng: random.Random, demand_id: str, *, consent: bool = True) -> demand_pb2.Demand:
    """A demand spread over categories (15% any), amounts, terms, regions and industries."""
    amount = rng.choice([20, 50, 100, 200, 300, 500, 1000, 2000, 5000]) * WAN
    d = demand_pb2.Demand(
        demand_id=demand_id, channel=demand_pb2.CHANNEL_API, status=demand_pb2.DEMAND_STATUS_MATCHING,
        request=demand_pb2.DemandRequest(
            enterprise_uscc=f"91350200MA{rng.randrange(10**8):08d}", amount_fen=amount,
            term_months=rng.choice(STANDARD_TERMS),
            max_rate_bps=0 if rng.random() < 0.2 else rng.randrange(400, 800, 10),
            loan_category=0 if rng.random() < 0.15 else rng.choice(CATEGORIES),  # type: ignore[arg-type]
            consent_to_share=consent, docking_mode=demand_pb2.DOCKING_MODE_INTELLIGENT,
            collateral_offered=rng.sample([finance.COLLATERAL_PROPERTY, finance.COLLATERAL_EQUIPMENT],
                                          rng.randint(0, 2)),
        ),
        enterprise=enterprise_pb2.Enterprise(
            name="Bench Manufacturing", region_code=f"{rng.choice(PROVINCES)}0203",
            key_industry=rng.choice(INDUSTRIES), size=rng.randint(1, 4),  # type: ignore[arg-type]
            srdi_tier=rng.randint(1, 4), founded_year=rng.randint(2000, 2025),  # type: ignore[arg-type]
            has_borrowed=rng.random() < 0.7,
        ),
    )
    d.enterprise.uscc = d.request.enterprise_uscc
    d.submitted_at.FromDatetime(datetime.now(UTC))
    return d


# -- the stack ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Matcher:
    """A matcher worker as a subprocess (``python -m services.matcher``)."""

    def __init__(self, database_url: str, bootstrap: str, folder: Path, group: str) -> None:
        self.grpc_port = free_port()
        self.log_path = folder / "matcher.log"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "SERVICE_NAME": "matcher",
                    "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "DATABASE_URL": database_url,
                    "GRPC_PORT": str(self.grpc_port), "METRICS_PORT": "0",
                    "DEMAND_GROUP": group, "LOG_LEVEL": "info", "SHUTDOWN_GRACE_SECONDS": "5"}
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    async def start(self, timeout: float = 180) -> float:
        """Start; returns the seconds until SERVING."""
        began = time.monotonic()
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen([sys.executable, "-m", "services.matcher"], cwd=REPO_ROOT, env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() - began < timeout:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the matcher exited\n{self.log_path.read_text()[-3000:]}")
                try:
                    if (await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)).status == \
                            health_pb2.HealthCheckResponse.SERVING:
                        return time.monotonic() - began
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.05)
        raise TimeoutError("the matcher did not become SERVING")

    def _pids(self) -> tuple[int, list[int]]:
        """The worker's pid and its children's (the outbox relay process)."""
        assert self.proc is not None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return self.proc.pid, [int(p) for p in children.read_text().split()] if children.exists() else []

    def rss_mb(self) -> float:
        """Resident memory of the worker and its child (the outbox relay process), in MiB."""
        worker, children = self._pids()
        total = 0.0
        for pid in [worker, *children]:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        return total

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU time (user + system) used so far by the worker and by its relay process, in seconds."""
        worker, children = self._pids()
        tick = os.sysconf("SC_CLK_TCK")

        def used(pid: int) -> float:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / tick
        return used(worker), sum(used(pid) for pid in children)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def seed_catalog(database_url: str, products: list[catalog.Product]) -> None:
    await db.migrate(database_url, SCHEMA, MIGRATIONS)
    conn = await asyncpg.connect(database_url, server_settings={"search_path": SCHEMA})
    try:
        await conn.copy_records_to_table("products", columns=[
            "product_id", "institution_id", "version", "status", "content_hash", "product", "updated_at",
            "loan_category", "programme_tags", "industries"], records=[
            (p.product_id, p.institution_id, 1, "PRODUCT_STATUS_ACTIVE",
             mapping.content_hash(p), p.SerializeToString(), p.updated_at.ToDatetime(tzinfo=UTC),
             finance.LoanCategory.Name(p.loan_category), [], [finance.KeyIndustry.Name(i) for i in p.industries])
            for p in products])
    finally:
        await conn.close()


async def seed_open_demands(database_url: str, demands: list[demand_pb2.Demand], parts: int) -> None:
    conn = await asyncpg.connect(database_url, server_settings={"search_path": SCHEMA})
    try:
        at = datetime.now(UTC) - timedelta(minutes=5)
        await conn.copy_records_to_table("open_demands", columns=[
            "demand_id", "part", "demand", "docking_mode", "consent", "active_leads", "tried", "matched_at"],
            records=[(d.demand_id, int(hashlib.md5(d.demand_id.encode()).hexdigest(), 16) % parts,
                      d.SerializeToString(), "INTELLIGENT", True, 0, [], at) for d in demands])
    finally:
        await conn.close()


async def create_lead_topics(bootstrap: str, banks: list[str]) -> None:
    """Every institution's lead topic, in batches (the relay would create them one by one).

    The bench's lead topics stamp each record with the broker's append time
    (``message.timestamp.type=LogAppendTime``): the latency phases read a lead's arrival on its
    topic from the record afterwards, instead of a live consumer of 3,000 topics loading the broker
    while it is measured.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=120_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        specs = [topics.lead_topic(b) for b in banks]
        todo = [s for s in specs if s.name not in existing]
        for start in range(0, len(todo), 250):
            await admin.create_topics([
                NewTopic(s.name, s.partitions, 1,
                         topic_configs={**s.configs(), "message.timestamp.type": "LogAppendTime"})
                for s in todo[start:start + 250]])
    finally:
        await admin.close()


async def warm_lead_topics(bootstrap: str, broker_pid: int | None, banks: list[str], console: Console) -> float:
    """Write one record to every lead topic, then wait for the broker to be idle again.

    A broker that has just created thousands of topics spends a minute or more on its first writes
    to them (measured: over 1 ms of CPU per record, falling tenfold as they warm); in production
    the lead topics have existed for months. Returns the seconds it took.
    """
    began = time.monotonic()
    producer = make_producer(bootstrap, "bench-warm", linger_ms=5)
    await producer.start()
    try:
        names = [topics.lead_topic(b).name for b in banks]
        # Every topic led first, or the writes below only retry (and log each retry); meanwhile
        # aiokafka logs each topic the metadata does not list yet, thousands of lines: not shown.
        quiet = logging.getLogger("aiokafka.cluster")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)
        try:
            await producer.client.set_topics(set(names))
            deadline = time.monotonic() + 120
            while True:
                await producer.client.force_metadata_update()
                cluster = producer.client.cluster
                leaders = [cluster.leader_for_partition(TopicPartition(n, 0)) for n in names]
                if all(leader is not None and leader >= 0 for leader in leaders):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{sum(x is None or x < 0 for x in leaders)} lead topics have no leader")
                await asyncio.sleep(0.5)
        finally:
            quiet.setLevel(level)
        warm = matching.LeadIssued(lead=lead_pb2.Lead(lead_id="bench-warm", demand_id="bench-warm"))
        value = warm.SerializeToString()
        for start in range(0, len(names), 500):
            await asyncio.gather(*[await producer.send(n, value=value, key=b"bench-warm")
                                   for n in names[start:start + 500]])
    finally:
        await producer.stop()
    if broker_pid is not None:
        await idle_broker(broker_pid, console)
    return time.monotonic() - began


def tree_cpu_seconds(pid: int | None) -> float:
    """CPU time (user + system) used so far by a process and its living descendants, in seconds."""
    if pid is None:
        return 0.0
    import psutil

    total = 0.0
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def burst_cpu(broker_pid: int | None, postgres_pid: int | None, matcher: Matcher) -> list[float]:
    """CPU seconds so far of the matcher, its relay, the broker, PostgreSQL and this process (the load)."""
    own = os.times()
    return [*matcher.cpu_seconds(), tree_cpu_seconds(broker_pid), tree_cpu_seconds(postgres_pid),
            own.user + own.system]


async def idle_broker(pid: int, console: Console, below: float = 0.15, quiet_s: float = 3.0,
                      timeout: float = 300) -> None:
    """Wait until the broker's process (``pid``) has used less than ``below`` of a core for ``quiet_s``."""
    def cpu() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    deadline = time.monotonic() + timeout
    quiet_since = time.monotonic()
    last = cpu()
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        now = cpu()
        if now - last > below:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return
        last = now
    console.print("  the broker did not become idle; measuring anyway")


async def announce_institution(bootstrap: str, institution_id: str) -> str:
    """Publish the InstitutionChanged the demand service (not run here) would, with a new API key's
    digest; returns the key."""
    key = apikeys.new()
    msg = institution_events.InstitutionChanged(
        institution=institution_pb2.Institution(institution_id=institution_id, name=institution_id, version=1),
        created=True, api_key_sha256=apikeys.digest(key))
    producer = make_producer(bootstrap, "bench-institutions")
    await producer.start()
    try:
        spec = topics.INSTITUTIONS_CHANGED
        await producer.send_and_wait(spec.name, value=msg.SerializeToString(), key=spec.key_of(msg),
                                     headers=codec.make_headers(spec.event_type, "bench"))
    finally:
        await producer.stop()
    return key


async def publish(producer: AIOKafkaProducer, demands: list[demand_pb2.Demand], rate: float | None,
                  sent: dict[str, float], clock: Any = time.monotonic) -> float:
    """Hand ``demands`` to the producer (at ``rate`` per second, or as fast as it takes them),
    noting in ``sent`` when each was handed over (by ``clock``); returns the seconds it took."""
    spec = topics.DEMANDS_ACCEPTED
    began = time.monotonic()
    due = began
    futures = []
    for d in demands:
        msg = demand_events.DemandAccepted(demand=d)
        sent[d.demand_id] = clock()
        futures.append(await producer.send(spec.name, value=msg.SerializeToString(), key=spec.key_of(msg),
                                           headers=codec.make_headers(spec.event_type, "bench")))
        if rate:
            due += 1 / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
    await asyncio.gather(*futures)
    return time.monotonic() - began


async def arrivals(bootstrap: str, topic_names: list[str], wanted: set[str], key_of: Any, timeout: float,
                   started: asyncio.Event, seen: dict[str, float], stop_at: int | None = None) -> None:
    """Record when each wanted key is first seen on ``topic_names`` (from their ends, once started)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                fetch_max_wait_ms=50, max_partition_fetch_bytes=1024 * 1024)
    await consumer.start()
    try:
        tps = [TopicPartition(name, p) for name in topic_names for p in range(topics.spec_for(name).partitions)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)
        started.set()
        deadline = time.monotonic() + timeout
        target = stop_at if stop_at is not None else len(wanted)
        while time.monotonic() < deadline and len(seen) < target:
            batch = await consumer.getmany(timeout_ms=100, max_records=5000)
            now = time.monotonic()
            for records in batch.values():
                for r in records:
                    key = key_of(r)
                    if key in wanted and key not in seen:
                        seen[key] = now
    finally:
        await consumer.stop()


async def until_started(started: asyncio.Event, watcher: asyncio.Task) -> None:
    """Wait for the watcher to be positioned (raising what it raised if it failed first)."""
    waiting = asyncio.create_task(started.wait())
    await asyncio.wait({waiting, watcher}, timeout=120, return_when=asyncio.FIRST_COMPLETED)
    if not started.is_set():
        waiting.cancel()
        await watcher  # raises its exception
        raise RuntimeError("the watcher did not start")


async def settled(database_url: str, demand_ids: list[str], timeout: float) -> None:
    """Wait until the matcher has matched every one of ``demand_ids`` and its outbox is empty."""
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            matched = await conn.fetchval("SELECT count(*) FROM matcher.matches WHERE demand_id = ANY($1::text[])",
                                          demand_ids)
            if matched >= len(demand_ids) and not await conn.fetchval("SELECT count(*) FROM matcher.outbox"):
                return
            await asyncio.sleep(0.5)
        raise TimeoutError("the matcher did not settle")
    finally:
        await conn.close()


async def transactions_begun(database_url: str, demand_ids: list[str]) -> dict[str, float]:
    """When the matcher's transaction that matched each demand began (``matches.matched_at``, the
    transaction's ``now()``; wall-clock seconds): after the demand was consumed and planned, before
    its leads were stored, committed and relayed."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT demand_id, matched_at FROM matcher.matches WHERE demand_id = ANY($1::text[])",
                                demand_ids)
    finally:
        await conn.close()
    return {r["demand_id"]: r["matched_at"].timestamp() for r in rows}


async def end_offsets(bootstrap: str, topic_names: list[str]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                request_timeout_ms=120_000)
    await consumer.start()
    try:
        tps = [TopicPartition(name, p) for name in topic_names for p in range(topics.spec_for(name).partitions)]
        consumer.assign(tps)  # the consumer learns the topics' metadata
        return await consumer.end_offsets(tps)
    finally:
        await consumer.stop()


async def appended(bootstrap: str, since: dict[TopicPartition, int], wanted: set[str]) -> dict[str, float]:
    """When the first lead of each wanted demand was appended to its lead topic (the broker's
    ``LogAppendTime``, wall-clock seconds), reading every lead topic from the ``since`` offsets."""
    ends = await end_offsets(bootstrap, sorted({tp.topic for tp in since}))
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                fetch_max_wait_ms=50, max_partition_fetch_bytes=1024 * 1024,
                                request_timeout_ms=120_000)
    await consumer.start()
    seen: dict[str, float] = {}
    try:
        todo = {tp for tp in since if ends[tp] > since[tp]}
        consumer.assign(sorted(todo))
        for tp in todo:
            consumer.seek(tp, since[tp])
        while todo:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for tp, records in batch.items():
                for r in records:
                    demand_id = demand_of_lead(r)
                    if demand_id in wanted:
                        seen[demand_id] = min(seen.get(demand_id, float("inf")), r.timestamp / 1000)
                if records and records[-1].offset + 1 >= ends[tp]:
                    todo.discard(tp)
    finally:
        await consumer.stop()
    return seen


def demand_of_lead(r: Any) -> str:
    return matching.LeadIssued.FromString(r.value).lead.demand_id


def demand_of_match(r: Any) -> str:
    return r.key.decode()


# -- the baselines ---------------------------------------------------------------------------------------------


def faust_forward(bootstrap: str, group: str, offset_reset: str = "earliest") -> None:
    """A do-nothing Faust agent: forwards every demand to the scratch topic (run as a subprocess)."""
    import faust

    app = faust.App(group, broker=f"kafka://{bootstrap}", store="memory://", web_enabled=False,
                    autodiscover=False, datadir=tempfile.mkdtemp(prefix="bench-faust-"), broker_session_timeout=6,
                    broker_heartbeat_interval=1, broker_rebalance_timeout=10, consumer_auto_offset_reset=offset_reset,
                    producer_acks=-1, topic_allow_declare=True)
    source = app.topic(topics.DEMANDS_ACCEPTED.name, key_serializer="raw", value_serializer="raw", internal=False)
    sink = app.topic(FORWARD.name, key_serializer="raw", value_serializer="raw", internal=False)

    @app.agent(source)
    async def forward(stream: Any) -> None:
        async for event in stream.events():
            await sink.send(key=event.key, value=event.value)

    worker = faust.Worker(app, loglevel="warn", redirect_stdouts=False, quiet=True)
    worker.spinner = None
    worker.execute_from_commandline()


async def faust_latency(bootstrap: str, rng: random.Random, rate: int, seconds: int) -> list[float]:
    """Demands at ``rate``/s through the do-nothing Faust forwarder (started at the topic's end):
    seconds from handing each to the producer to the forwarder's send of it (the forwarded
    record's timestamp)."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.matcher", "faust-forward", bootstrap,
                             f"bench-faust-latency-{uuid.uuid4().hex[:6]}", "latest"], cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                fetch_max_wait_ms=50)
    producer = make_producer(bootstrap, "bench-faust-latency", linger_ms=5)
    await consumer.start()
    await producer.start()
    try:
        tps = [TopicPartition(FORWARD.name, p) for p in range(FORWARD.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)
        # Probes until one comes through: the forwarder has joined its group and reads from the end.
        deadline = time.monotonic() + 120
        through = False
        while not through and time.monotonic() < deadline:
            await publish(producer, [make_demand(rng, f"fprobe-{uuid.uuid4().hex[:8]}")], None, {})
            batch = await consumer.getmany(timeout_ms=1000)
            through = any(r.key.decode().startswith("fprobe-") for records in batch.values() for r in records)
        demands = [make_demand(rng, f"f{rate}-{i}") for i in range(rate * seconds)]
        sent: dict[str, float] = {}
        feeding = asyncio.create_task(publish(producer, demands, rate, sent, clock=time.time))
        seen: dict[str, float] = {}
        deadline = time.monotonic() + seconds + 60
        while len(seen) < len(demands) and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200, max_records=5000)).values():
                for r in records:
                    key = r.key.decode()
                    if key.startswith(f"f{rate}-"):
                        seen.setdefault(key, r.timestamp / 1000)
        await feeding
        return [max(0.0, seen[k] - sent[k]) for k in seen]
    finally:
        await producer.stop()
        await consumer.stop()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


async def aiokafka_forward(bootstrap: str, group: str, count: int) -> None:
    """A plain aiokafka consume-and-produce loop over ``count`` demands (run as a subprocess)."""
    consumer = AIOKafkaConsumer(topics.DEMANDS_ACCEPTED.name, bootstrap_servers=bootstrap, group_id=group,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    producer = make_producer(bootstrap, "bench-forward")
    await consumer.start()
    await producer.start()
    try:
        done = 0
        while done < count:
            batch = await consumer.getmany(timeout_ms=200, max_records=2000)
            futures = [await producer.send(FORWARD.name, key=r.key, value=r.value)
                       for records in batch.values() for r in records]
            await asyncio.gather(*futures)
            await consumer.commit()
            done += len(futures)
    finally:
        await producer.stop()
        await consumer.stop()


async def forwarded_rate(bootstrap: str, command: list[str], count: int, timeout: float = 300) -> float:
    """Run a forwarder subprocess over the demand topic; records per second on the scratch topic
    (first to last forwarded record)."""
    seen: list[float] = []
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                fetch_max_wait_ms=50)
    await consumer.start()
    tps = [TopicPartition(FORWARD.name, p) for p in range(FORWARD.partitions)]
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    for tp in tps:
        await consumer.position(tp)
    proc = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while len(seen) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=100, max_records=10000)
            now = time.monotonic()
            seen += [now] * sum(len(v) for v in batch.values())
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        await consumer.stop()
    if len(seen) < 2:
        return 0.0
    return (len(seen) - 1) / max(1e-6, seen[-1] - seen[0])


# -- the run -------------------------------------------------------------------------------------------------


async def measure(console: Console, args: argparse.Namespace) -> None:
    from deploy.embedded.kafka import KafkaBroker
    from deploy.embedded.postgres import EmbeddedPostgres

    rng = random.Random(20261126)
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="finmesh-bench-matcher-") as tmp:
        folder = Path(tmp)
        broker = KafkaBroker(folder / "kafka", free_port(), free_port(), heap="1g")
        postgres = EmbeddedPostgres(folder / "pg")
        broker.start()
        uri = postgres.start()
        matcher: Matcher | None = None
        try:
            broker.wait_ready(120)
            bootstrap = broker.bootstrap_servers
            await ensure_topics(bootstrap, [*topics.concrete(), FORWARD])
            conn = await asyncpg.connect(uri)
            await conn.execute("CREATE DATABASE bench")
            await conn.close()
            database_url = re.sub(r"/postgres(\?|$)", r"/bench\1", uri, count=1)
            banks = institutions(args.institutions)
            console.print(f"catalog: {args.products:,} products across {len(banks):,} institutions")
            products = make_products(rng, banks, args.products)
            await seed_catalog(database_url, products)
            began = time.monotonic()
            await create_lead_topics(bootstrap, banks)
            figures["lead_topics_created_s"] = round(time.monotonic() - began, 1)
            console.print("writing once to every lead topic, then waiting for the broker to be idle")
            figures["lead_topics_warmed_s"] = round(await warm_lead_topics(bootstrap, broker.pid, banks, console), 1)

            await warm_coordinator(bootstrap)
            group = f"bench-matcher-{uuid.uuid4().hex[:6]}"
            matcher = Matcher(database_url, bootstrap, folder, group)
            figures["ready_s (catalog, first start)"] = round(await matcher.start(timeout=600), 2)
            figures["catalog load+verify s (matcher's own)"] = catalog_seconds(matcher.log_path)
            figures["rss_mb at ready"] = round(matcher.rss_mb(), 1)
            producer = make_producer(bootstrap, "bench", linger_ms=5)
            await producer.start()
            lead_topic_names = [topics.lead_topic(b).name for b in banks]
            try:
                # -- warm-up: the first leads to each institution make every client learn its topic ----
                console.print(f"warm-up: {args.warmup:,} demands")
                warm = [make_demand(rng, f"w-{i}") for i in range(args.warmup)]
                seen = {}
                started = asyncio.Event()
                watcher = asyncio.create_task(arrivals(bootstrap, [topics.DEMANDS_MATCHED.name],
                                                      {d.demand_id for d in warm}, demand_of_match, 600, started, seen))
                await until_started(started, watcher)
                began = time.monotonic()
                await publish(producer, warm, None, {})
                await watcher
                figures["warm-up (cold) matched /s"] = round(len(seen) / max(1e-6, time.monotonic() - began), 1)
                # The broker's JIT compiles its produce path well after the warm-up's records, and on two
                # busy cores it did so during the matcher's burst (a quarter of a core), then served the
                # baselines warm: all three are measured after it has settled.
                began = time.monotonic()
                if broker.pid is not None:
                    await idle_broker(broker.pid, console)
                figures["broker settled after warm-up s"] = round(time.monotonic() - began, 1)

                # -- throughput: a burst drained by the matcher, then by the two baselines ------------
                console.print(f"throughput: {args.demands:,} demands in a burst")
                burst = [make_demand(rng, f"t-{i}") for i in range(args.demands)]
                wanted = {d.demand_id for d in burst}
                seen: dict[str, float] = {}
                started = asyncio.Event()
                watcher = asyncio.create_task(arrivals(bootstrap, [topics.DEMANDS_MATCHED.name], wanted,
                                                      demand_of_match, 600, started, seen))
                await until_started(started, watcher)
                sent: dict[str, float] = {}
                cpu_before = burst_cpu(broker.pid, postgres.pid, matcher)
                await publish(producer, burst, None, sent)
                await watcher
                cpu = [(b - a) / len(burst) * 1000
                       for a, b in zip(cpu_before, burst_cpu(broker.pid, postgres.pid, matcher), strict=True)]
                times = sorted(seen.values())
                matched_rate = (len(times) - 1) / max(1e-6, times[-1] - times[0]) if len(times) > 1 else 0.0
                figures["matched demands"] = len(seen)
                db_conn = await asyncpg.connect(database_url)
                span = await db_conn.fetchrow(
                    "SELECT count(*) AS n, extract(epoch FROM max(matched_at) - min(matched_at)) AS s"
                    " FROM matcher.matches WHERE demand_id = ANY($1::text[])", list(wanted))
                await db_conn.close()
                committed = (span["n"] - 1) / max(1e-6, float(span["s"] or 0))
                figures["matcher committed /s (PostgreSQL)"] = round(committed, 1)
                figures["matcher published /s (DemandMatched on topic)"] = round(matched_rate, 1)
                figures["matcher burst wall s"] = round(times[-1] - min(sent.values()), 2) if times else 0
                figures["burst CPU per demand ms: matcher / relay / broker / PostgreSQL / load"] = " / ".join(
                    f"{c:.3f}" for c in cpu)
                figures["burst CPU per demand ms: all"] = round(sum(cpu), 3)
                console.print(f"  matcher {matched_rate:,.0f}/s; now the do-nothing Faust agent")
                on_topic = args.warmup + args.demands  # the baselines drain the topic from its start
                faust_rate = await forwarded_rate(bootstrap, [sys.executable, "-m", "bench.matcher", "faust-forward",
                                                              bootstrap, f"bench-faust-{uuid.uuid4().hex[:6]}"],
                                                  on_topic)
                console.print(f"  faust {faust_rate:,.0f}/s; now the plain aiokafka loop")
                plain_rate = await forwarded_rate(bootstrap, [sys.executable, "-m", "bench.matcher", "aiokafka-forward",
                                                              bootstrap, f"bench-plain-{uuid.uuid4().hex[:6]}",
                                                              str(on_topic)], on_topic)
                figures["faust forwarder /s"] = round(faust_rate, 1)
                figures["aiokafka loop /s"] = round(plain_rate, 1)
                figures["matcher / faust (published)"] = round(matched_rate / faust_rate, 2) if faust_rate else 0
                figures["matcher / aiokafka (published)"] = round(matched_rate / plain_rate, 3) if plain_rate else 0
                figures["matcher / faust (committed)"] = round(committed / faust_rate, 2) if faust_rate else 0

                # -- latency at 300/s and 1,000/s: first LeadIssued on a lead topic -------------------------
                for rate, seconds in ((300, args.seconds), (1000, args.seconds)):
                    console.print(f"latency at {rate}/s for {seconds} s")
                    batch = [make_demand(rng, f"l{rate}-{i}") for i in range(rate * seconds)]
                    wanted = {d.demand_id for d in batch}
                    expected = await asyncio.to_thread(expected_with_leads, products, batch)
                    since = await end_offsets(bootstrap, lead_topic_names)
                    sent = {}
                    cpu_before = matcher.cpu_seconds()
                    feed_s = await publish(producer, batch, rate, sent, clock=time.time)
                    await settled(database_url, list(wanted), seconds + 120)
                    cpu = [(b - a) / len(batch) * 1000 for a, b in zip(cpu_before, matcher.cpu_seconds(), strict=True)]
                    seen = await appended(bootstrap, since, wanted)
                    lat = [max(0.0, seen[d] - sent[d]) for d in seen]
                    begun = await transactions_begun(database_url, list(seen))
                    before = [max(0.0, begun[d] - sent[d]) for d in seen]
                    after = [max(0.0, seen[d] - begun[d]) for d in seen]
                    figures[f"{rate}/s achieved rate"] = round(len(batch) / feed_s, 1)
                    figures[f"{rate}/s demands with leads"] = f"{len(seen)} of {expected} expected"
                    figures[f"{rate}/s latency p50 ms"] = round(report.percentile(lat, 50) * 1000, 1)
                    figures[f"{rate}/s latency p99 ms"] = round(report.percentile(lat, 99) * 1000, 1)
                    figures[f"{rate}/s latency max ms"] = round(max(lat, default=0) * 1000, 1)
                    figures[f"{rate}/s CPU per demand: matcher / its relay ms"] = f"{cpu[0]:.2f} / {cpu[1]:.2f}"
                    for part, values in (("consumed and planned", before), ("stored, committed, relayed", after)):
                        figures[f"{rate}/s {part}: p50 / p99 ms"] = (
                            f"{report.percentile(values, 50) * 1000:.0f} / {report.percentile(values, 99) * 1000:.0f}")
            finally:
                await producer.stop()
            matcher.stop()

            # -- the reverse join over 100,000 open demands ------------------------------------------------
            console.print(f"reverse join: {args.open:,} open demands")
            open_demands = [make_demand(rng, f"o-{i}") for i in range(args.open)]
            conn = await asyncpg.connect(database_url)
            await conn.execute("UPDATE matcher.open_demands SET open = false")  # exactly the seeded ones are open
            await conn.close()
            await seed_open_demands(database_url, open_demands, topics.DEMANDS_ACCEPTED.partitions)
            key = await announce_institution(bootstrap, banks[0])  # its key authenticates the upsert below
            matcher = Matcher(database_url, bootstrap, folder, group)  # a restart: it resumes from its offsets
            began = time.monotonic()
            ready = await matcher.start(timeout=600)
            figures[f"ready_s (catalog verified, restart with {args.open:,} open demands)"] = round(ready, 2)
            await until_logged(matcher.log_path, "open demands held", f"loaded={args.open}", timeout=600)
            figures[f"open demands held s (restart, {args.open:,})"] = round(time.monotonic() - began, 2)
            figures["catalog load+verify s (restart)"] = catalog_seconds(matcher.log_path)
            await asyncio.sleep(2)
            figures[f"rss_mb with {args.open:,} open demands"] = round(matcher.rss_mb(), 1)
            new = catalog.Product(
                product_id="bench-new-product", institution_id=banks[0], name="New equipment loan",
                product_type=catalog.PRODUCT_TYPE_LOAN, loan_category=finance.LOAN_CATEGORY_EQUIPMENT,
                amount_min_fen=100 * WAN, amount_max_fen=2000 * WAN, term_min_months=12, term_max_months=60,
                rate_min_bps=400, rate_max_bps=450, status=catalog.PRODUCT_STATUS_ACTIVE)
            fit = [od for od in (domain.OpenDemand(mapping.demand_from_proto(d)) for d in open_demands)
                   if not domain.fails(mapping.product_from_proto(new), od.demand)]
            wanted = {od.demand.demand_id for od in fit}
            seen = {}
            started = asyncio.Event()
            watcher = asyncio.create_task(arrivals(bootstrap, [topics.DEMANDS_MATCHED.name], wanted, demand_of_match,
                                                  120, started, seen))
            await until_started(started, watcher)
            began = time.monotonic()
            async with grpc.aio.insecure_channel(matcher.address) as channel:
                await catalog_grpc.CatalogServiceStub(channel).UpsertProduct(
                    catalog.UpsertProductRequest(product=new), timeout=30, metadata=((apikeys.HEADER, key),))
            await watcher
            figures["reverse join: demands the product fits"] = len(wanted)
            figures["reverse join: leads on the topic"] = len(seen)
            figures["reverse join: upsert to last lead s"] = round(max(seen.values(), default=began) - began, 3)
            await until_logged(matcher.log_path, "reverse join", "product_id=bench-new-product", timeout=60)
            figures["reverse join: in-memory join s"] = join_seconds(matcher.log_path)
            matcher.stop()

            # -- the same 300/s through the do-nothing Faust forwarder: Faust's own latency here ----------
            console.print(f"latency at 300/s for {args.seconds} s through the do-nothing Faust forwarder")
            lat = await faust_latency(bootstrap, rng, 300, args.seconds)
            figures["faust forwarder at 300/s: latency p50 ms"] = round(report.percentile(lat, 50) * 1000, 1)
            figures["faust forwarder at 300/s: latency p99 ms"] = round(report.percentile(lat, 99) * 1000, 1)
        finally:
            if matcher is not None:
                matcher.stop()
            broker.stop()
            postgres.stop()
    settings = {k: v for k, v in vars(args).items() if k != "mode"}
    settings["stack"] = ("Kafka 4.4.0 (KRaft, one node, 1 GiB heap), embedded PostgreSQL 18, one matcher worker "
                         "(batches of up to 200 demands, fetched while the batch before is handled); everything on "
                         "this machine, load generator included")
    settings["restart"] = "the same consumer group as the first start, resuming from its committed offsets"
    settings["latency"] = ("first LeadIssued on an institution's lead topic (the broker's LogAppendTime) - "
                           "DemandAccepted handed to the producer (wall clock, same machine)")
    report.write("matcher", figures, settings, console)


def expected_with_leads(products: list[catalog.Product], demands: list[demand_pb2.Demand]) -> int:
    view = domain.CatalogView()
    for p in products:
        view.apply(mapping.product_from_proto(p))
    return sum(1 for d in demands if view.match(mapping.demand_from_proto(d)).picks)


async def warm_coordinator(bootstrap: str) -> None:
    """Commit an offset for a throw-away group, so the broker has created its offsets topic
    before the matcher's start is timed."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=f"bench-warm-{uuid.uuid4().hex[:6]}",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topics.DEMANDS_ACCEPTED.name, 0)
        consumer.assign([tp])
        for _ in range(60):
            try:
                await consumer.commit({tp: 0})
                return
            except Exception:  # noqa: BLE001 - the coordinator is not there yet
                await asyncio.sleep(1)
    finally:
        await consumer.stop()


async def until_logged(log_path: Path, *needles: str, timeout: float) -> None:
    """Wait until a line of the matcher's log contains every one of ``needles``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(all(n in line for n in needles) for line in log_path.read_text(errors="replace").splitlines()):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"the matcher never logged {needles}")


def catalog_seconds(log_path: Path) -> float:
    """From the matcher's log: its last catalog load-and-verify time."""
    for line in reversed(log_path.read_text(errors="replace").splitlines()):
        if "catalog verified" in line:
            for part in line.split():
                if part.startswith("seconds_since_load_began="):
                    return float(part.split("=", 1)[1])
    return -1.0


def join_seconds(log_path: Path) -> float:
    """The matcher's own time for its last reverse join (its ``reverse join`` log line)."""
    for line in reversed(log_path.read_text(errors="replace").splitlines()):
        if "reverse join" in line and "join_seconds" in line:
            for part in line.split():
                if part.startswith("join_seconds="):
                    return float(part.split("=", 1)[1])
    return -1.0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", nargs="?", default="measure", choices=["measure", "faust-forward", "aiokafka-forward"])
    p.add_argument("rest", nargs="*")
    p.add_argument("--products", type=int, default=30_000)
    p.add_argument("--institutions", type=int, default=3_000)
    p.add_argument("--warmup", type=int, default=10_000,
                   help="demands matched before measuring (the broker's JIT compiler is busy for the first ones)")
    p.add_argument("--demands", type=int, default=20_000, help="the throughput burst")
    p.add_argument("--seconds", type=int, default=15, help="each latency phase")
    p.add_argument("--open", type=int, default=100_000, help="open demands for the reverse join")
    return p


def defaults() -> argparse.Namespace:
    return parser().parse_args([])


def main() -> None:
    args = parser().parse_args()
    if args.mode == "faust-forward":
        sys.argv = [sys.argv[0], "worker"]
        faust_forward(*args.rest)
    elif args.mode == "aiokafka-forward":
        asyncio.run(aiokafka_forward(args.rest[0], args.rest[1], int(args.rest[2])))
    else:
        asyncio.run(measure(Console(), args))


if __name__ == "__main__":
    main()
