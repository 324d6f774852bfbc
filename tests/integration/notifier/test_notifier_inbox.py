"""Inbox features on the real broker and PostgreSQL: filters, MarkRead, Subscribe (resumable),
demand status, roadshow, receivable and loan renewal notices."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from notifier_support import ENTERPRISE, INSTITUTION, inbox, matched, uid

from finmesh.demand.v1 import demand_pb2 as dpb
from finmesh.demand.v1 import events_pb2 as demand_events
from finmesh.loan.v1.events_pb2 import LoanRenewalDue
from finmesh.notification.v1 import notification_pb2 as pb
from finmesh.roadshow.v1 import events_pb2 as rs
from meshkit import topics
from meshkit.grpcserver import field_violations
from services.demand.receivables import domain as rd
from services.demand.receivables import mapping as rmap
from tests.integration.matcher.matcher_support import publish

pytestmark = pytest.mark.integration


async def test_filters_mark_read_and_a_resumable_stream(stub, bootstrap: str) -> None:
    t = uid()
    uscc = f"E{t}"
    received = demand_events.DemandStatusChanged(demand_id=f"d-{t}", enterprise_uscc=uscc, seq=1,
                                                 channel=dpb.CHANNEL_API,
                                                 change=dpb.StatusChange(status=dpb.DEMAND_STATUS_SUBMITTED))
    await publish(bootstrap, topics.DEMAND_STATUS_CHANGED, received)
    [first] = await inbox(stub, ENTERPRISE, uscc)
    assert first.kind == "demand.received"

    stream = stub.Subscribe(pb.SubscribeRequest(recipient_kind=ENTERPRISE, recipient_id=uscc, from_beginning=True))
    got = await asyncio.wait_for(stream.read(), 15)
    assert got.notification.notification_id == first.notification_id
    await publish(bootstrap, topics.DEMANDS_MATCHED, matched(f"d-{t}", uscc, [f"bank-{t}"]))
    got = await asyncio.wait_for(stream.read(), 15)
    assert got.notification.kind == "demand.matched"
    stream.cancel()
    # Resume after the first: the second comes again, nothing before it.
    resumed = stub.Subscribe(pb.SubscribeRequest(recipient_kind=ENTERPRISE, recipient_id=uscc,
                                                 after_notification_id=first.notification_id))
    again = await asyncio.wait_for(resumed.read(), 15)
    assert again.notification.notification_id == got.notification.notification_id
    resumed.cancel()

    assert [n.kind for n in await inbox(stub, ENTERPRISE, uscc, kinds=["demand.matched"])] == ["demand.matched"]
    marked = await stub.MarkRead(pb.MarkReadRequest(recipient_kind=ENTERPRISE, recipient_id=uscc,
                                                    notification_ids=[first.notification_id]))
    assert marked.marked == 1
    unread = await inbox(stub, ENTERPRISE, uscc, unread_only=True)
    assert [n.kind for n in unread] == ["demand.matched"]
    assert (await stub.MarkRead(pb.MarkReadRequest(recipient_kind=ENTERPRISE, recipient_id=uscc, all=True))).marked == 1

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.MarkRead(pb.MarkReadRequest(recipient_kind=ENTERPRISE, recipient_id=uscc,
                                               notification_ids=["nope"]))
    assert set(field_violations(err.value)) == {"notification_ids"}
    bad = stub.Subscribe(pb.SubscribeRequest(recipient_kind=ENTERPRISE, recipient_id=uscc,
                                             after_notification_id="nope"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await bad.read()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_roadshow_notices_reach_both_kinds_of_recipient(stub, bootstrap: str) -> None:
    t = uid()
    for kind, who, rid in ((rs.NOTICE_KIND_INVITED, rs.RECIPIENT_KIND_ENTERPRISE, f"E{t}"),
                           (rs.NOTICE_KIND_INVESTOR_REGISTERED, rs.RECIPIENT_KIND_INSTITUTION, f"fund-{t}")):
        await publish(bootstrap, topics.ROADSHOW_NOTICES, rs.RoadshowNotice(
            notice_id=f"n-{t}-{kind}", roadshow_id=f"rs-{t}", kind=kind, recipient_kind=who, recipient_id=rid,
            roadshow_title="2026-11 integrated circuits", city="Xiamen"))
    [invite] = await inbox(stub, ENTERPRISE, f"E{t}")
    assert invite.kind == "roadshow.notice" and "invited" in invite.body
    [zh] = await inbox(stub, ENTERPRISE, f"E{t}", metadata=(("accept-language", "zh-CN"),))
    assert "诚邀" in zh.body
    [reg] = await inbox(stub, INSTITUTION, f"fund-{t}")
    assert "investor" in reg.body


async def test_receivable_changes_tell_the_debtor_whom_to_pay_and_each_party_what_concerns_it(
    stub, bootstrap: str  # noqa: ANN001
) -> None:
    """ReceivableChanged events as the demand service publishes them (its own mapping, from its pure
    core): the debtor is asked to confirm, told the financier is the payee now, and prompted to
    pay it; the supplier hears of the confirmation and the financing; the financier of the
    application and the financing."""
    t = uid()
    supplier, debtor, bank = f"S{t}", f"D{t}", f"factor-{t}"
    now = datetime.now(UTC)
    upload = rd.Upload(request_id=t, supplier_uscc=supplier, debtor_uscc=debtor, document_kind=3,
                       document_number=f"INV-{t}", document_date=f"{now.date() - timedelta(days=5)}",
                       face_amount_fen=125_000_000, due_date=f"{now.date() + timedelta(days=7)}", uploaded_by=1)
    x = rd.register(upload, receivable_id=f"rcv-{t}", now=now)
    steps = [(x, rd.Change.UPLOADED, 0)]
    x = rd.confirm(x, debtor_uscc=debtor, amount_fen=0, at=now)[0]
    steps.append((x, rd.Change.CONFIRMED, 0))
    x = rd.request_financing(x, supplier_uscc=supplier, institution_id=bank, amount_fen=100_000_000,
                             kind=rd.FinancingKind.ASSIGNMENT, today=now.date(), at=now)
    steps.append((x, rd.Change.FINANCING_REQUESTED, 0))
    x = rd.decide_financing(x, institution_id=bank, approve=True, rate_bps=420, decline_reason="", today=now.date(),
                            at=now)
    steps.append((x, rd.Change.FINANCED, 0))
    x, [(change, days)] = rd.mature(x, today=now.date(), at=now)
    steps.append((x, change, days))
    for receivable, change, days in steps:
        await publish(bootstrap, topics.RECEIVABLES_CHANGED, rmap.changed(receivable, change, days))

    told = (await inbox(stub, ENTERPRISE, debtor, want=3))[::-1]  # oldest first
    assert [n.title.split(": ", 1)[1] for n in told] == [
        "please confirm or dispute it", "financed: pay the new payee", "payment due"]
    assert f"The payee is {bank}." in told[1].body and f"Due in 7 day(s): pay {bank}." in told[2].body
    assert "1,250,000 yuan" in told[0].body
    zh = await inbox(stub, ENTERPRISE, debtor, want=3, metadata=(("accept-language", "zh-CN"),))
    assert f"7 天后到期：请向 {bank} 付款。" in zh[0].body  # the newest
    assert [n.title.split(": ", 1)[1] for n in await inbox(stub, ENTERPRISE, supplier, want=2)] == [
        "financed: pay the new payee", "confirmed by the debtor"]
    assert [n.title.split(": ", 1)[1] for n in await inbox(stub, INSTITUTION, bank, want=2)] == [
        "financed: pay the new payee", "financing applied for"]


async def test_a_loan_renewal_warning_reaches_the_enterprise_and_its_lender(stub, bootstrap: str) -> None:  # noqa: ANN001
    t = uid()
    await publish(bootstrap, topics.LOAN_RENEWALS_DUE, LoanRenewalDue(
        lead_id=f"l-{t}", demand_id=f"d-{t}", enterprise_uscc=f"E{t}", institution_id=f"bank-{t}",
        amount_fen=300_000_000, rate_bps=385, term_months=12, matures_on="2027-11-28", days_to_maturity=30,
        first_loan=True))
    [enterprise] = await inbox(stub, ENTERPRISE, f"E{t}")
    [lender] = await inbox(stub, INSTITUTION, f"bank-{t}")
    assert enterprise.kind == lender.kind == "loan.renewal_due" and enterprise.lead_id == f"l-{t}"
    assert "matures on 2027-11-28, in 30 day(s)" in enterprise.body and "renewal" in enterprise.body
    assert "Contact the enterprise" in lender.body
