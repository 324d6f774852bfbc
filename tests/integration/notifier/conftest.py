"""A notifier running in-process on the real broker and a fresh database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from finmesh.notification.v1 import notification_pb2_grpc as pb_grpc
from meshkit.lifecycle import Runtime
from services.notifier import app


@pytest.fixture(scope="module")
async def notifier(database_url: str, bootstrap: str, service_runtime) -> AsyncIterator[Runtime]:
    """The notifier service, SERVING (its consumer has its partitions), in its own consumer group."""
    async with service_runtime("notifier", app, database_url, bootstrap) as rt:
        yield rt


@pytest.fixture(scope="module")
async def stub(notifier: Runtime) -> AsyncIterator[pb_grpc.NotificationServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{notifier.grpc_port}") as channel:
        yield pb_grpc.NotificationServiceStub(channel)
