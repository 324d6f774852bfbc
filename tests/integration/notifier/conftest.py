"""A notifier running in-process on the real broker and a fresh database."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
import pytest

from finmesh.notification.v1 import notification_pb2_grpc as pb_grpc
from meshkit.lifecycle import Runtime
from meshkit.settings import ServiceSettings
from services.notifier.app import MIGRATIONS, SCHEMA, build


@pytest.fixture(scope="module")
async def notifier(database_url: str, bootstrap: str) -> AsyncIterator[Runtime]:
    """The notifier service, SERVING (its consumer has its partitions), in its own consumer group."""
    settings = ServiceSettings(
        service_name=f"notifier-t{uuid.uuid4().hex[:8]}", kafka_bootstrap_servers=bootstrap,
        database_url=database_url, grpc_port=0, metrics_port=0, shutdown_grace_seconds=2.0,
    )
    rt = Runtime(settings, schema=SCHEMA, migrations=MIGRATIONS)
    await rt.open()
    await build(rt)
    await rt.start()
    yield rt
    await rt.stop()


@pytest.fixture(scope="module")
async def stub(notifier: Runtime) -> AsyncIterator[pb_grpc.NotificationServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{notifier.grpc_port}") as channel:
        yield pb_grpc.NotificationServiceStub(channel)
