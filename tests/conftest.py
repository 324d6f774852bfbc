"""Shared fixtures: a real Kafka broker and a real PostgreSQL, started lazily, once per session.

Only tests that request ``kafka_broker``, ``postgres_uri`` or ``embedded_postgres`` start them
(unit tests do not); both run on fresh temporary folders and free ports, and are stopped at the
end of the session.
"""

from __future__ import annotations

import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # the venv's .pth normally does this
    sys.path.insert(0, str(REPO_ROOT))

from deploy.embedded.kafka import KafkaBroker  # noqa: E402
from deploy.embedded.postgres import EmbeddedPostgres  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: needs the real Kafka broker and PostgreSQL")
    config.addinivalue_line("markers", "e2e: runs the services as processes on the real broker and database")


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """A function returning a TCP port on 127.0.0.1 that is free right now."""
    return _free_port


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A running single-node Kafka broker (``.bootstrap_servers``, ``.kill()``, ``.start()``,
    ``.wait_ready()``); a test that kills it must start it again."""
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"), _free_port(), _free_port())
    began = time.monotonic()
    broker.start()
    try:
        broker.wait_ready(timeout=90)
    except BaseException:
        broker.stop()
        raise
    print(f"\nkafka ready in {time.monotonic() - began:.1f} s on {broker.bootstrap_servers}")
    yield broker
    broker.stop()


def make_server_dir(prefix: str) -> Path:
    """A fresh folder for a server's data, outside pytest's own temporary tree: PostgreSQL runs
    as another user, and pytest resets its tree to owner-only access whenever a run starts."""
    return Path(tempfile.mkdtemp(prefix=f"finmesh-{prefix}-"))


@pytest.fixture(scope="session")
def server_dir() -> Callable[[str], Path]:
    """Makes folders for servers' data (see :func:`make_server_dir`); the caller removes them."""
    return make_server_dir


@pytest.fixture(scope="session")
def embedded_postgres() -> Iterator[EmbeddedPostgres]:
    """A running embedded PostgreSQL (``.uri``, ``.stop()``, ``.start()``, ``.kill()``)."""
    folder = make_server_dir("postgres")
    server = EmbeddedPostgres(folder / "pgdata")
    began = time.monotonic()
    server.start()
    print(f"\npostgres ready in {time.monotonic() - began:.1f} s at {server.uri}")
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_uri(embedded_postgres: EmbeddedPostgres) -> str:
    """The URI of the session's embedded PostgreSQL."""
    return embedded_postgres.uri
