"""Helpers shared by the demand service's integration tests."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord

from finmesh.common.v1 import finance_pb2 as fin
from finmesh.demand.v1 import demand_pb2 as dm
from finmesh.enterprise.v1 import enterprise_pb2 as ent
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
