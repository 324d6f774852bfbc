"""Demands expire at valid-until, by a background pass that two replicas can run at once.
(A module of its own: its database holds only the demands this test expires.)"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, timedelta
from typing import TYPE_CHECKING

import pytest
from waiting import eventually

from finmesh.common.v1 import finance_pb2 as fin
from finmesh.demand.v1 import demand_pb2 as dm
from finmesh.enterprise.v1 import enterprise_pb2 as ent
from finmesh.lead.v1 import lead_pb2 as ld
from finmesh.matching.v1 import events_pb2 as matching
from meshkit import codec, ids, topics
from meshkit.lifecycle import Runtime
from services.demand.app import SCHEMA
from services.demand.domain import uscc_check_char
from services.demand.service import Demands

if TYPE_CHECKING:
    from .conftest import Stubs

pytestmark = pytest.mark.integration


async def test_two_replicas_expire_each_due_demand_exactly_once(stubs: Stubs, demand_rt: Runtime,
                                                                 producer) -> None:  # noqa: ANN001
    first17 = f"91350200MA{uuid.uuid4().int % 10**7:07d}"
    uscc = first17 + uscc_check_char(first17)
    await stubs.enterprises.RegisterEnterprise(ent.RegisterEnterpriseRequest(enterprise=ent.Enterprise(
        uscc=uscc, name="Xiamen Expiring Co.", region_code="350200", key_industry=fin.KEY_INDUSTRY_BIOMEDICINE,
        size=fin.ENTERPRISE_SIZE_MICRO, srdi_tier=fin.SRDI_TIER_NONE, founded_year=2020)))
    demands = []
    for n in range(25):
        reply = await stubs.demands.SubmitDemand(dm.SubmitDemandRequest(request_id=f"exp-{n}", demand=dm.DemandRequest(
            enterprise_uscc=uscc, amount_fen=(100 + n) * 1_000_000, term_months=12, max_rate_bps=500,
            purpose=dm.PURPOSE_WORKING_CAPITAL)))
        demands.append(reply.demand)
    withdrawn = demands[0]
    await stubs.demands.WithdrawDemand(dm.WithdrawDemandRequest(demand_id=withdrawn.demand_id, enterprise_uscc=uscc))
    worked = demands[1]  # a lead is out for it when it expires
    lead = ld.Lead(lead_id=ids.lead_id(worked.demand_id, "p1"), demand_id=worked.demand_id, institution_id="bank-x",
                   product_id="p1", product_version=1, origin=ld.LEAD_ORIGIN_INTELLIGENT_MATCH, score=80, rank=1,
                   rules_version="r1", status=ld.LEAD_STATUS_CREATED)
    matched = matching.DemandMatched(demand_id=worked.demand_id, enterprise_uscc=uscc, leads=[lead])
    spec = topics.DEMANDS_MATCHED
    await producer.send_and_wait(spec.name, value=matched.SerializeToString(), key=spec.key_of(matched),
                                 headers=codec.make_headers(spec.event_type, "matcher"))
    await eventually(lambda: _demand(stubs, worked.demand_id), lambda x: x.status == dm.DEMAND_STATUS_LEADS_ISSUED)

    # Nothing is due yet: the service's own pass (real clock) and ours agree.
    now = codec.now()
    assert await Demands(demand_rt.pool, demand_rt.metrics, schema=SCHEMA, clock=lambda: now).expire_due() == 0

    later = now + timedelta(days=91)  # past the default validity of 90 days
    replicas = [Demands(demand_rt.pool, demand_rt.metrics, schema=SCHEMA, clock=lambda: later) for _ in range(2)]

    async def drain(replica: Demands) -> int:
        total = 0
        while (n := await replica.expire_due(limit=3)) > 0:
            total += n
        return total

    counts = await asyncio.gather(*(drain(r) for r in replicas))
    assert sum(counts) == 24

    rows = await demand_rt.pool.fetch(
        "SELECT demand_id, count(*) FILTER (WHERE status = $1) AS expired FROM demand_history GROUP BY demand_id",
        dm.DEMAND_STATUS_EXPIRED)
    expired = {r["demand_id"]: r["expired"] for r in rows}
    assert expired[withdrawn.demand_id] == 0
    assert all(expired[x.demand_id] == 1 for x in demands[1:])
    got = (await stubs.demands.GetDemand(dm.GetDemandRequest(demand_id=demands[5].demand_id))).demand
    assert got.status == dm.DEMAND_STATUS_EXPIRED
    assert (got.history[-1].actor, got.history[-1].reason) == ("demand", "valid-until passed")
    assert got.history[-1].at.ToDatetime(tzinfo=UTC) == later
    # its lead is closed with it: the institution's contact clock stops and it is told why
    [closed] = (await _demand(stubs, worked.demand_id)).leads
    assert closed.status == ld.LEAD_STATUS_WITHDRAWN
    assert closed.history[-1].reason == "the demand expired: its valid-until passed"


async def _demand(stubs: Stubs, demand_id: str) -> dm.Demand:
    return (await stubs.demands.GetDemand(dm.GetDemandRequest(demand_id=demand_id))).demand
