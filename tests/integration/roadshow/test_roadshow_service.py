"""The roadshow service through its public interfaces, with two replicas side by side, the demand
service, the real broker and PostgreSQL: the monthly schedule, operators' roadshows, applications
and eligibility, selection with overrides and notices, invitations, investors, intents followed
through a lead and the bank's outcome reports to the roadshow report."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp
from institution_keys import OPERATOR_ID, OperatorAuth
from roadshow_support import (  # noqa: I001 - the test folder's own helpers
    START,
    WAN,
    apply,
    create,
    headers,
    new_uscc,
    notices,
    read_topic,
    register_institution,
    registered,
    rpc_error,
    schedule_passes,
    submit,
    ts,
    until_status,
    when_known,
)
from waiting import eventually

from finmesh.common.v1 import finance_pb2 as fin
from finmesh.demand.v1 import demand_pb2 as dm
from finmesh.demand.v1 import events_pb2 as dm_events
from finmesh.enterprise.v1 import events_pb2 as ent_events
from finmesh.institution.v1 import events_pb2 as inst_events
from finmesh.institution.v1 import institution_pb2 as inst
from finmesh.lead.v1 import lead_pb2 as ld
from finmesh.matching.v1 import events_pb2 as matching
from finmesh.notification.v1.clock_pb2 import ContactPolicy
from finmesh.notification.v1.events_pb2 import ContactPolicyChanged
from finmesh.roadshow.v1 import events_pb2 as ev
from finmesh.roadshow.v1 import roadshow_pb2 as rs
from finmesh.roadshow.v1 import roadshow_pb2_grpc as rs_grpc
from meshkit import codec, topics
from meshkit.grpcserver import field_violations
from services.roadshow.domain import month_of, next_month
from tests.integration.matcher.matcher_support import publish

pytestmark = pytest.mark.integration


def automatic(reply: rs.ListRoadshowsResponse) -> list[rs.Roadshow]:
    return [x for x in reply.roadshows if x.automatic]


async def automatic_of(roadshow, month: str) -> list[rs.Roadshow]:  # noqa: ANN001
    return automatic(await roadshow.ListRoadshows(rs.ListRoadshowsRequest(month=month)))


async def test_the_monthly_roadshow_is_created_once_by_two_replicas_and_across_a_restart(roadshow, replicas,
                                                                                        clock) -> None:
    # the module's first test: the replicas planned their months from its start (tests move the clock on)
    assert clock.now == START, "run this test first in its module"

    async def of(month: str) -> list[rs.Roadshow]:
        return automatic(await roadshow.ListRoadshows(rs.ListRoadshowsRequest(month=month)))

    for month in ("2030-03", "2030-04"):  # this month's and next month's
        found = await eventually(lambda m=month: of(m), lambda xs: len(xs) >= 1)
        assert len(found) == 1, found
    march = (await of("2030-03"))[0]
    assert march.held_at.ToDatetime().day == 15 and march.capacity > 0 and march.theme and march.city
    assert march.status == rs.ROADSHOW_STATUS_OPEN_FOR_APPLICATIONS

    await replicas.restart(1)
    await schedule_passes(replicas.runtimes)  # whole passes of both replicas, one of them new
    assert [len(await of(m)) for m in ("2030-03", "2030-04")] == [1, 1]

    clock.advance(timedelta(days=31))  # 2030-04-03: May's roadshow is due
    found = await eventually(lambda: of("2030-05"), lambda xs: len(xs) >= 1)
    await schedule_passes(replicas.runtimes)
    assert [len(await of(m)) for m in ("2030-03", "2030-04", "2030-05")] == [1, 1, 1]
    assert found[0].roadshow_id != march.roadshow_id
    assert (await until_status(roadshow, march.roadshow_id, rs.ROADSHOW_STATUS_HELD)).month == "2030-03"

    # as if the service were first started on 2030-06-20: June's applications closed on the 8th, so
    # June gets no roadshow (it would be HELD at once, without presenters); July's is planned
    clock.advance(datetime(2030, 6, 20, tzinfo=UTC) - clock.now)
    july = await eventually(lambda: of("2030-07"), lambda xs: len(xs) >= 1)
    await schedule_passes(replicas.runtimes)
    assert [len(await of(m)) for m in ("2030-06", "2030-07")] == [0, 1] and july[0].automatic


async def test_operators_create_update_and_get_roadshows(roadshow, replicas, clock) -> None:
    # Only an operator, with its key, creates or changes a roadshow.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{replicas.runtimes[0].grpc_port}") as plain:
        err = await rpc_error(rs_grpc.RoadshowServiceStub(plain).CreateRoadshow(rs.CreateRoadshowRequest(
            request_id="r0", roadshow=rs.Roadshow(theme="Aerospace"))))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    err = await rpc_error(roadshow.CreateRoadshow(rs.CreateRoadshowRequest(request_id="r1", roadshow=rs.Roadshow(
        theme="", theme_kind=rs.THEME_KIND_SPECIAL_ZONE, theme_zone="atlantis", city="Gotham", capacity=0,
        held_at=ts(clock.now + timedelta(days=3))))))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(err)) >= {"roadshow.theme", "roadshow.theme_zone", "roadshow.city",
                                          "roadshow.capacity"}

    x = await create(roadshow, clock.now)
    again = await roadshow.CreateRoadshow(rs.CreateRoadshowRequest(request_id="r2", roadshow=rs.Roadshow(
        theme="Aerospace", theme_kind=rs.THEME_KIND_KEY_INDUSTRY, theme_industry=fin.KEY_INDUSTRY_AEROSPACE,
        city="Mianyang", held_at=ts(clock.now + timedelta(days=20)), capacity=5)))
    repeat = await roadshow.CreateRoadshow(rs.CreateRoadshowRequest(request_id="r2", roadshow=rs.Roadshow()))
    assert again.created and not repeat.created and repeat.roadshow.roadshow_id == again.roadshow.roadshow_id
    assert not x.automatic and x.month == month_of(clock.now + timedelta(days=10)) and x.version == 1
    x = await until_status(roadshow, x.roadshow_id, rs.ROADSHOW_STATUS_OPEN_FOR_APPLICATIONS)  # its window opened

    changed = await roadshow.UpdateRoadshow(rs.UpdateRoadshowRequest(
        roadshow=rs.Roadshow(roadshow_id=x.roadshow_id, city="Mianyang", capacity=3,
                             held_at=ts(clock.now + timedelta(days=11))),
        update_mask=FieldMask(paths=["city", "capacity", "held_at"])))
    got = (await roadshow.GetRoadshow(rs.GetRoadshowRequest(roadshow_id=x.roadshow_id))).roadshow
    assert got == changed.roadshow
    assert (got.city, got.capacity, got.version) == ("Mianyang", 3, x.version + 1)
    assert got.held_at.ToDatetime() == (clock.now + timedelta(days=11)).replace(tzinfo=None)

    err = await rpc_error(roadshow.UpdateRoadshow(rs.UpdateRoadshowRequest(
        roadshow=rs.Roadshow(roadshow_id=x.roadshow_id), update_mask=FieldMask(paths=["status"]))))
    assert set(field_violations(err)) == {"update_mask"}
    err = await rpc_error(roadshow.UpdateRoadshow(rs.UpdateRoadshowRequest(
        roadshow=rs.Roadshow(roadshow_id=x.roadshow_id, city="Xiamen"), update_mask=FieldMask(paths=["city"]),
        operator_id="someone-else")))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED  # the request names another operator than the key's
    err = await rpc_error(roadshow.GetRoadshow(rs.GetRoadshowRequest(roadshow_id="nope")))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_create_roadshow_names_every_wrong_field_at_once(roadshow, clock) -> None:
    aerospace = dict(theme="Aerospace", theme_kind=rs.THEME_KIND_KEY_INDUSTRY,
                     theme_industry=fin.KEY_INDUSTRY_AEROSPACE, capacity=5)
    err = await rpc_error(roadshow.CreateRoadshow(rs.CreateRoadshowRequest(request_id=" ", roadshow=rs.Roadshow(
        city="Gotham", **aerospace))))  # no request id, no date, no such city
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(err)) == {"request_id", "roadshow.held_at", "roadshow.city"}

    # held in 3 days, no applications_close_at: the window would close 7 days before, in the past
    err = await rpc_error(roadshow.CreateRoadshow(rs.CreateRoadshowRequest(
        request_id=f"req-{uuid.uuid4()}", roadshow=rs.Roadshow(city="Xiamen", held_at=ts(clock.now + timedelta(days=3)),
                                                               **aerospace))))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(err)
    assert set(violations) == {"roadshow.held_at"} and "applications_close_at" in violations["roadshow.held_at"]


async def test_an_automatic_roadshow_cannot_move_to_another_month(roadshow, clock) -> None:
    month = next_month(month_of(clock.now))  # always planned, before its selection
    (x,) = await eventually(lambda: automatic_of(roadshow, month), lambda xs: len(xs) == 1)
    err = await rpc_error(roadshow.UpdateRoadshow(rs.UpdateRoadshowRequest(
        roadshow=rs.Roadshow(roadshow_id=x.roadshow_id, held_at=ts(x.held_at.ToDatetime(UTC) + timedelta(days=31))),
        update_mask=FieldMask(paths=["held_at"]))))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(err) == {
        "roadshow.held_at": f"must stay in {month}: an automatic roadshow is that month's roadshow"}
    within = x.held_at.ToDatetime(UTC) + timedelta(days=1)  # a day later, the same month: fine
    moved = await roadshow.UpdateRoadshow(rs.UpdateRoadshowRequest(
        roadshow=rs.Roadshow(roadshow_id=x.roadshow_id, held_at=ts(within)), update_mask=FieldMask(paths=["held_at"])))
    assert (moved.roadshow.month, moved.roadshow.held_at.ToDatetime(UTC)) == (month, within)


async def test_applicants_are_checked_and_an_ineligible_one_is_refused_with_the_reasons(
        roadshow, replicas, applied, bootstrap: str) -> None:
    x, a, b, c, d = applied.roadshow, applied.a, applied.b, applied.c, applied.d
    err = await rpc_error(roadshow.Apply(rs.ApplyRequest(roadshow_id=x.roadshow_id, enterprise_uscc="bad")))
    assert set(field_violations(err)) == {"enterprise_uscc", "amount_sought_fen", "purpose"}

    refused = applied.refused
    assert isinstance(refused, grpc.aio.AioRpcError)
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "INNOVATIVE_SME" in refused.details() and "KEY_INDUSTRY" not in refused.details()
    assert "INTELLIGENT_EQUIPMENT" in refused.details() and "AEROSPACE" in refused.details()
    again = await apply(roadshow, x.roadshow_id, d)  # refused again, for the same reasons
    assert again.code() == grpc.StatusCode.FAILED_PRECONDITION and again.details() == refused.details()

    for uscc in (a, b, c):
        reply = applied.replies[uscc]
        assert reply.created and reply.application.status == rs.APPLICATION_STATUS_APPLIED
    assert not (await apply(roadshow, x.roadshow_id, a)).created  # applying twice is one application

    listed = await roadshow.ListApplications(rs.ListApplicationsRequest(
        roadshow_id=x.roadshow_id, status=rs.APPLICATION_STATUS_REFUSED))
    assert [app.enterprise_uscc for app in listed.applications] == [d]
    assert len(listed.applications[0].refusal_reasons) == 2

    # each told once: d of its refusal (not again for the same reasons), a of one application
    told = await notices(bootstrap, replicas.runtimes, x.roadshow_id, {a, b, c, d})
    assert Counter((n.recipient_id, n.kind) for n in told) == Counter({
        (a, ev.NOTICE_KIND_APPLICATION_RECEIVED): 1, (b, ev.NOTICE_KIND_APPLICATION_RECEIVED): 1,
        (c, ev.NOTICE_KIND_APPLICATION_RECEIVED): 1, (d, ev.NOTICE_KIND_APPLICATION_REFUSED): 1})


async def test_presenters_are_selected_once_by_the_ranking_and_operators_can_override(
        roadshow, replicas, selected, bootstrap: str) -> None:
    x, a, b, c, d = selected.roadshow, selected.a, selected.b, selected.c, selected.d
    apps = (await roadshow.ListApplications(rs.ListApplicationsRequest(roadshow_id=x.roadshow_id))).applications
    by = {app.enterprise_uscc: app for app in apps}
    # b: little giant 40 + industry 20 + 20 million yuan 15 = 75; a: 25 + 20 + 10 + first-time 15 = 70; c: 55
    assert [(app.enterprise_uscc, app.rank, app.score) for app in apps[:3]] == [(b, 1, 75), (a, 2, 70), (c, 3, 55)]
    assert [by[u].status for u in (b, a, c, d)] == [rs.APPLICATION_STATUS_SELECTED, rs.APPLICATION_STATUS_SELECTED,
                                                    rs.APPLICATION_STATUS_NOT_SELECTED, rs.APPLICATION_STATUS_REFUSED]
    assert {k.criterion: k.points for k in by[a].ranking}["first_time_borrower"] == 15
    assert "capacity of 2 was reached" in by[c].selection_reason

    override = roadshow.OverrideSelection
    err = await rpc_error(override(rs.OverrideSelectionRequest(roadshow_id=x.roadshow_id, enterprise_uscc=c,
                                                               selected=True)))
    assert set(field_violations(err)) == {"reason"}  # the operator is the key's
    err = await rpc_error(override(rs.OverrideSelectionRequest(roadshow_id=x.roadshow_id, enterprise_uscc=c,
                                                               selected=True, reason="local",
                                                               operator_id=OPERATOR_ID)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "places are taken" in err.details()
    await override(rs.OverrideSelectionRequest(roadshow_id=x.roadshow_id, enterprise_uscc=a, selected=False,
                                               reason="withdrew for an audit", operator_id=OPERATOR_ID))
    swapped = (await override(rs.OverrideSelectionRequest(roadshow_id=x.roadshow_id, enterprise_uscc=c, selected=True,
                                                          reason="replaces a", operator_id=OPERATOR_ID))).application
    assert swapped.status == rs.APPLICATION_STATUS_SELECTED and swapped.override_by == OPERATOR_ID
    assert "replaces a" in swapped.selection_reason

    # everyone was told, exactly once each, though two replicas ran the schedule
    await schedule_passes(replicas.runtimes)
    told = await notices(bootstrap, replicas.runtimes, x.roadshow_id, {a, b, c, d})
    kinds = Counter((n.recipient_id, n.kind) for n in told)
    assert kinds == Counter({
        (a, ev.NOTICE_KIND_APPLICATION_RECEIVED): 1, (b, ev.NOTICE_KIND_APPLICATION_RECEIVED): 1,
        (c, ev.NOTICE_KIND_APPLICATION_RECEIVED): 1, (d, ev.NOTICE_KIND_APPLICATION_REFUSED): 1,
        (b, ev.NOTICE_KIND_SELECTED): 1, (a, ev.NOTICE_KIND_SELECTED): 1, (c, ev.NOTICE_KIND_NOT_SELECTED): 1,
        (a, ev.NOTICE_KIND_NOT_SELECTED): 1, (c, ev.NOTICE_KIND_SELECTED): 1,
    })
    assert all(n.roadshow_title and n.city == "Xiamen" for n in told)


async def test_concurrent_overrides_for_the_last_place_select_exactly_one(roadshow, replicas, stubs, clock) -> None:
    x = await create(roadshow, clock.now, capacity=2)
    usccs = await asyncio.gather(*(registered(stubs) for _ in range(6)))
    for uscc in usccs:
        assert (await apply(roadshow, x.roadshow_id, uscc)).created
    clock.advance(timedelta(days=6))
    await until_status(roadshow, x.roadshow_id, rs.ROADSHOW_STATUS_SELECTION)
    apps = (await roadshow.ListApplications(rs.ListApplicationsRequest(roadshow_id=x.roadshow_id))).applications
    chosen = [app.enterprise_uscc for app in apps if app.status == rs.APPLICATION_STATUS_SELECTED]
    waiting = [app.enterprise_uscc for app in apps if app.status == rs.APPLICATION_STATUS_NOT_SELECTED]
    assert (len(chosen), len(waiting)) == (2, 4)
    await roadshow.OverrideSelection(rs.OverrideSelectionRequest(
        roadshow_id=x.roadshow_id, enterprise_uscc=chosen[0], selected=False, reason="withdrew",
        operator_id=OPERATOR_ID))

    # one place left; four overrides take it at once, through both replicas
    async with grpc.aio.insecure_channel(f"127.0.0.1:{replicas.runtimes[1].grpc_port}",
                                         interceptors=[OperatorAuth()]) as channel:
        other = rs_grpc.RoadshowServiceStub(channel)
        results = await asyncio.gather(*(
            (roadshow, other)[i % 2].OverrideSelection(rs.OverrideSelectionRequest(
                roadshow_id=x.roadshow_id, enterprise_uscc=uscc, selected=True, reason="local"))
            for i, uscc in enumerate(waiting)), return_exceptions=True)
    won = [r for r in results if not isinstance(r, Exception)]
    lost = [r for r in results if isinstance(r, Exception)]
    assert len(won) == 1, results
    assert all(isinstance(e, grpc.aio.AioRpcError) and e.code() == grpc.StatusCode.FAILED_PRECONDITION
               and "places are taken" in e.details() for e in lost), lost
    got = (await roadshow.GetRoadshow(rs.GetRoadshowRequest(roadshow_id=x.roadshow_id))).roadshow
    listed = await roadshow.ListApplications(rs.ListApplicationsRequest(
        roadshow_id=x.roadshow_id, status=rs.APPLICATION_STATUS_SELECTED))
    assert got.presenters == len(listed.applications) == 2


async def test_record_intent_names_every_wrong_field(roadshow) -> None:
    err = await rpc_error(roadshow.RecordIntent(rs.RecordIntentRequest(
        enterprise_uscc="bad", intended_amount_fen=-1, instrument=9, note="n" * 1001, term_months=-1)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(err)) == {"roadshow_id", "institution_id", "enterprise_uscc", "intended_amount_fen",
                                          "instrument", "note", "term_months"}


async def test_an_intent_becomes_a_lead_whose_disbursement_is_the_reports_granted_amount(
        roadshow, stubs, replicas, clock, selected, demand_rt, bootstrap: str) -> None:
    x, b, d = selected.roadshow, selected.b, selected.d
    fund, key = await register_institution(stubs, "fund")
    guarantor, guarantor_key = await register_institution(stubs, "guarantor", inst.INSTITUTION_TYPE_GUARANTOR)
    metadata = (("x-api-key", key),)
    investor = await when_known(lambda: roadshow.RegisterInvestor(rs.RegisterInvestorRequest(
        roadshow_id=x.roadshow_id, institution_id=fund), metadata=metadata))
    assert investor.created and investor.investor.institution_type == inst.INSTITUTION_TYPE_FUND
    refused = await when_known(lambda: roadshow.RegisterInvestor(rs.RegisterInvestorRequest(
        roadshow_id=x.roadshow_id, institution_id=guarantor), metadata=(("x-api-key", guarantor_key),)))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION and "banks, insurers and funds" in refused.details()

    intent = rs.RecordIntentRequest(roadshow_id=x.roadshow_id, institution_id=fund, enterprise_uscc=b,
                                    intended_amount_fen=300 * WAN, instrument=ev.INSTRUMENT_EQUITY, note="series B")
    # only the fund itself records its intents: not without its key, not with another institution's
    for other in ((), (("x-api-key", guarantor_key),)):
        assert (await rpc_error(roadshow.RecordIntent(intent, metadata=other))).code() == \
            grpc.StatusCode.PERMISSION_DENIED
    err = await rpc_error(roadshow.RecordIntent(intent, metadata=metadata))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "when it is held" in err.details()
    clock.advance(timedelta(days=5))  # the roadshow is held
    await until_status(roadshow, x.roadshow_id, rs.ROADSHOW_STATUS_HELD)
    err = await rpc_error(roadshow.RecordIntent(rs.RecordIntentRequest(
        roadshow_id=x.roadshow_id, institution_id=fund, enterprise_uscc=d, intended_amount_fen=1,
        instrument=ev.INSTRUMENT_LOAN), metadata=metadata))
    assert "not a presenter" in err.details()
    # the fund set a contact policy of 36 hours on the notifier, which announced it
    policy = ContactPolicy(institution_id=fund, sla_hours=36)
    policy.updated_at.GetCurrentTime()
    await publish(bootstrap, topics.CONTACT_POLICIES_CHANGED, ContactPolicyChanged(policy=policy))
    assert await eventually(lambda: demand_rt.pool.fetchval(
        "SELECT sla_hours FROM contact_policies WHERE institution_id = $1", fund), lambda h: h == 36) == 36
    recorded = await roadshow.RecordIntent(intent, metadata=metadata)
    assert recorded.created and not (await roadshow.RecordIntent(intent, metadata=metadata)).created
    lead_id = recorded.intent.lead_id

    # the demand service made a lead of it for the fund: on its topic, and in its LeadService
    leads = await eventually(lambda: stubs.leads.ListLeads(ld.ListLeadsRequest(), metadata=metadata),
                             lambda reply: len(reply.leads) >= 1, timeout=20)
    (lead,) = leads.leads
    assert (lead.lead_id, lead.origin, lead.status) == (lead_id, ld.LEAD_ORIGIN_ROADSHOW, ld.LEAD_STATUS_DELIVERED)
    assert lead.contact_due_at.ToSeconds() - lead.created_at.ToSeconds() == 36 * 3600  # as its clock will count
    demand = (await stubs.demands.GetDemand(dm.GetDemandRequest(demand_id=lead.demand_id))).demand
    assert (demand.channel, demand.status, demand.request.amount_fen) == (
        dm.CHANNEL_ROADSHOW, dm.DEMAND_STATUS_LEADS_ISSUED, 300 * WAN)
    issued = await read_topic(bootstrap, topics.lead_topic(fund).name, lambda xs: len(xs) >= 1, lambda r: True)
    assert matching.LeadIssued.FromString(issued[0].value).lead.lead_id == lead_id

    # the fund reports its outcomes; the roadshow follows the lead to the money granted
    report = stubs.leads.ReportLeadOutcome
    for outcome in (ld.LeadOutcome(status=ld.LEAD_STATUS_CONTACTED, contact=ld.Contact(method=ld.CONTACT_METHOD_VISIT)),
                    ld.LeadOutcome(status=ld.LEAD_STATUS_UNDER_REVIEW),
                    ld.LeadOutcome(status=ld.LEAD_STATUS_APPROVED,
                                   offer=ld.Offer(amount_fen=250 * WAN, rate_bps=0, term_months=12)),
                    ld.LeadOutcome(status=ld.LEAD_STATUS_DISBURSED, disbursement=ld.Disbursement(
                        amount_fen=200 * WAN, disbursed_at=Timestamp(seconds=int(time.time()) - 60)))):
        await report(ld.ReportLeadOutcomeRequest(lead_id=lead_id, outcome=outcome), metadata=metadata)

    async def figures() -> rs.GetRoadshowReportResponse:
        return await roadshow.GetRoadshowReport(rs.GetRoadshowReportRequest(roadshow_id=x.roadshow_id))

    got = await eventually(figures, lambda r: r.total.granted_amount_fen > 0, timeout=20)
    assert got.total == rs.RoadshowFigures(
        roadshows=1, applicants=3, refused=1, presenters=2, investors=1, intents=1, intended_amount_fen=300 * WAN,
        leads_approved=1, approved_amount_fen=250 * WAN, leads_disbursed=1, granted_amount_fen=200 * WAN)
    (listed,) = (await roadshow.ListIntents(rs.ListIntentsRequest(roadshow_id=x.roadshow_id))).intents
    assert (listed.lead_status, listed.granted_amount_fen) == (ld.LEAD_STATUS_DISBURSED, 200 * WAN)

    # over a period, by city; and the headline figures as Prometheus gauges
    by_city = await roadshow.GetRoadshowReport(rs.GetRoadshowReportRequest(
        held_from=ts(clock.now - timedelta(days=60)), held_to=ts(clock.now + timedelta(days=60)),
        group_by=rs.REPORT_GROUPING_CITY))
    assert {row.key: row.figures.granted_amount_fen for row in by_city.rows}["Xiamen"] == 200 * WAN
    assert by_city.total.granted_amount_fen == 200 * WAN
    registry = replicas.runtimes[0].metrics.registry
    granted = await eventually(lambda: asyncio.sleep(0, registry.get_sample_value(
        "finmesh_roadshow_granted_amount_fen")), lambda v: v == 200 * WAN)
    assert granted == 200 * WAN
    assert registry.get_sample_value("finmesh_roadshow_intents") == 1
    err = await rpc_error(roadshow.GetRoadshowReport(rs.GetRoadshowReportRequest(
        held_from=ts(clock.now), held_to=ts(clock.now - timedelta(days=1)))))
    assert set(field_violations(err)) == {"held_to"}


async def test_srdi_enterprises_with_open_demands_fitting_the_theme_are_invited_once(roadshow, replicas, stubs,
                                                                                     clock, bootstrap: str) -> None:
    fits = await registered(stubs)
    other = await registered(stubs, key_industry=fin.KEY_INDUSTRY_AEROSPACE)
    await submit(stubs, other)
    await submit(stubs, fits)
    x = await create(roadshow, clock.now)
    told = await eventually(lambda: notices(bootstrap, replicas.runtimes, x.roadshow_id, {fits, other}),
                            lambda xs: len(xs) >= 1, timeout=20)
    await schedule_passes(replicas.runtimes)  # both replicas invite again, and must find nobody new
    told = await notices(bootstrap, replicas.runtimes, x.roadshow_id, {fits, other})
    assert [(n.recipient_id, n.kind) for n in told] == [(fits, ev.NOTICE_KIND_INVITED)]
    assert "fits the theme" in told[0].reason


async def test_unusable_records_of_the_demand_services_topics_are_dead_lettered(producer, replicas,
                                                                                 bootstrap: str) -> None:
    run = uuid.uuid4().hex[:8]
    uscc = new_uscc()
    change = dm.StatusChange(status=dm.DEMAND_STATUS_SUBMITTED)
    records = {
        (topics.DEMAND_STATUS_CHANGED, f"{run}-no-demand"): dm_events.DemandStatusChanged(
            enterprise_uscc=uscc, channel=dm.CHANNEL_ONLINE_PORTAL, change=change, seq=1),
        (topics.DEMAND_STATUS_CHANGED, f"{run}-no-uscc"): dm_events.DemandStatusChanged(
            demand_id=f"{run}-d", channel=dm.CHANNEL_ONLINE_PORTAL, change=change, seq=1),
        (topics.DEMAND_STATUS_CHANGED, f"{run}-status"): dm_events.DemandStatusChanged(
            demand_id=f"{run}-d", enterprise_uscc=uscc, channel=dm.CHANNEL_ONLINE_PORTAL,
            change=dm.StatusChange(status=99), seq=1),  # type: ignore[arg-type]
        (topics.ENTERPRISES_CHANGED, f"{run}-no-enterprise"): ent_events.EnterpriseChanged(created=True),
        (topics.INSTITUTIONS_CHANGED, f"{run}-no-institution"): inst_events.InstitutionChanged(created=True),
    }
    for (spec, key), msg in records.items():
        await producer.send_and_wait(spec.name, value=msg.SerializeToString(), key=key.encode(),
                                     headers=codec.make_headers(spec.event_type, "a-test"))
    reasons: dict[str, str] = {}
    for spec in {spec for spec, _ in records}:
        assert spec.dead_letter is not None
        keys = {key for s, key in records if s == spec}
        dead = await read_topic(bootstrap, spec.dead_letter.name, lambda f, k=keys: {r.key.decode() for r in f} >= k,
                                lambda r, k=keys: r.key.decode() in k, timeout=20)
        reasons.update({r.key.decode(): headers(r)[codec.DLQ_REASON] for r in dead})
    assert set(reasons) == {key for _, key in records}
    assert "demand_id is empty" in reasons[f"{run}-no-demand"]
    assert "enterprise_uscc is empty" in reasons[f"{run}-no-uscc"]
    assert "change.status 99 is not a known DemandStatus" in reasons[f"{run}-status"]
    assert "enterprise.uscc is empty" in reasons[f"{run}-no-enterprise"]
    assert "institution.institution_id is empty" in reasons[f"{run}-no-institution"]
