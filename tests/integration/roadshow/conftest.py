"""The demand service and two roadshow replicas, running in-process on the real broker and one
fresh database; the replicas share a clock the tests move (forward only). The services are the
module's; each test builds the roadshows and enterprises it needs (``applied``, ``selected``), so
any test passes alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import datetime, timedelta
from functools import partial
from types import SimpleNamespace

import grpc
import pytest
from institution_keys import OperatorAuth
from roadshow_support import START, WAN, apply, create, registered, until_status  # noqa: I001 - the folder's helpers

from finmesh.common.v1 import finance_pb2 as fin
from finmesh.demand.v1 import demand_pb2_grpc as dm_grpc
from finmesh.enterprise.v1 import enterprise_pb2_grpc as ent_grpc
from finmesh.institution.v1 import institution_pb2_grpc as inst_grpc
from finmesh.lead.v1 import lead_pb2_grpc as lead_grpc
from finmesh.roadshow.v1 import roadshow_pb2 as rs
from finmesh.roadshow.v1 import roadshow_pb2_grpc as rs_grpc
from meshkit.lifecycle import Runtime
from services.demand import app as demand_app
from services.roadshow import app as roadshow_app


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
    async with grpc.aio.insecure_channel(f"127.0.0.1:{replicas.runtimes[0].grpc_port}",
                                         interceptors=[OperatorAuth()]) as channel:
        yield rs_grpc.RoadshowServiceStub(channel)


@pytest.fixture(scope="module")
async def stubs(demand_rt: Runtime) -> AsyncIterator[SimpleNamespace]:
    """The demand service's stubs: enterprises, institutions, demands and leads."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{demand_rt.grpc_port}", interceptors=[OperatorAuth()]) as channel:
        yield SimpleNamespace(demands=dm_grpc.DemandServiceStub(channel),
                              enterprises=ent_grpc.EnterpriseServiceStub(channel),
                              institutions=inst_grpc.InstitutionServiceStub(channel),
                              leads=lead_grpc.LeadServiceStub(channel))


@pytest.fixture
async def applied(roadshow: rs_grpc.RoadshowServiceStub, stubs: SimpleNamespace, clock: Clock) -> SimpleNamespace:
    """A new roadshow (2 places, applications close in 5 days, held in 10) with three applicants
    and one refused: a (provincial SRDI, intelligent equipment, a first-time borrower, 5 million
    yuan), b (little giant, has borrowed, 20 million), c (provincial, has borrowed, 5 million) and
    d (an innovative SME in aerospace: refused). ``replies``: the Apply replies, ``refused``: d's error."""
    x = await create(roadshow, clock.now, capacity=2)
    a, b, c, d = await asyncio.gather(
        registered(stubs), registered(stubs, srdi_tier=fin.SRDI_TIER_LITTLE_GIANT, has_borrowed=True),
        registered(stubs, has_borrowed=True),
        registered(stubs, srdi_tier=fin.SRDI_TIER_INNOVATIVE_SME, key_industry=fin.KEY_INDUSTRY_AEROSPACE))
    refused = await apply(roadshow, x.roadshow_id, d)
    replies = {}
    for uscc, amount in ((a, 500 * WAN), (b, 2000 * WAN), (c, 500 * WAN)):
        replies[uscc] = await apply(roadshow, x.roadshow_id, uscc, amount)
    return SimpleNamespace(roadshow=x, a=a, b=b, c=c, d=d, refused=refused, replies=replies)


@pytest.fixture
async def selected(applied: SimpleNamespace, roadshow: rs_grpc.RoadshowServiceStub, clock: Clock) -> SimpleNamespace:
    """``applied`` once its window has closed and the presenters are selected (b and a)."""
    clock.advance(timedelta(days=6))
    await until_status(roadshow, applied.roadshow.roadshow_id, rs.ROADSHOW_STATUS_SELECTION)
    return applied
