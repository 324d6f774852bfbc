"""The demand service and two roadshow replicas, running in-process on the real broker and one
fresh database; the replicas share a clock the tests move."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from functools import partial
from types import SimpleNamespace

import grpc
import pytest

from finmesh.demand.v1 import demand_pb2_grpc as dm_grpc
from finmesh.enterprise.v1 import enterprise_pb2_grpc as ent_grpc
from finmesh.institution.v1 import institution_pb2_grpc as inst_grpc
from finmesh.lead.v1 import lead_pb2_grpc as lead_grpc
from finmesh.roadshow.v1 import roadshow_pb2_grpc as rs_grpc
from meshkit.lifecycle import Runtime
from services.demand import app as demand_app
from services.roadshow import app as roadshow_app

START = datetime(2030, 3, 3, tzinfo=UTC)


class Clock:
    """A clock the tests move; the roadshow replicas read it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, by: timedelta) -> None:
        self.now += by


class Replicas:
    """Two roadshow replicas on the same database; either can be restarted."""

    def __init__(self, service_runtime, database_url: str, bootstrap: str, clock: Clock) -> None:  # noqa: ANN001
        self._run = service_runtime
        self.database_url = database_url
        self.bootstrap = bootstrap
        self.clock = clock
        self.app = SimpleNamespace(SCHEMA=roadshow_app.SCHEMA, MIGRATIONS=roadshow_app.MIGRATIONS,
                                   build=partial(roadshow_app.build, clock=clock, schedule_interval_seconds=0.2))
        self.stacks: list[AsyncExitStack] = []
        self.runtimes: list[Runtime] = []

    async def start(self, n: int) -> None:
        for _ in range(n):
            stack = AsyncExitStack()
            self.runtimes.append(await stack.enter_async_context(
                self._run("roadshow", self.app, self.database_url, self.bootstrap)))
            self.stacks.append(stack)

    async def restart(self, index: int) -> None:
        await self.stacks[index].aclose()
        stack = AsyncExitStack()
        self.runtimes[index] = await stack.enter_async_context(
            self._run("roadshow", self.app, self.database_url, self.bootstrap))
        self.stacks[index] = stack

    async def stop(self) -> None:
        for stack in self.stacks:
            await stack.aclose()


@pytest.fixture(scope="module")
def clock() -> Clock:
    return Clock(START)


@pytest.fixture(scope="module")
async def demand_rt(database_url: str, bootstrap: str, service_runtime) -> AsyncIterator[Runtime]:
    async with service_runtime("demand", demand_app, database_url, bootstrap) as rt:
        yield rt


@pytest.fixture(scope="module")
async def replicas(database_url: str, bootstrap: str, service_runtime, clock: Clock,
                   demand_rt: Runtime) -> AsyncIterator[Replicas]:
    r = Replicas(service_runtime, database_url, bootstrap, clock)
    await r.start(2)
    yield r
    await r.stop()


@pytest.fixture(scope="module")
async def roadshow(replicas: Replicas) -> AsyncIterator[rs_grpc.RoadshowServiceStub]:
    """A stub on the first replica (the one never restarted)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{replicas.runtimes[0].grpc_port}") as channel:
        yield rs_grpc.RoadshowServiceStub(channel)


@pytest.fixture(scope="module")
async def stubs(demand_rt: Runtime) -> AsyncIterator[SimpleNamespace]:
    """The demand service's stubs: enterprises, institutions, demands and leads."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{demand_rt.grpc_port}") as channel:
        yield SimpleNamespace(demands=dm_grpc.DemandServiceStub(channel),
                              enterprises=ent_grpc.EnterpriseServiceStub(channel),
                              institutions=inst_grpc.InstitutionServiceStub(channel),
                              leads=lead_grpc.LeadServiceStub(channel))
