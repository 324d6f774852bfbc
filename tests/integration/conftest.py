"""Fixtures shared by integration tests: a fresh database per test module, topics created."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import ModuleType

import asyncpg
import pytest
from institution_keys import OPERATOR_KEYS, Keys

from meshkit import topics
from meshkit.kafka import ensure_topics, make_producer
from meshkit.lifecycle import Runtime
from meshkit.settings import ServiceSettings


def with_database(uri: str, name: str) -> str:
    """``uri`` pointing at database ``name`` (URIs here look like ``postgresql://u:@/postgres?host=...``)."""
    return re.sub(r"/postgres(\?|$)", rf"/{name}\1", uri, count=1)


@pytest.fixture(scope="module")
async def database_url(postgres_uri: str) -> str:
    """A new, empty database on the session's PostgreSQL, for one test module."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(postgres_uri)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(postgres_uri, name)


@asynccontextmanager
async def running_service(name: str, app: ModuleType, database_url: str, bootstrap: str, *,
                          service_name: str | None = None, **build_kw: object) -> AsyncIterator[Runtime]:
    """A service (``app`` = its ``services.<name>.app`` module) running in-process, SERVING, with a
    unique service name so that its consumer groups are its own (or ``service_name``: replicas that
    share groups); ``build_kw`` go to ``app.build`` (e.g. an injected clock)."""
    settings = ServiceSettings(
        service_name=service_name or f"{name}-t{uuid.uuid4().hex[:8]}", kafka_bootstrap_servers=bootstrap,
        database_url=database_url, grpc_port=0, metrics_port=0, shutdown_grace_seconds=2.0,
        operator_keys=OPERATOR_KEYS,
    )
    rt = Runtime(settings, schema=app.SCHEMA, migrations=app.MIGRATIONS)
    await rt.open()
    await app.build(rt, **build_kw)
    await rt.start()
    try:
        yield rt
    finally:
        await rt.stop()


@pytest.fixture(scope="session")
def service_runtime() -> Callable[..., AbstractAsyncContextManager[Runtime]]:
    """:func:`running_service`, for test modules' own fixtures."""
    return running_service


@pytest.fixture(scope="session")
async def bootstrap(kafka_broker) -> str:
    """The broker's bootstrap servers, with every registry topic created."""
    await ensure_topics(kafka_broker.bootstrap_servers, topics.concrete())
    return kafka_broker.bootstrap_servers


@pytest.fixture(scope="session")
def keys(bootstrap: str) -> Keys:
    """Institutions' API keys for the session (each one's InstitutionChanged published on first use)."""
    return Keys(bootstrap)


@pytest.fixture(scope="module")
async def producer(bootstrap: str) -> AsyncIterator:
    """A plain producer standing in for other services, portals and institutions' systems (accepts
    records up to the broker's limit, and records those services would never write)."""
    p = make_producer(bootstrap, f"test-{uuid.uuid4().hex[:6]}")
    await p.start()
    yield p
    await p.stop()
