"""The demand service on the real broker and PostgreSQL: gRPC intake, portal intake with
dead-lettering, the matcher's outcomes, enterprises and institutions."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING

import grpc
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from google.protobuf.timestamp_pb2 import Timestamp

from finmesh.demand.v1 import demand_pb2 as dm
from finmesh.demand.v1 import events_pb2 as dm_events
from finmesh.enterprise.v1 import enterprise_pb2 as ent
from finmesh.institution.v1 import institution_pb2 as inst
from finmesh.lead.v1 import lead_pb2 as ld
from finmesh.matching.v1 import events_pb2 as matching
from meshkit import codec, ids, topics
from meshkit.grpcserver import field_violations
from meshkit.lifecycle import Runtime
from meshkit.topics import MAX_MESSAGE_BYTES

if TYPE_CHECKING:
    from .conftest import Stubs

from demand_support import (  # noqa: I001 - the test folder's own helpers
    YUAN,
    demand_request,
    enterprise,
    headers,
    new_uscc,
    read_topic,
    registered,
)
from waiting import eventually

pytestmark = pytest.mark.integration


# -- gRPC intake ------------------------------------------------------------------------------------------

async def test_submit_demand_stores_it_and_announces_it_once(stubs: Stubs, demand_rt: Runtime, bootstrap: str
                                                              ) -> None:
    uscc = await registered(stubs)
    request_id = f"req-{uuid.uuid4()}"
    first = await stubs.demands.SubmitDemand(dm.SubmitDemandRequest(request_id=request_id,
                                                                    demand=demand_request(uscc)))
    demand = first.demand
    assert first.created
    assert demand.demand_id == ids.demand_id("api", request_id)
    assert demand.status == dm.DEMAND_STATUS_MATCHING and demand.channel == dm.CHANNEL_API
    assert [h.status for h in demand.history] == [dm.DEMAND_STATUS_SUBMITTED, dm.DEMAND_STATUS_MATCHING]
    assert all(h.actor and h.reason and h.at.seconds for h in demand.history)
    assert demand.enterprise.uscc == uscc and demand.enterprise.name
    assert demand.request.valid_until.seconds > time.time() + 89 * 86400
    assert demand.request.docking_mode == dm.DOCKING_MODE_INTELLIGENT

    again = await stubs.demands.SubmitDemand(dm.SubmitDemandRequest(request_id=request_id,
                                                                    demand=demand_request(uscc)))
    assert not again.created and again.demand == demand

    key = demand.demand_id.encode()
    records = await read_topic(bootstrap, topics.DEMANDS_ACCEPTED.name, lambda f: len(f) >= 1,
                               lambda r: r.key == key, linger=1.5)
    assert len(records) == 1
    h = headers(records[0])
    assert h[codec.EVENT_ID] == ids.event_id("demand-accepted", demand.demand_id)
    assert h[codec.EVENT_TYPE] == "finmesh.demand.v1.DemandAccepted"
    assert h[codec.PRODUCER] == demand_rt.service and h[codec.OCCURRED_AT]
    event = dm_events.DemandAccepted.FromString(records[0].value)
    assert event.demand == demand
    assert demand_rt.metrics.registry.get_sample_value("finmesh_demands_accepted_total", {"channel": "api"}) >= 1


async def test_a_reused_request_id_with_other_content_is_refused(stubs: Stubs) -> None:
    uscc = await registered(stubs)
    request_id = f"req-{uuid.uuid4()}"
    original = (await stubs.demands.SubmitDemand(dm.SubmitDemandRequest(request_id=request_id,
                                                                       demand=demand_request(uscc)))).demand
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stubs.demands.SubmitDemand(dm.SubmitDemandRequest(
            request_id=request_id, demand=demand_request(uscc, amount_fen=9_000_000 * YUAN)))
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    stored = (await stubs.demands.GetDemand(dm.GetDemandRequest(demand_id=original.demand_id))).demand
    assert stored == original


async def test_an_invalid_demand_names_every_field_and_stores_nothing(stubs: Stubs, demand_rt: Runtime) -> None:
    past = Timestamp(seconds=int(time.time()) - 60)
    bad = demand_request(new_uscc(), amount_fen=0, term_months=0, max_rate_bps=5000, purpose=0,
                         valid_until=past, docking_mode=dm.DOCKING_MODE_ENTERPRISE_ACTIVE)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stubs.demands.SubmitDemand(dm.SubmitDemandRequest(request_id="req-bad", demand=bad))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(info.value)) == {
        "demand.enterprise_uscc",  # not registered
        "demand.amount_fen", "demand.least_acceptable_amount_fen", "demand.term_months", "demand.max_rate_bps",
        "demand.purpose", "demand.valid_until", "demand.product_id",
    }
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stubs.demands.SubmitDemand(dm.SubmitDemandRequest(demand=bad))
    assert "request_id" in field_violations(info.value)
    assert await demand_rt.pool.fetchval("SELECT count(*) FROM demands WHERE idempotency_key = 'req-bad'") == 0
    assert demand_rt.metrics.registry.get_sample_value("finmesh_demands_rejected_total", {"channel": "api"}) >= 2


async def test_get_demand_of_an_unknown_id_is_not_found(stubs: Stubs) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stubs.demands.GetDemand(dm.GetDemandRequest(demand_id=str(uuid.uuid4())))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


# -- portal intake ----------------------------------------------------------------------------------------

def portal_record(uscc: str, portal_demand_id: str, **kw: object) -> bytes:
    return dm_events.PortalDemandSubmitted(portal_id="national-web", portal_demand_id=portal_demand_id,
                                           demand=demand_request(uscc, **kw)).SerializeToString()


async def test_portal_demands_are_stored_and_bad_records_dead_lettered(stubs: Stubs, bootstrap: str,
                                                                       producer) -> None:  # noqa: ANN001
    uscc = await registered(stubs)
    spec = topics.PORTAL_DEMANDS
    run = uuid.uuid4().hex[:8]
    good_id = f"P-{run}-good"
    bad_records = {
        f"{run}-malformed": b"\x0a\xff\xff\xff\x0f",
        f"{run}-invalid": portal_record(uscc, f"P-{run}-invalid", term_months=0, amount_fen=-1),
        f"{run}-unknown": portal_record(new_uscc(), f"P-{run}-unknown"),
        f"{run}-oversized": portal_record(uscc, f"P-{run}-big", product_id="x" * (MAX_MESSAGE_BYTES + 10)),
    }
    for key, value in bad_records.items():
        await producer.send_and_wait(spec.name, value=value, key=key.encode(), partition=0,
                                     headers=codec.make_headers(spec.event_type, "test-portal"))
    await producer.send_and_wait(spec.name, value=portal_record(uscc, good_id), key=uscc.encode(), partition=0,
                                 headers=codec.make_headers(spec.event_type, "test-portal"))

    demand_id = ids.demand_id("online_portal", f"national-web:{good_id}")

    async def get() -> dm.Demand | None:
        try:
            return (await stubs.demands.GetDemand(dm.GetDemandRequest(demand_id=demand_id))).demand
        except grpc.aio.AioRpcError:
            return None

    stored = await eventually(get, lambda x: x is not None)
    assert stored is not None, "the good record after the bad ones was not processed"
    assert stored.channel == dm.CHANNEL_ONLINE_PORTAL and stored.idempotency_key == f"national-web:{good_id}"
    assert stored.history[0].actor == "portal:national-web"

    keys = {k.encode() for k in bad_records}
    dead = await read_topic(bootstrap, topics.PORTAL_DEMANDS_DLQ.name, lambda f: len(f) >= len(keys),
                            lambda r: r.key in keys)
    by_key = {r.key.decode(): headers(r) for r in dead}
    assert set(by_key) == set(bad_records)
    for h in by_key.values():
        assert h[codec.DLQ_ORIGIN].startswith(f"{spec.name}/0@")
    assert "not a valid" in by_key[f"{run}-malformed"][codec.DLQ_REASON]
    assert "demand.term_months" in by_key[f"{run}-invalid"][codec.DLQ_REASON]
    assert "demand.amount_fen" in by_key[f"{run}-invalid"][codec.DLQ_REASON]
    assert "demand.enterprise_uscc" in by_key[f"{run}-unknown"][codec.DLQ_REASON]
    assert "exceeds" in by_key[f"{run}-oversized"][codec.DLQ_REASON]


async def test_a_portal_key_reused_with_other_content_is_dead_lettered(stubs: Stubs, bootstrap: str,
                                                                       producer) -> None:  # noqa: ANN001
    uscc = await registered(stubs)
    spec = topics.PORTAL_DEMANDS
    pid = f"P-{uuid.uuid4().hex[:8]}"
    for amount in (1_000_000 * YUAN, 1_000_000 * YUAN, 2_000_000 * YUAN):  # a redelivery, then a conflict
        value = portal_record(uscc, pid, amount_fen=amount, least_acceptable_amount_fen=0)
        await producer.send_and_wait(spec.name, value=value, key=pid.encode(),
                                     headers=codec.make_headers(spec.event_type, "test-portal"))
    dead = await read_topic(bootstrap, topics.PORTAL_DEMANDS_DLQ.name, lambda f: len(f) >= 1,
                            lambda r: r.key == pid.encode(), linger=1.0)
    assert len(dead) == 1 and "already used" in headers(dead[0])[codec.DLQ_REASON]
    demand_id = ids.demand_id("online_portal", f"national-web:{pid}")
    stored = (await stubs.demands.GetDemand(dm.GetDemandRequest(demand_id=demand_id))).demand
    assert stored.request.amount_fen == 1_000_000 * YUAN


# -- the matcher's outcomes -------------------------------------------------------------------------------

async def test_a_match_stores_leads_and_issues_them(stubs: Stubs, producer) -> None:  # noqa: ANN001
    uscc = await registered(stubs)
    demand = (await stubs.demands.SubmitDemand(dm.SubmitDemandRequest(request_id=f"req-{uuid.uuid4()}",
                                                                     demand=demand_request(uscc)))).demand
    now = int(time.time())
    leads = [
        ld.Lead(lead_id=ids.lead_id(demand.demand_id, product), demand_id=demand.demand_id, institution_id=bank,
                product_id=product, product_version=3, origin=ld.LEAD_ORIGIN_INTELLIGENT_MATCH, score=score,
                rank=rank, rules_version="rules-1", status=ld.LEAD_STATUS_CREATED,
                created_at=Timestamp(seconds=now), contact_due_at=Timestamp(seconds=now + 72 * 3600),
                explanation=[ld.CriterionResult(criterion="term_months", demand_value="24", product_value="12..36",
                                                verdict=ld.VERDICT_PASS, points=20, critical=True)])
        for rank, (bank, product, score) in enumerate([("icbc-xm", "icbc-equip", 91), ("ccb-xm", "ccb-renew", 77)],
                                                      start=1)
    ]
    event = matching.DemandMatched(demand_id=demand.demand_id, enterprise_uscc=uscc, leads=leads,
                                   candidates_considered=9)
    spec = topics.DEMANDS_MATCHED
    for _ in range(2):  # delivered twice: handled once
        await producer.send_and_wait(spec.name, value=event.SerializeToString(), key=spec.key_of(event),
                                     headers=codec.make_headers(spec.event_type, "matcher",
                                                                event_id=ids.event_id("matched", demand.demand_id)))

    async def get() -> dm.Demand:
        return (await stubs.demands.GetDemand(dm.GetDemandRequest(demand_id=demand.demand_id))).demand

    got = await eventually(get, lambda x: x.status == dm.DEMAND_STATUS_LEADS_ISSUED)
    assert got.status == dm.DEMAND_STATUS_LEADS_ISSUED
    for stored in got.leads:  # recorded as delivered (the matcher published them), with their history
        assert stored.status == ld.LEAD_STATUS_DELIVERED and stored.updated_at.seconds
        assert [(h.status, h.actor) for h in stored.history] == [(ld.LEAD_STATUS_CREATED, "matcher"),
                                                                (ld.LEAD_STATUS_DELIVERED, "matcher")]
        stored.ClearField("history")
        stored.ClearField("updated_at")
        stored.status = ld.LEAD_STATUS_CREATED
    assert list(got.leads) == leads
    await asyncio.sleep(0.5)
    got = await get()
    assert [h.status for h in got.history] == [dm.DEMAND_STATUS_SUBMITTED, dm.DEMAND_STATUS_MATCHING,
                                               dm.DEMAND_STATUS_LEADS_ISSUED]
    assert got.history[-1].actor == "matcher"


async def test_no_match_is_recorded_with_its_explanation(stubs: Stubs, producer) -> None:  # noqa: ANN001
    uscc = await registered(stubs)
    demand = (await stubs.demands.SubmitDemand(dm.SubmitDemandRequest(request_id=f"req-{uuid.uuid4()}",
                                                                     demand=demand_request(uscc)))).demand
    why = "no product lends 24 months at 4.50%: accept 5.20% and 2 products fit"
    hints = [matching.MatchHint(criterion="rate", suggestion="520", products=2,
                                text="accepting a rate up to 5.20% would make 2 products eligible"),
             matching.MatchHint(criterion="term", suggestion="36", products=1,
                                text="a term of 36 months would make 1 product eligible")]
    event = matching.DemandMatched(demand_id=demand.demand_id, enterprise_uscc=uscc, no_match_explanation=why,
                                   hints=hints)
    spec = topics.DEMANDS_MATCHED
    await producer.send_and_wait(spec.name, value=event.SerializeToString(), key=spec.key_of(event),
                                 headers=codec.make_headers(spec.event_type, "matcher"))

    async def get() -> dm.Demand:
        return (await stubs.demands.GetDemand(dm.GetDemandRequest(demand_id=demand.demand_id))).demand

    got = await eventually(get, lambda x: x.status == dm.DEMAND_STATUS_NO_MATCH)
    assert got.status == dm.DEMAND_STATUS_NO_MATCH and got.no_match_explanation == why
    assert list(got.no_match_hints) == [h.text for h in hints]  # every hint, best first, not only the one in why
    assert not got.leads and got.history[-1].reason == why


# -- enterprises and institutions ----------------------------------------------------------------------------

async def test_register_enterprise_is_idempotent_and_validated(stubs: Stubs) -> None:
    uscc = new_uscc()
    first = await stubs.enterprises.RegisterEnterprise(ent.RegisterEnterpriseRequest(enterprise=enterprise(uscc)))
    assert first.created and first.enterprise.registered_at.seconds
    same = await stubs.enterprises.RegisterEnterprise(ent.RegisterEnterpriseRequest(enterprise=enterprise(uscc)))
    assert not same.created and same.enterprise == first.enterprise
    with pytest.raises(grpc.aio.AioRpcError) as info:  # other content: that is what UpdateEnterprise is for
        await stubs.enterprises.RegisterEnterprise(
            ent.RegisterEnterpriseRequest(enterprise=enterprise(uscc, employees=150)))
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    got = await stubs.enterprises.GetEnterprise(ent.GetEnterpriseRequest(uscc=uscc))
    assert got.enterprise == first.enterprise and got.enterprise.version == 1

    bad = enterprise(uscc[:-1] + ("0" if uscc[-1] != "0" else "1"), name="", region_code="35", size=0,
                     srdi_tier=0, key_industry=0, founded_year=0)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stubs.enterprises.RegisterEnterprise(ent.RegisterEnterpriseRequest(enterprise=bad))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(info.value)) == {
        "enterprise.uscc", "enterprise.name", "enterprise.region_code", "enterprise.size", "enterprise.srdi_tier",
        "enterprise.key_industry", "enterprise.founded_year",
    }
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stubs.enterprises.GetEnterprise(ent.GetEnterpriseRequest(uscc=new_uscc()))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_register_institution_creates_its_lead_topic(stubs: Stubs, bootstrap: str) -> None:
    run = uuid.uuid4().hex[:6]
    reply = await stubs.institutions.RegisterInstitution(inst.RegisterInstitutionRequest(institution=inst.Institution(
        institution_id=f"icbc-{run}", name="ICBC Xiamen", type=inst.INSTITUTION_TYPE_BANK, regions_served=["35"])))
    i = reply.institution
    assert reply.created and i.contact_sla_hours == 72
    assert reply.api_key.startswith("fmk_") and len(reply.api_key) > 40
    assert i.lead_topic == topics.lead_topic(f"icbc-{run}").name
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        assert i.lead_topic in await admin.list_topics()
    finally:
        await admin.close()

    again = await stubs.institutions.RegisterInstitution(inst.RegisterInstitutionRequest(institution=inst.Institution(
        institution_id=f"icbc-{run}", name="ICBC Xiamen", type=inst.INSTITUTION_TYPE_BANK, regions_served=["35"])))
    assert not again.created and again.institution == i and again.api_key == ""  # the key is shown once
    got = await stubs.institutions.GetInstitution(inst.GetInstitutionRequest(institution_id=f"icbc-{run}"))
    assert got.institution == i

    for n in range(3):
        await stubs.institutions.RegisterInstitution(inst.RegisterInstitutionRequest(institution=inst.Institution(
            institution_id=f"zz-{run}-{n}", name=f"Fund {n}", type=inst.INSTITUTION_TYPE_FUND, contact_sla_hours=48)))
    seen, token = [], ""
    while True:
        page = await stubs.institutions.ListInstitutions(inst.ListInstitutionsRequest(page_size=2, page_token=token))
        assert len(page.institutions) <= 2
        seen += [x.institution_id for x in page.institutions]
        token = page.next_page_token
        if not token:
            break
    assert {f"icbc-{run}", *(f"zz-{run}-{n}" for n in range(3))} <= set(seen) and seen == sorted(seen)

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stubs.institutions.RegisterInstitution(inst.RegisterInstitutionRequest(institution=inst.Institution(
            institution_id="Bad_Id", contact_sla_hours=1000)))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(info.value)) == {
        "institution.institution_id", "institution.name", "institution.type", "institution.contact_sla_hours",
    }
