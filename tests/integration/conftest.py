"""Fixtures shared by integration tests: a fresh database per test module, topics created."""

from __future__ import annotations

import re
import uuid

import asyncpg
import pytest

from meshkit import topics
from meshkit.kafka import ensure_topics


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


@pytest.fixture(scope="session")
async def bootstrap(kafka_broker) -> str:
    """The broker's bootstrap servers, with every registry topic created."""
    await ensure_topics(kafka_broker.bootstrap_servers, topics.concrete())
    return kafka_broker.bootstrap_servers
