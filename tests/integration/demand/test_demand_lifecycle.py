"""The demand service's full surface on the real broker and PostgreSQL: enterprises (update, list,
reference checks, change events), institutions (API keys, change events), every intake channel
(window filings with confirmation, enterprise-active docking, cross-channel duplicates), lead
outcomes by gRPC and by topic (ownership, idempotency, illegal transitions, the demand's status),
withdrawal, and the queries."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from finmesh.common.v1 import finance_pb2 as fin
from finmesh.demand.v1 import demand_pb2 as dm
from finmesh.demand.v1 import demand_pb2_grpc as dm_grpc
from finmesh.demand.v1 import events_pb2 as dm_events
from finmesh.enterprise.v1 import enterprise_pb2 as ent
from finmesh.enterprise.v1 import events_pb2 as ent_events
from finmesh.institution.v1 import events_pb2 as inst_events
from finmesh.institution.v1 import institution_pb2 as inst
from finmesh.institution.v1 import institution_pb2_grpc as inst_grpc
from finmesh.lead.v1 import events_pb2 as ld_events
from finmesh.lead.v1 import lead_pb2 as ld
from finmesh.matching.v1 import events_pb2 as matching
from meshkit import apikeys, codec, ids, operators, topics
from meshkit.grpcserver import field_violations
from meshkit.lifecycle import Runtime

if TYPE_CHECKING:
    from .conftest import Stubs

from demand_support import (  # noqa: I001 - the test folder's own helpers
    WAN,
    demand_request,
    demand_with_leads,
    enterprise,
    headers,
    new_uscc,
    read_topic,
    register_bank,
    registered,
    rpc_error,
    submit,
)
from institution_keys import OPERATOR_ID
from waiting import eventually

pytestmark = pytest.mark.integration


async def get(stubs: Stubs, demand_id: str) -> dm.Demand:
    return (await stubs.demands.GetDemand(dm.GetDemandRequest(demand_id=demand_id))).demand


def statuses(demand: dm.Demand) -> list[int]:
    return [h.status for h in demand.history]


async def status_events(bootstrap: str, demand_id: str, count: int) -> list[dm_events.DemandStatusChanged]:
    records = await read_topic(bootstrap, topics.DEMAND_STATUS_CHANGED.name, lambda f: len(f) >= count,
                               lambda r: r.key == demand_id.encode())
    return sorted((dm_events.DemandStatusChanged.FromString(r.value) for r in records), key=lambda e: e.seq)


# -- enterprises ---------------------------------------------------------------------------------------------


async def test_enterprises_update_list_and_announce_their_changes(stubs: Stubs, bootstrap: str) -> None:
    run = uuid.uuid4().hex[:6]
    zone = "civil-aircraft"
    uscc = new_uscc("510700")
    first = (await stubs.enterprises.RegisterEnterprise(ent.RegisterEnterpriseRequest(enterprise=enterprise(
        uscc, region_code="510700", city="", name=f"Mianyang Avionics {run}", key_industry=fin.KEY_INDUSTRY_AEROSPACE,
        srdi_tier=fin.SRDI_TIER_LITTLE_GIANT, special_zones=[zone])))).enterprise
    assert first.city == "Mianyang" and first.version == 1  # named from the reference data

    upd = await stubs.enterprises.UpdateEnterprise(ent.UpdateEnterpriseRequest(
        enterprise=ent.Enterprise(uscc=uscc, employees=400, name="ignored: not in the mask"),
        update_mask=FieldMask(paths=["employees"]), expected_version=1))
    assert upd.changed and upd.enterprise.employees == 400 and upd.enterprise.name == first.name
    assert upd.enterprise.version == 2 and upd.enterprise.registered_at == first.registered_at
    same = await stubs.enterprises.UpdateEnterprise(ent.UpdateEnterpriseRequest(
        enterprise=ent.Enterprise(uscc=uscc, employees=400), update_mask=FieldMask(paths=["employees"])))
    assert not same.changed and same.enterprise.version == 2

    err = await rpc_error(stubs.enterprises.UpdateEnterprise(ent.UpdateEnterpriseRequest(
        enterprise=ent.Enterprise(uscc=uscc, employees=1), update_mask=FieldMask(paths=["employees"]),
        expected_version=1)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION  # someone changed it meanwhile
    err = await rpc_error(stubs.enterprises.UpdateEnterprise(ent.UpdateEnterpriseRequest(
        enterprise=ent.Enterprise(uscc=uscc, region_code="999999", special_zones=["moon-base"], size=9),
        update_mask=FieldMask(paths=["region_code", "special_zones", "size"]))))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(err)) == {"enterprise.region_code", "enterprise.special_zones", "enterprise.size"}
    err = await rpc_error(stubs.enterprises.UpdateEnterprise(ent.UpdateEnterpriseRequest(
        enterprise=ent.Enterprise(uscc=new_uscc()), update_mask=FieldMask(paths=["employees"]))))
    assert err.code() == grpc.StatusCode.NOT_FOUND

    for n in range(3):  # three more little giants in Mianyang
        await registered(stubs, region_code="510700", city="绵阳", key_industry=fin.KEY_INDUSTRY_AEROSPACE,
                         srdi_tier=fin.SRDI_TIER_LITTLE_GIANT, special_zones=[zone], name=f"M{n} {run}")
    seen, token = [], ""
    while True:
        page = await stubs.enterprises.ListEnterprises(ent.ListEnterprisesRequest(
            city="Mianyang", key_industry=fin.KEY_INDUSTRY_AEROSPACE, srdi_tier=fin.SRDI_TIER_LITTLE_GIANT,
            special_zone=zone, page_size=2, page_token=token))
        assert len(page.enterprises) <= 2
        seen += list(page.enterprises)
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == 4 and [e.uscc for e in seen] == sorted(e.uscc for e in seen)
    assert all(e.region_code == "510700" and e.city == "Mianyang" for e in seen)
    by_province = await stubs.enterprises.ListEnterprises(ent.ListEnterprisesRequest(region_code="51",
                                                                                     page_size=500))
    assert {e.uscc for e in seen} <= {e.uscc for e in by_province.enterprises}
    err = await rpc_error(stubs.enterprises.ListEnterprises(ent.ListEnterprisesRequest(city="Atlantis", size=7)))
    assert set(field_violations(err)) == {"city", "size"}

    records = await read_topic(bootstrap, topics.ENTERPRISES_CHANGED.name, lambda f: len(f) >= 2,
                               lambda r: r.key == uscc.encode())
    changes = [ent_events.EnterpriseChanged.FromString(r.value) for r in records]
    assert [(c.enterprise.version, c.created) for c in changes] == [(1, True), (2, False)]
    assert changes[1].enterprise.employees == 400


async def test_a_bad_uscc_and_values_outside_the_reference_are_refused(stubs: Stubs) -> None:
    good = new_uscc()
    bad_check = good[:-1] + ("0" if good[-1] != "0" else "1")
    err = await rpc_error(stubs.enterprises.RegisterEnterprise(ent.RegisterEnterpriseRequest(enterprise=enterprise(
        bad_check, region_code="350201", special_zones=["advanced-manufacturing-cluster", "atlantis"],
        city="Xiamen"))))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    v = field_violations(err)
    assert set(v) == {"enterprise.uscc", "enterprise.region_code", "enterprise.special_zones"}
    assert "check character" in v["enterprise.uscc"] and "pilot cities" in v["enterprise.region_code"]
    err = await rpc_error(stubs.enterprises.RegisterEnterprise(ent.RegisterEnterpriseRequest(
        enterprise=enterprise(good, city="Mianyang"))))
    assert set(field_violations(err)) == {"enterprise.city"}  # 350200 is Xiamen


# -- institutions ----------------------------------------------------------------------------------------------


async def test_an_institution_rotates_its_key_and_the_old_one_stops_working(stubs: Stubs, bootstrap: str) -> None:
    institution_id, key = await register_bank(stubs, "cmb")
    _, other_key = await register_bank(stubs, "spdb")
    rotate = inst.RotateApiKeyRequest(institution_id=institution_id)
    for metadata in ((), (("x-api-key", other_key),), (("x-api-key", "fmk_forged"),)):
        err = await rpc_error(stubs.institutions.RotateApiKey(rotate, metadata=metadata))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    err = await rpc_error(stubs.institutions.RotateApiKey(inst.RotateApiKeyRequest(), metadata=(("x-api-key", key),)))
    assert set(field_violations(err)) == {"institution_id"}

    new = (await stubs.institutions.RotateApiKey(rotate, metadata=(("x-api-key", key),))).api_key
    assert new and new != key
    await stubs.leads.ListLeads(ld.ListLeadsRequest(), metadata=(("x-api-key", new),))  # the new key works
    for call in (stubs.leads.ListLeads(ld.ListLeadsRequest(), metadata=(("x-api-key", key),)),
                 stubs.institutions.RotateApiKey(rotate, metadata=(("x-api-key", key),))):
        assert (await rpc_error(call)).code() == grpc.StatusCode.PERMISSION_DENIED  # the old one nowhere
    # The other services learn the new key's digest from a new version of the institution.
    records = await read_topic(bootstrap, topics.INSTITUTIONS_CHANGED.name, lambda f: len(f) >= 2,
                               lambda r: r.key == institution_id.encode())
    changes = [inst_events.InstitutionChanged.FromString(r.value) for r in records]
    assert [(c.institution.version, c.api_key_sha256) for c in changes] == [(1, apikeys.digest(key)),
                                                                            (2, apikeys.digest(new))]


async def test_institutions_get_a_key_once_and_only_its_holder_changes_them(
    stubs: Stubs, demand_rt: Runtime, bootstrap: str
) -> None:
    """Only an operator registers an institution; only the institution changes it, with its key."""
    newcomer = inst.Institution(institution_id=f"self-{uuid.uuid4().hex[:8]}", name="Self-registered",
                                type=inst.INSTITUTION_TYPE_BANK)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{demand_rt.grpc_port}") as plain:
        for metadata in ((), ((operators.HEADER, operators.new()),)):
            err = await rpc_error(inst_grpc.InstitutionServiceStub(plain).RegisterInstitution(
                inst.RegisterInstitutionRequest(institution=newcomer), metadata=metadata))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED and operators.HEADER in (err.details() or "")
    missing = await rpc_error(stubs.institutions.GetInstitution(inst.GetInstitutionRequest(
        institution_id=newcomer.institution_id)))
    assert missing.code() == grpc.StatusCode.NOT_FOUND  # nothing was registered
    institution_id, key = await register_bank(stubs, "cib")
    other_id, other_key = await register_bank(stubs, "ceb")
    changed = inst.Institution(institution_id=institution_id, name="CIB Xiamen", type=inst.INSTITUTION_TYPE_BANK,
                               regions_served=["35", "44"], contact_sla_hours=48)
    for metadata in ((), (("x-api-key", other_key),), (("x-api-key", "fmk_forged"),)):
        err = await rpc_error(stubs.institutions.RegisterInstitution(
            inst.RegisterInstitutionRequest(institution=changed), metadata=metadata))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    reply = await stubs.institutions.RegisterInstitution(inst.RegisterInstitutionRequest(institution=changed),
                                                         metadata=(("x-api-key", key),))
    assert not reply.created and not reply.api_key
    assert reply.institution.contact_sla_hours == 48 and reply.institution.version == 2

    err = await rpc_error(stubs.institutions.RegisterInstitution(inst.RegisterInstitutionRequest(
        institution=inst.Institution(institution_id=f"x-{other_id}", name="X", type=inst.INSTITUTION_TYPE_BANK,
                                     regions_served=["99"]))))
    assert set(field_violations(err)) == {"institution.regions_served"}  # 99 is no province

    listed = await stubs.institutions.ListInstitutions(inst.ListInstitutionsRequest(
        type=inst.INSTITUTION_TYPE_BANK, region_code="440300", page_size=500))
    assert institution_id in {i.institution_id for i in listed.institutions}  # serves 44 now
    assert other_id not in {i.institution_id for i in listed.institutions}  # serves 35 only

    records = await read_topic(bootstrap, topics.INSTITUTIONS_CHANGED.name, lambda f: len(f) >= 2,
                               lambda r: r.key == institution_id.encode())
    changes = [inst_events.InstitutionChanged.FromString(r.value) for r in records]
    assert [(c.institution.version, c.created) for c in changes] == [(1, True), (2, False)]
    assert all(key.encode() not in r.value for r in records)  # the key itself is never published
    assert [c.api_key_sha256 for c in changes] == [apikeys.digest(key)] * 2  # the services check it against


# -- intake channels -------------------------------------------------------------------------------------------


async def accepted_events(bootstrap: str, demand_id: str, linger: float = 1.0) -> list[dm_events.DemandAccepted]:
    records = await read_topic(bootstrap, topics.DEMANDS_ACCEPTED.name, lambda f: True,
                               lambda r: r.key == demand_id.encode(), timeout=linger, linger=linger)
    return [dm_events.DemandAccepted.FromString(r.value) for r in records]


async def test_a_window_filing_waits_for_the_enterprise_s_confirmation(
    stubs: Stubs, demand_rt: Runtime, bootstrap: str
) -> None:
    """A window's operator files a demand with its operator key; the enterprise confirms it."""
    uscc = await registered(stubs)
    filing = dm.FileWindowDemandRequest(window_id="xiamen-first-loan-centre", filing_id=f"F-{uuid.uuid4().hex[:8]}",
                                        demand=demand_request(uscc))
    reply = await stubs.demands.FileWindowDemand(filing)  # the stubs' channel carries the operator's key
    x = reply.demand
    assert reply.created and x.status == dm.DEMAND_STATUS_NEEDS_INFO and x.channel == dm.CHANNEL_OFFLINE_WINDOW
    assert x.operator_id == OPERATOR_ID  # the operator of the key
    assert x.history[0].actor == f"window:xiamen-first-loan-centre/operator:{OPERATOR_ID}"
    assert not await accepted_events(bootstrap, x.demand_id)  # not matched before the enterprise confirms

    again = await stubs.demands.FileWindowDemand(filing)
    assert not again.created and again.demand == x
    named = dm.FileWindowDemandRequest(window_id="w", filing_id=f"F-{uuid.uuid4().hex[:8]}", operator_id=OPERATOR_ID,
                                       demand=demand_request(uscc))
    assert (await stubs.demands.FileWindowDemand(named)).demand.operator_id == OPERATOR_ID
    # Another operator named, no operator key, or a key that is no operator's: refused.
    err = await rpc_error(stubs.demands.FileWindowDemand(dm.FileWindowDemandRequest(
        window_id="w", filing_id="f2", operator_id="op-17", demand=demand_request(uscc))))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "op-17" in (err.details() or "")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{demand_rt.grpc_port}") as plain:
        for metadata in ((), ((operators.HEADER, operators.new()),)):
            err = await rpc_error(dm_grpc.DemandServiceStub(plain).FileWindowDemand(filing, metadata=metadata))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED and operators.HEADER in (err.details() or "")

    err = await rpc_error(stubs.demands.ConfirmDemand(dm.ConfirmDemandRequest(demand_id=x.demand_id,
                                                                              enterprise_uscc=new_uscc())))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    confirmed = (await stubs.demands.ConfirmDemand(dm.ConfirmDemandRequest(demand_id=x.demand_id,
                                                                           enterprise_uscc=uscc))).demand
    assert statuses(confirmed) == [dm.DEMAND_STATUS_SUBMITTED, dm.DEMAND_STATUS_NEEDS_INFO,
                                   dm.DEMAND_STATUS_SUBMITTED, dm.DEMAND_STATUS_MATCHING]
    assert confirmed.history[2].actor == f"enterprise:{uscc}"
    err = await rpc_error(stubs.demands.ConfirmDemand(dm.ConfirmDemandRequest(demand_id=x.demand_id,
                                                                              enterprise_uscc=uscc)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION  # MATCHING -> SUBMITTED is no transition
    assert await get(stubs, x.demand_id) == confirmed  # the refusal changed nothing

    published = await accepted_events(bootstrap, x.demand_id, linger=1.5)
    assert len(published) == 1 and published[0].demand.status == dm.DEMAND_STATUS_MATCHING
    events = await status_events(bootstrap, x.demand_id, 4)
    assert [(e.seq, e.previous, e.change.status) for e in events] == [
        (1, dm.DEMAND_STATUS_UNSPECIFIED, dm.DEMAND_STATUS_SUBMITTED),
        (2, dm.DEMAND_STATUS_SUBMITTED, dm.DEMAND_STATUS_NEEDS_INFO),
        (3, dm.DEMAND_STATUS_NEEDS_INFO, dm.DEMAND_STATUS_SUBMITTED),
        (4, dm.DEMAND_STATUS_SUBMITTED, dm.DEMAND_STATUS_MATCHING)]


async def test_window_filings_by_topic_need_an_operator(stubs: Stubs, bootstrap: str, producer) -> None:  # noqa: ANN001
    uscc = await registered(stubs)
    spec = topics.PORTAL_DEMANDS
    run = uuid.uuid4().hex[:8]
    for pid, operator in ((f"{run}-no-op", ""), (f"{run}-ok", "op-3")):
        msg = dm_events.PortalDemandSubmitted(portal_id="xiamen-window", portal_demand_id=pid,
                                              demand=demand_request(uscc, amount_fen=(100 + len(operator)) * WAN,
                                                                     least_acceptable_amount_fen=0),
                                              channel=dm.CHANNEL_OFFLINE_WINDOW, operator_id=operator)
        await producer.send_and_wait(spec.name, value=msg.SerializeToString(), key=pid.encode(),
                                     headers=codec.make_headers(spec.event_type, "test-window"))
    demand_id = ids.demand_id("offline_window", f"xiamen-window:{run}-ok")

    async def fetch() -> dm.Demand | None:
        try:
            return await get(stubs, demand_id)
        except grpc.aio.AioRpcError:
            return None

    stored = await eventually(fetch, lambda x: x is not None)
    assert stored is not None and stored.status == dm.DEMAND_STATUS_NEEDS_INFO and stored.operator_id == "op-3"
    dead = await read_topic(bootstrap, topics.PORTAL_DEMANDS_DLQ.name, lambda f: len(f) >= 1,
                            lambda r: r.key == f"{run}-no-op".encode())
    assert "operator_id" in headers(dead[0])[codec.DLQ_REASON]


async def test_enterprise_active_docking_names_its_product(stubs: Stubs, bootstrap: str) -> None:
    uscc = await registered(stubs)
    err = await rpc_error(stubs.demands.SubmitDemand(dm.SubmitDemandRequest(request_id=f"r-{uuid.uuid4()}",
        demand=demand_request(uscc, docking_mode=dm.DOCKING_MODE_ENTERPRISE_ACTIVE))))
    assert set(field_violations(err)) == {"demand.product_id"}
    x = await submit(stubs, uscc, docking_mode=dm.DOCKING_MODE_ENTERPRISE_ACTIVE, product_id="icbc-business-fast-loan")
    published = await accepted_events(bootstrap, x.demand_id)
    assert published[0].demand.request.product_id == "icbc-business-fast-loan"
    assert published[0].demand.request.docking_mode == dm.DOCKING_MODE_ENTERPRISE_ACTIVE


async def test_the_same_need_through_two_channels_is_linked_not_matched_twice(stubs: Stubs, bootstrap: str,
                                                                           producer) -> None:  # noqa: ANN001
    uscc = await registered(stubs)
    first = await submit(stubs, uscc)
    pid = f"P-{uuid.uuid4().hex[:8]}"
    spec = topics.PORTAL_DEMANDS
    msg = dm_events.PortalDemandSubmitted(portal_id="national-web", portal_demand_id=pid,
                                          demand=demand_request(uscc, max_rate_bps=500))  # same amount, term, category
    await producer.send_and_wait(spec.name, value=msg.SerializeToString(), key=uscc.encode(),
                                 headers=codec.make_headers(spec.event_type, "test-portal"))
    second_id = ids.demand_id("online_portal", f"national-web:{pid}")

    async def fetch() -> dm.Demand | None:
        try:
            return await get(stubs, second_id)
        except grpc.aio.AioRpcError:
            return None

    second = await eventually(fetch, lambda x: x is not None)
    assert second is not None and second.status == dm.DEMAND_STATUS_DUPLICATE
    assert second.duplicate_of == first.demand_id and first.demand_id in second.history[-1].reason
    assert not await accepted_events(bootstrap, second_id)  # never matched
    # the same channel twice with two keys is two requests; another amount is another need
    assert (await submit(stubs, uscc)).status == dm.DEMAND_STATUS_MATCHING
    filed = await stubs.demands.FileWindowDemand(dm.FileWindowDemandRequest(
        window_id="w1", filing_id=f"f-{uuid.uuid4()}", demand=demand_request(uscc)))
    assert filed.demand.status == dm.DEMAND_STATUS_DUPLICATE and filed.demand.duplicate_of == first.demand_id


# -- leads and their outcomes -------------------------------------------------------------------------------------


def key_of(key: str) -> tuple[tuple[str, str]]:
    return (("x-api-key", key),)


def outcome(status: int, **kw: object) -> ld.LeadOutcome:
    return ld.LeadOutcome(status=status, **kw)


async def test_outcomes_by_grpc_move_the_lead_and_the_demand_to_funded(stubs: Stubs, producer,  # noqa: ANN001
                                                                       bootstrap: str) -> None:
    (a, key_a), (b, key_b) = await register_bank(stubs, "icbc"), await register_bank(stubs, "ccb")
    demand, (lead_a, lead_b) = await demand_with_leads(stubs, producer, [a, b])
    report = stubs.leads.ReportLeadOutcome
    contacted = ld.ReportLeadOutcomeRequest(lead_id=lead_a, outcome=outcome(
        ld.LEAD_STATUS_CONTACTED, contact=ld.Contact(method=ld.CONTACT_METHOD_PHONE)))

    # only the lead's own institution, authenticated by its key
    for metadata in ((), key_of("fmk_nonsense"), key_of(key_b)):
        err = await rpc_error(report(contacted, metadata=metadata))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    # a skipped step is refused and changes nothing
    err = await rpc_error(report(ld.ReportLeadOutcomeRequest(lead_id=lead_a, outcome=outcome(
        ld.LEAD_STATUS_APPROVED, offer=ld.Offer(amount_fen=400 * WAN, rate_bps=385, term_months=24))),
        metadata=key_of(key_a)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await get(stubs, demand.demand_id) == demand
    # wrong details are all named
    err = await rpc_error(report(ld.ReportLeadOutcomeRequest(lead_id=lead_a, outcome=outcome(
        ld.LEAD_STATUS_APPROVED, offer=ld.Offer(amount_fen=-1, rate_bps=9999, term_months=0))),
        metadata=key_of(key_a)))
    assert set(field_violations(err)) == {"outcome.offer.amount_fen", "outcome.offer.rate_bps",
                                          "outcome.offer.term_months"}

    first = await report(contacted, metadata=key_of(key_a))
    assert first.changed and first.lead.status == ld.LEAD_STATUS_CONTACTED
    again = await report(contacted, metadata=key_of(key_a))
    assert not again.changed and again.lead == first.lead
    assert (await get(stubs, demand.demand_id)).status == dm.DEMAND_STATUS_IN_CONTACT

    await report(ld.ReportLeadOutcomeRequest(lead_id=lead_a, outcome=outcome(ld.LEAD_STATUS_UNDER_REVIEW)),
                 metadata=key_of(key_a))
    assert (await get(stubs, demand.demand_id)).status == dm.DEMAND_STATUS_IN_PROCESS
    await report(ld.ReportLeadOutcomeRequest(lead_id=lead_a, outcome=outcome(
        ld.LEAD_STATUS_APPROVED, offer=ld.Offer(amount_fen=400 * WAN, rate_bps=385, term_months=24))),
        metadata=key_of(key_a))
    paid = Timestamp(seconds=int(time.time()) - 60)
    await report(ld.ReportLeadOutcomeRequest(lead_id=lead_a, outcome=outcome(
        ld.LEAD_STATUS_DISBURSED, disbursement=ld.Disbursement(amount_fen=400 * WAN, disbursed_at=paid))),
        metadata=key_of(key_a))

    x = await get(stubs, demand.demand_id)
    assert x.status == dm.DEMAND_STATUS_FUNDED  # 4 million >= the least acceptable 3 million
    assert statuses(x) == [dm.DEMAND_STATUS_SUBMITTED, dm.DEMAND_STATUS_MATCHING, dm.DEMAND_STATUS_LEADS_ISSUED,
                           dm.DEMAND_STATUS_IN_CONTACT, dm.DEMAND_STATUS_IN_PROCESS, dm.DEMAND_STATUS_FUNDED]
    shown = {lead.lead_id: lead for lead in x.leads}
    la = shown[lead_a]
    assert [h.status for h in la.history] == [ld.LEAD_STATUS_CREATED, ld.LEAD_STATUS_DELIVERED,
                                              ld.LEAD_STATUS_CONTACTED, ld.LEAD_STATUS_UNDER_REVIEW,
                                              ld.LEAD_STATUS_APPROVED, ld.LEAD_STATUS_DISBURSED]
    assert la.history[2].actor == f"institution:{a}" and la.explanation[0].criterion == "amount_fen"
    assert la.contact.method == ld.CONTACT_METHOD_PHONE and la.offer.rate_bps == 385
    assert la.disbursement.amount_fen == 400 * WAN and la.disbursement.disbursed_at == paid
    # the enterprise has borrowed now: it is no longer a first-time borrower for its next demands
    borrower = (await stubs.enterprises.GetEnterprise(ent.GetEnterpriseRequest(
        uscc=demand.request.enterprise_uscc))).enterprise
    assert borrower.has_borrowed and borrower.version == 2
    changed = await read_topic(bootstrap, topics.ENTERPRISES_CHANGED.name, lambda f: len(f) >= 2,
                               lambda r: r.key == demand.request.enterprise_uscc.encode())
    assert [ent_events.EnterpriseChanged.FromString(r.value).enterprise.has_borrowed for r in changed] == [False, True]
    # b's lead, still only delivered, is closed: its clock stops and its institution is told why
    assert shown[lead_b].status == ld.LEAD_STATUS_WITHDRAWN
    assert shown[lead_b].history[-1].reason == f"the demand was funded by {a}"

    events = await status_events(bootstrap, demand.demand_id, 6)
    assert [e.seq for e in events] == [1, 2, 3, 4, 5, 6] and events[-1].change.status == dm.DEMAND_STATUS_FUNDED
    records = await read_topic(bootstrap, topics.LEAD_STATUS_CHANGED.name, lambda f: len(f) >= 9,
                               lambda r: r.key == demand.demand_id.encode(), linger=1.0)
    changes = sorted((e.lead.lead_id, e.seq, e.change.status) for e in
                      (ld_events.LeadStatusChanged.FromString(r.value) for r in records))
    assert [c for c in changes if c[0] == lead_a] == [(lead_a, n, s) for n, s in enumerate(
        [ld.LEAD_STATUS_CREATED, ld.LEAD_STATUS_DELIVERED, ld.LEAD_STATUS_CONTACTED, ld.LEAD_STATUS_UNDER_REVIEW,
         ld.LEAD_STATUS_APPROVED, ld.LEAD_STATUS_DISBURSED], start=1)]
    assert [c for c in changes if c[0] == lead_b] == [(lead_b, 1, ld.LEAD_STATUS_CREATED),
                                                      (lead_b, 2, ld.LEAD_STATUS_DELIVERED),
                                                      (lead_b, 3, ld.LEAD_STATUS_WITHDRAWN)]
    assert len(changes) == 9  # each once: the repeated report published nothing

    # institutions see only their own leads
    mine = await stubs.leads.ListLeads(ld.ListLeadsRequest(page_size=100), metadata=key_of(key_b))
    assert [lead.lead_id for lead in mine.leads] == [lead_b]
    err = await rpc_error(stubs.leads.ListLeads(ld.ListLeadsRequest()))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_outcomes_by_topic_are_checked_and_all_declined_is_reached(stubs: Stubs, producer,  # noqa: ANN001
                                                                        bootstrap: str) -> None:
    (a, _), (b, _) = await register_bank(stubs, "boc"), await register_bank(stubs, "abc")
    demand, (lead_a, lead_b) = await demand_with_leads(stubs, producer, [a, b])
    spec = topics.LEAD_OUTCOMES
    run = uuid.uuid4().hex[:6]
    declined = outcome(ld.LEAD_STATUS_DECLINED, decline=ld.Decline(
        reason_code=ld.DECLINE_REASON_INSUFFICIENT_COLLATERAL, text="equipment already pledged"))
    records = {
        f"{run}-foreign": ld_events.LeadOutcomeReported(institution_id=b, lead_id=lead_a, outcome=declined),
        f"{run}-invalid": ld_events.LeadOutcomeReported(institution_id=a, lead_id=lead_a, outcome=outcome(
            ld.LEAD_STATUS_DECLINED)),
        f"{run}-unknown": ld_events.LeadOutcomeReported(institution_id=a, lead_id="no-such-lead", outcome=declined),
        f"{run}-a": ld_events.LeadOutcomeReported(institution_id=a, lead_id=lead_a, outcome=declined),
        f"{run}-a-again": ld_events.LeadOutcomeReported(institution_id=a, lead_id=lead_a, outcome=declined),
        f"{run}-b": ld_events.LeadOutcomeReported(institution_id=b, lead_id=lead_b, outcome=declined),
    }
    for key, msg in records.items():
        await producer.send_and_wait(spec.name, value=msg.SerializeToString(), key=key.encode(), partition=0,
                                     headers=codec.make_headers(spec.event_type, "bank-system"))
    x = await eventually(lambda: get(stubs, demand.demand_id), lambda x: x.status == dm.DEMAND_STATUS_ALL_DECLINED)
    assert x.status == dm.DEMAND_STATUS_ALL_DECLINED
    assert all(lead.status == ld.LEAD_STATUS_DECLINED for lead in x.leads)
    assert all(lead.decline.reason_code == ld.DECLINE_REASON_INSUFFICIENT_COLLATERAL for lead in x.leads)
    assert sum(h.status == ld.LEAD_STATUS_DECLINED for lead in x.leads for h in lead.history) == 2

    bad = {f"{run}-foreign", f"{run}-invalid", f"{run}-unknown"}
    dead = await read_topic(bootstrap, topics.LEAD_OUTCOMES_DLQ.name, lambda f: len(f) >= 3,
                            lambda r: r.key.decode() in bad, linger=1.0)
    reasons = {r.key.decode(): headers(r)[codec.DLQ_REASON] for r in dead}
    assert set(reasons) == bad and len(dead) == 3
    assert reasons[f"{run}-foreign"].startswith("permission denied")
    assert "outcome.decline.reason_code" in reasons[f"{run}-invalid"]
    assert reasons[f"{run}-unknown"].startswith("not found")


# -- withdrawal and queries ----------------------------------------------------------------------------------------


async def test_withdrawal_withdraws_the_open_leads_and_is_final(stubs: Stubs, producer) -> None:  # noqa: ANN001
    (a, key_a), (b, _) = await register_bank(stubs, "spdb"), await register_bank(stubs, "cmb")
    demand, (lead_a, lead_b) = await demand_with_leads(stubs, producer, [a, b])
    uscc = demand.request.enterprise_uscc
    err = await rpc_error(stubs.demands.WithdrawDemand(dm.WithdrawDemandRequest(demand_id=demand.demand_id,
                                                                                enterprise_uscc=new_uscc())))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    x = (await stubs.demands.WithdrawDemand(dm.WithdrawDemandRequest(
        demand_id=demand.demand_id, enterprise_uscc=uscc, reason="financed by a shareholder loan"))).demand
    assert x.status == dm.DEMAND_STATUS_WITHDRAWN and x.history[-1].reason == "financed by a shareholder loan"
    assert all(lead.status == ld.LEAD_STATUS_WITHDRAWN for lead in x.leads)
    assert await get(stubs, demand.demand_id) == x
    err = await rpc_error(stubs.demands.WithdrawDemand(dm.WithdrawDemandRequest(demand_id=demand.demand_id,
                                                                                enterprise_uscc=uscc)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    err = await rpc_error(stubs.leads.ReportLeadOutcome(ld.ReportLeadOutcomeRequest(lead_id=lead_a, outcome=outcome(
        ld.LEAD_STATUS_CONTACTED, contact=ld.Contact(method=ld.CONTACT_METHOD_VISIT))), metadata=key_of(key_a)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION  # a withdrawn lead is final
    assert await get(stubs, demand.demand_id) == x


async def test_list_demands_by_enterprise_status_channel_institution_and_time(stubs: Stubs,
                                                                             producer) -> None:  # noqa: ANN001
    (a, _) = await register_bank(stubs, "hxb")
    with_leads, _ = await demand_with_leads(stubs, producer, [a])
    uscc = with_leads.request.enterprise_uscc
    later = [await submit(stubs, uscc, amount_fen=(600 + n) * WAN) for n in range(3)]
    window = (await stubs.demands.FileWindowDemand(dm.FileWindowDemandRequest(
        window_id="w2", filing_id=f"f-{uuid.uuid4()}", demand=demand_request(
            uscc, amount_fen=777 * WAN)))).demand

    async def ids_of(**kw: object) -> list[str]:
        out, token = [], ""
        while True:
            page = await stubs.demands.ListDemands(dm.ListDemandsRequest(page_size=2, page_token=token, **kw))
            out += [x.demand_id for x in page.demands]
            token = page.next_page_token
            if not token:
                return out

    everything = [window.demand_id, *[x.demand_id for x in reversed(later)], with_leads.demand_id]
    assert await ids_of(enterprise_uscc=uscc) == everything  # newest first
    assert await ids_of(enterprise_uscc=uscc, statuses=[dm.DEMAND_STATUS_LEADS_ISSUED]) == [with_leads.demand_id]
    assert await ids_of(enterprise_uscc=uscc, channel=dm.CHANNEL_OFFLINE_WINDOW) == [window.demand_id]
    assert await ids_of(institution_id=a) == [with_leads.demand_id]
    since = later[1].submitted_at
    assert await ids_of(enterprise_uscc=uscc, submitted_from=since, submitted_to=window.submitted_at) == [
        later[2].demand_id, later[1].demand_id]
    page = await stubs.demands.ListDemands(dm.ListDemandsRequest(enterprise_uscc=uscc, page_size=10))
    assert page.demands[-1].leads[0].explanation  # full demands: history and leads with their explanations
    err = await rpc_error(stubs.demands.ListDemands(dm.ListDemandsRequest(statuses=[99], channel=42)))
    assert set(field_violations(err)) == {"statuses", "channel"}


async def test_leads_added_after_all_declined_reopen_the_demand(stubs: Stubs, producer) -> None:  # noqa: ANN001
    (a, key_a), (b, _) = await register_bank(stubs, "cgb"), await register_bank(stubs, "psbc")
    demand, (lead_a,) = await demand_with_leads(stubs, producer, [a])
    await stubs.leads.ReportLeadOutcome(ld.ReportLeadOutcomeRequest(lead_id=lead_a, outcome=outcome(
        ld.LEAD_STATUS_DECLINED, decline=ld.Decline(reason_code=ld.DECLINE_REASON_HIGH_LEVERAGE))),
        metadata=key_of(key_a))
    assert (await get(stubs, demand.demand_id)).status == dm.DEMAND_STATUS_ALL_DECLINED
    late = ld.Lead(lead_id=ids.lead_id(demand.demand_id, f"{b}-loan"), demand_id=demand.demand_id, institution_id=b,
                   product_id=f"{b}-loan", product_version=1, origin=ld.LEAD_ORIGIN_REMATCH_AFTER_DECLINE, score=60,
                   rank=1, rules_version="r1", status=ld.LEAD_STATUS_CREATED,
                   created_at=Timestamp(seconds=int(time.time())))
    event = matching.DemandMatched(demand_id=demand.demand_id, enterprise_uscc=demand.request.enterprise_uscc,
                                   leads=[late], additional=True)
    spec = topics.DEMANDS_MATCHED
    await producer.send_and_wait(spec.name, value=event.SerializeToString(), key=spec.key_of(event),
                                 headers=codec.make_headers(spec.event_type, "matcher"))
    x = await eventually(lambda: get(stubs, demand.demand_id), lambda x: len(x.leads) == 2)
    assert statuses(x)[-3:] == [dm.DEMAND_STATUS_ALL_DECLINED, dm.DEMAND_STATUS_MATCHING,
                                dm.DEMAND_STATUS_LEADS_ISSUED]
    assert {lead.lead_id: lead.status for lead in x.leads}[late.lead_id] == ld.LEAD_STATUS_DELIVERED


async def test_a_missed_contact_clock_counts_as_not_taken_up_and_expires_once_the_demand_goes_on(
        stubs: Stubs, producer) -> None:  # noqa: ANN001
    (a, _), (b, _) = await register_bank(stubs, "hxb"), await register_bank(stubs, "gdb")
    demand, (lead_a,) = await demand_with_leads(stubs, producer, [a])
    breach = matching.LeadSlaBreached(lead_id=lead_a, demand_id=demand.demand_id, institution_id=a,
                                      breached_at=Timestamp(seconds=int(time.time())))
    spec = topics.LEAD_SLA_BREACHED
    await producer.send_and_wait(spec.name, value=breach.SerializeToString(), key=spec.key_of(breach),
                                 headers=codec.make_headers(spec.event_type, "notifier"))
    x = await eventually(lambda: get(stubs, demand.demand_id), lambda x: x.status == dm.DEMAND_STATUS_ALL_DECLINED)
    assert x.status == dm.DEMAND_STATUS_ALL_DECLINED  # its only institution never called: not left waiting
    assert "did not make contact in time" in x.history[-1].reason
    assert x.leads[0].status == ld.LEAD_STATUS_SLA_BREACHED
    assert "next-best institution" in x.leads[0].history[-1].reason  # the enterprise consented to sharing it

    rerouted = ld.Lead(lead_id=ids.lead_id(demand.demand_id, f"{b}-loan"), demand_id=demand.demand_id,
                       institution_id=b, product_id=f"{b}-loan", product_version=1, origin=ld.LEAD_ORIGIN_SLA_REROUTE,
                       score=70, rank=1, rules_version="r1", status=ld.LEAD_STATUS_CREATED,
                       created_at=Timestamp(seconds=int(time.time())))
    event = matching.DemandMatched(demand_id=demand.demand_id, enterprise_uscc=demand.request.enterprise_uscc,
                                   leads=[rerouted], additional=True)
    await producer.send_and_wait(topics.DEMANDS_MATCHED.name, value=event.SerializeToString(),
                                 key=topics.DEMANDS_MATCHED.key_of(event),
                                 headers=codec.make_headers(topics.DEMANDS_MATCHED.event_type, "matcher"))
    x = await eventually(lambda: get(stubs, demand.demand_id), lambda x: len(x.leads) == 2)
    by_id = {lead.lead_id: lead for lead in x.leads}
    assert by_id[lead_a].status == ld.LEAD_STATUS_EXPIRED  # DOMAIN.md: SLA_BREACHED -> EXPIRED, re-routed
    assert by_id[lead_a].history[-1].reason == f"re-routed: the demand went on to {b}"
    assert by_id[rerouted.lead_id].status == ld.LEAD_STATUS_DELIVERED
    assert x.status == dm.DEMAND_STATUS_LEADS_ISSUED
