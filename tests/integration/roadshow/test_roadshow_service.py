"""The roadshow service through its public interfaces, with two replicas side by side, the demand
service, the real broker and PostgreSQL: the monthly schedule, operators' roadshows, applications
and eligibility, selection with overrides and notices, invitations, investors, intents followed
through a lead and the bank's outcome reports to the roadshow report."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import timedelta

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp
from roadshow_support import (  # noqa: I001 - the test folder's own helpers
    WAN,
    apply,
    create,
    eventually,
    notices,
    read_topic,
    register_institution,
    registered,
    rpc_error,
    submit,
    ts,
    until_status,
    when_known,
)

from finmesh.common.v1 import finance_pb2 as fin
from finmesh.demand.v1 import demand_pb2 as dm
from finmesh.institution.v1 import institution_pb2 as inst
from finmesh.lead.v1 import lead_pb2 as ld
from finmesh.matching.v1 import events_pb2 as matching
from finmesh.roadshow.v1 import events_pb2 as ev
from finmesh.roadshow.v1 import roadshow_pb2 as rs
from meshkit import topics
from meshkit.grpcserver import field_violations

pytestmark = pytest.mark.integration

state: dict[str, object] = {}  # what one test leaves for the next (they run in order)


def automatic(reply: rs.ListRoadshowsResponse) -> list[rs.Roadshow]:
    return [x for x in reply.roadshows if x.automatic]


async def test_the_monthly_roadshow_is_created_once_by_two_replicas_and_across_a_restart(roadshow, replicas,
                                                                                        clock) -> None:
    async def of(month: str) -> list[rs.Roadshow]:
        return automatic(await roadshow.ListRoadshows(rs.ListRoadshowsRequest(month=month)))

    for month in ("2030-03", "2030-04"):  # this month's and next month's
        found = await eventually(lambda m=month: of(m), lambda xs: len(xs) >= 1)
        assert len(found) == 1, found
    march = (await of("2030-03"))[0]
    assert march.held_at.ToDatetime().day == 15 and march.capacity > 0 and march.theme and march.city
    assert march.status == rs.ROADSHOW_STATUS_OPEN_FOR_APPLICATIONS

    await replicas.restart(1)
    await asyncio.sleep(1.0)  # several schedule passes of both replicas
    assert [len(await of(m)) for m in ("2030-03", "2030-04")] == [1, 1]

    clock.advance(timedelta(days=31))  # 2030-04-03: May's roadshow is due
    found = await eventually(lambda: of("2030-05"), lambda xs: len(xs) >= 1)
    await asyncio.sleep(1.0)
    assert [len(await of(m)) for m in ("2030-03", "2030-04", "2030-05")] == [1, 1, 1]
    assert found[0].roadshow_id != march.roadshow_id
    assert (await until_status(roadshow, march.roadshow_id, rs.ROADSHOW_STATUS_HELD)).month == "2030-03"


async def test_operators_create_update_and_get_roadshows(roadshow, clock) -> None:
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
    assert not x.automatic and x.month == "2030-04" and x.version == 1
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
    err = await rpc_error(roadshow.GetRoadshow(rs.GetRoadshowRequest(roadshow_id="nope")))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_applicants_are_checked_and_an_ineligible_one_is_refused_with_the_reasons(roadshow, stubs,
                                                                                        clock) -> None:
    x = await create(roadshow, clock.now, capacity=2)
    a = await registered(stubs)  # provincial SRDI, intelligent equipment, a first-time borrower
    b = await registered(stubs, srdi_tier=fin.SRDI_TIER_LITTLE_GIANT, has_borrowed=True)
    c = await registered(stubs, has_borrowed=True)
    d = await registered(stubs, srdi_tier=fin.SRDI_TIER_INNOVATIVE_SME, key_industry=fin.KEY_INDUSTRY_AEROSPACE)

    err = await rpc_error(roadshow.Apply(rs.ApplyRequest(roadshow_id=x.roadshow_id, enterprise_uscc="bad")))
    assert set(field_violations(err)) == {"enterprise_uscc", "amount_sought_fen", "purpose"}

    refused = await apply(roadshow, x.roadshow_id, d)
    assert isinstance(refused, grpc.aio.AioRpcError)
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "INNOVATIVE_SME" in refused.details() and "KEY_INDUSTRY" not in refused.details()
    assert "INTELLIGENT_EQUIPMENT" in refused.details() and "AEROSPACE" in refused.details()

    applied = {}
    for uscc, amount in ((a, 500 * WAN), (b, 2000 * WAN), (c, 500 * WAN)):
        reply = await apply(roadshow, x.roadshow_id, uscc, amount)
        assert reply.created and reply.application.status == rs.APPLICATION_STATUS_APPLIED
        applied[uscc] = reply.application
    assert not (await apply(roadshow, x.roadshow_id, a)).created  # applying twice is one application

    listed = await roadshow.ListApplications(rs.ListApplicationsRequest(
        roadshow_id=x.roadshow_id, status=rs.APPLICATION_STATUS_REFUSED))
    assert [app.enterprise_uscc for app in listed.applications] == [d]
    assert len(listed.applications[0].refusal_reasons) == 2
    state.update(roadshow=x, a=a, b=b, c=c, d=d)


async def test_presenters_are_selected_once_by_the_ranking_and_operators_can_override(roadshow, clock,
                                                                                      bootstrap: str) -> None:
    x: rs.Roadshow = state["roadshow"]  # type: ignore[assignment]
    a, b, c, d = (state[k] for k in "abcd")
    clock.advance(timedelta(days=6))  # the window closed
    await until_status(roadshow, x.roadshow_id, rs.ROADSHOW_STATUS_SELECTION)
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
    assert set(field_violations(err)) == {"reason", "operator_id"}
    err = await rpc_error(override(rs.OverrideSelectionRequest(roadshow_id=x.roadshow_id, enterprise_uscc=c,
                                                               selected=True, reason="local", operator_id="op-1")))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "places are taken" in err.details()
    await override(rs.OverrideSelectionRequest(roadshow_id=x.roadshow_id, enterprise_uscc=a, selected=False,
                                               reason="withdrew for an audit", operator_id="op-1"))
    swapped = (await override(rs.OverrideSelectionRequest(roadshow_id=x.roadshow_id, enterprise_uscc=c, selected=True,
                                                          reason="replaces a", operator_id="op-1"))).application
    assert swapped.status == rs.APPLICATION_STATUS_SELECTED and swapped.override_by == "op-1"
    assert "replaces a" in swapped.selection_reason

    # everyone was told, exactly once each, though two replicas ran the schedule
    told = await notices(bootstrap, x.roadshow_id, expected=9, recipients={a, b, c, d})
    kinds = Counter((n.recipient_id, n.kind) for n in told)
    assert kinds == Counter({
        (a, ev.NOTICE_KIND_APPLICATION_RECEIVED): 1, (b, ev.NOTICE_KIND_APPLICATION_RECEIVED): 1,
        (c, ev.NOTICE_KIND_APPLICATION_RECEIVED): 1, (d, ev.NOTICE_KIND_APPLICATION_REFUSED): 1,
        (b, ev.NOTICE_KIND_SELECTED): 1, (a, ev.NOTICE_KIND_SELECTED): 1, (c, ev.NOTICE_KIND_NOT_SELECTED): 1,
        (a, ev.NOTICE_KIND_NOT_SELECTED): 1, (c, ev.NOTICE_KIND_SELECTED): 1,
    })
    assert all(n.roadshow_title and n.city == "Xiamen" for n in told)


async def test_an_intent_becomes_a_lead_whose_disbursement_is_the_reports_granted_amount(
        roadshow, stubs, replicas, clock, bootstrap: str) -> None:
    x: rs.Roadshow = state["roadshow"]  # type: ignore[assignment]
    b, d = state["b"], state["d"]
    fund, key = await register_institution(stubs, "fund")
    guarantor, _ = await register_institution(stubs, "guarantor", inst.INSTITUTION_TYPE_GUARANTOR)
    investor = await when_known(lambda: roadshow.RegisterInvestor(rs.RegisterInvestorRequest(
        roadshow_id=x.roadshow_id, institution_id=fund)))
    assert investor.created and investor.investor.institution_type == inst.INSTITUTION_TYPE_FUND
    refused = await when_known(lambda: roadshow.RegisterInvestor(rs.RegisterInvestorRequest(
        roadshow_id=x.roadshow_id, institution_id=guarantor)))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION and "banks, insurers and funds" in refused.details()

    intent = rs.RecordIntentRequest(roadshow_id=x.roadshow_id, institution_id=fund, enterprise_uscc=b,
                                    intended_amount_fen=300 * WAN, instrument=ev.INSTRUMENT_EQUITY, note="series B")
    err = await rpc_error(roadshow.RecordIntent(intent))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "when it is held" in err.details()
    clock.advance(timedelta(days=5))  # the roadshow is held
    await until_status(roadshow, x.roadshow_id, rs.ROADSHOW_STATUS_HELD)
    err = await rpc_error(roadshow.RecordIntent(rs.RecordIntentRequest(
        roadshow_id=x.roadshow_id, institution_id=fund, enterprise_uscc=d, intended_amount_fen=1,
        instrument=ev.INSTRUMENT_LOAN)))
    assert "not a presenter" in err.details()
    recorded = await roadshow.RecordIntent(intent)
    assert recorded.created and not (await roadshow.RecordIntent(intent)).created
    lead_id = recorded.intent.lead_id

    # the demand service made a lead of it for the fund: on its topic, and in its LeadService
    metadata = (("x-api-key", key),)
    leads = await eventually(lambda: stubs.leads.ListLeads(ld.ListLeadsRequest(), metadata=metadata),
                             lambda reply: len(reply.leads) >= 1, timeout=20)
    (lead,) = leads.leads
    assert (lead.lead_id, lead.origin, lead.status) == (lead_id, ld.LEAD_ORIGIN_ROADSHOW, ld.LEAD_STATUS_DELIVERED)
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


async def test_srdi_enterprises_with_open_demands_fitting_the_theme_are_invited_once(roadshow, stubs, clock,
                                                                                     bootstrap: str) -> None:
    fits = await registered(stubs)
    other = await registered(stubs, key_industry=fin.KEY_INDUSTRY_AEROSPACE)
    await submit(stubs, fits)
    await submit(stubs, other)
    x = await create(roadshow, clock.now)
    told = await notices(bootstrap, x.roadshow_id, expected=1, recipients={fits, other})
    assert [(n.recipient_id, n.kind) for n in told] == [(fits, ev.NOTICE_KIND_INVITED)]
    assert "fits the theme" in told[0].reason
