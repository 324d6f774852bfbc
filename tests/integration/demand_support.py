"""Helpers shared by the demand service's integration tests."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from google.protobuf.timestamp_pb2 import Timestamp
from waiting import eventually

from finmesh.common.v1 import finance_pb2 as fin
from finmesh.demand.v1 import demand_pb2 as dm
from finmesh.enterprise.v1 import enterprise_pb2 as ent
from finmesh.institution.v1 import institution_pb2 as inst
from finmesh.lead.v1 import lead_pb2 as ld
from finmesh.matching.v1 import events_pb2 as matching
from meshkit import codec, ids, topics
from services.demand.domain import uscc_check_char

if TYPE_CHECKING:
    from conftest import Stubs

YUAN = 100
WAN = 10_000 * YUAN


def new_uscc(region: str = "350200") -> str:
    first17 = f"91{region}MA{uuid.uuid4().int % 10**7:07d}"
    return first17 + uscc_check_char(first17)


def enterprise(uscc: str, **kw: object) -> ent.Enterprise:
    base = dict(uscc=uscc, name="Xiamen Precision Tools Co.", region_code="350200", city="Xiamen",
                industry_code="C3421", key_industry=fin.KEY_INDUSTRY_INTELLIGENT_EQUIPMENT,
                size=fin.ENTERPRISE_SIZE_SMALL, srdi_tier=fin.SRDI_TIER_PROVINCIAL, founded_year=2012,
                annual_revenue_fen=8_000 * WAN, employees=120, tax_credit_grade="A")
    base.update(kw)
    return ent.Enterprise(**base)


def demand_request(uscc: str, **kw: object) -> dm.DemandRequest:
    base = dict(enterprise_uscc=uscc, amount_fen=500 * WAN, least_acceptable_amount_fen=300 * WAN,
                term_months=24, max_rate_bps=450, loan_category=fin.LOAN_CATEGORY_EQUIPMENT,
                purpose=dm.PURPOSE_EQUIPMENT_RENEWAL, collateral_offered=[fin.COLLATERAL_EQUIPMENT],
                consent_to_share=True)
    base.update(kw)
    return dm.DemandRequest(**base)


async def registered(stubs: Stubs, **kw: object) -> str:
    uscc = new_uscc()
    await stubs.enterprises.RegisterEnterprise(ent.RegisterEnterpriseRequest(enterprise=enterprise(uscc, **kw)))
    return uscc


async def submit(stubs: Stubs, uscc: str, **kw: object) -> dm.Demand:
    reply = await stubs.demands.SubmitDemand(dm.SubmitDemandRequest(request_id=f"req-{uuid.uuid4()}",
                                                                    demand=demand_request(uscc, **kw)))
    return reply.demand


async def read_topic(bootstrap: str, topic: str, done: Callable[[list[ConsumerRecord]], bool],
                     keep: Callable[[ConsumerRecord], bool], timeout: float = 15.0,
                     linger: float = 0.0) -> list[ConsumerRecord]:
    """Records of ``topic`` (from the beginning) for which ``keep`` holds, once ``done`` says enough
    (then ``linger`` seconds more, to catch duplicates)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"t-{uuid.uuid4().hex}",
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                max_partition_fetch_bytes=4 * 1024 * 1024)
    await consumer.start()
    found: list[ConsumerRecord] = []
    try:
        deadline = time.monotonic() + timeout
        finish: float | None = None
        while time.monotonic() < (finish or deadline):
            batch = await consumer.getmany(timeout_ms=200)
            found += [r for records in batch.values() for r in records if keep(r)]
            if finish is None and done(found):
                finish = time.monotonic() + linger
        return found
    finally:
        await consumer.stop()


def headers(r: ConsumerRecord) -> dict[str, str]:
    return {k: v.decode(errors="replace") for k, v in r.headers or ()}


async def rpc_error(call) -> grpc.aio.AioRpcError:  # noqa: ANN001
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


async def register_bank(stubs: Stubs, name: str) -> tuple[str, str]:
    institution_id = f"{name}-{uuid.uuid4().hex[:6]}"
    reply = await stubs.institutions.RegisterInstitution(inst.RegisterInstitutionRequest(institution=inst.Institution(
        institution_id=institution_id, name=name.upper(), type=inst.INSTITUTION_TYPE_BANK, regions_served=["35"])))
    assert reply.created and reply.api_key
    return institution_id, reply.api_key


async def demand_with_leads(stubs: Stubs, producer, banks: list[str], **kw: object  # noqa: ANN001
                            ) -> tuple[dm.Demand, list[str]]:
    """A demand the matcher (played by the test) gave one lead per bank; returns it and the lead ids."""
    uscc = await registered(stubs)
    demand = await submit(stubs, uscc, **kw)
    now = int(time.time())
    leads = [
        ld.Lead(lead_id=ids.lead_id(demand.demand_id, f"{bank}-loan"), demand_id=demand.demand_id,
                institution_id=bank, product_id=f"{bank}-loan", product_version=1,
                origin=ld.LEAD_ORIGIN_INTELLIGENT_MATCH, score=90 - rank, rank=rank, rules_version="r1",
                status=ld.LEAD_STATUS_CREATED, created_at=Timestamp(seconds=now),
                contact_due_at=Timestamp(seconds=now + 72 * 3600),
                explanation=[ld.CriterionResult(criterion="amount_fen", demand_value="5000000", product_value="1..9",
                                                verdict=ld.VERDICT_PASS, points=30, critical=True)])
        for rank, bank in enumerate(banks, start=1)
    ]
    event = matching.DemandMatched(demand_id=demand.demand_id, enterprise_uscc=uscc, leads=leads)
    spec = topics.DEMANDS_MATCHED
    await producer.send_and_wait(spec.name, value=event.SerializeToString(), key=spec.key_of(event),
                                 headers=codec.make_headers(spec.event_type, "matcher"))
    got = await eventually(lambda: _demand(stubs, demand.demand_id),
                           lambda x: x.status == dm.DEMAND_STATUS_LEADS_ISSUED)
    assert got.status == dm.DEMAND_STATUS_LEADS_ISSUED
    return got, [lead.lead_id for lead in leads]


async def _demand(stubs: Stubs, demand_id: str) -> dm.Demand:
    return (await stubs.demands.GetDemand(dm.GetDemandRequest(demand_id=demand_id))).demand
