"""A notifier running in-process on the real broker and a fresh database, with a settable clock
and fast retries."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from notifier_support import FAST_RETRY

from finmesh.notification.v1 import clock_pb2_grpc as clock_grpc
from finmesh.notification.v1 import delivery_pb2_grpc as delivery_grpc
from finmesh.notification.v1 import notification_pb2_grpc as pb_grpc
from meshkit.clock import SettableClock
from meshkit.lifecycle import Runtime
from services.notifier import app


@pytest.fixture(scope="module")
def clock() -> SettableClock:
    return SettableClock()


@pytest.fixture(scope="module")
async def notifier(database_url: str, bootstrap: str, service_runtime, clock: SettableClock
                   ) -> AsyncIterator[Runtime]:
    """The notifier service, SERVING (its consumers have their partitions), in its own consumer groups."""
    async with service_runtime("notifier", app, database_url, bootstrap, clock=clock, retry=FAST_RETRY,
                               clock_tick_seconds=0.2) as rt:
        yield rt


@pytest.fixture(scope="module")
async def channel(notifier: Runtime) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{notifier.grpc_port}") as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel) -> pb_grpc.NotificationServiceStub:
    return pb_grpc.NotificationServiceStub(channel)


@pytest.fixture(scope="module")
def deliveries(channel) -> delivery_grpc.DeliveryServiceStub:
    return delivery_grpc.DeliveryServiceStub(channel)


@pytest.fixture(scope="module")
def clocks(channel) -> clock_grpc.ContactClockServiceStub:
    return clock_grpc.ContactClockServiceStub(channel)
