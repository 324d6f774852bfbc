"""Protobuf ⇄ domain, in one place."""

from __future__ import annotations

import json
import uuid
from datetime import datetime

from finmesh.demand.v1 import demand_pb2 as dpb
from finmesh.demand.v1 import events_pb2 as demand_events
from finmesh.lead.v1 import events_pb2 as lead_events
from finmesh.lead.v1 import lead_pb2
from finmesh.loan.v1 import events_pb2 as loan
from finmesh.matching.v1 import events_pb2 as matching
from finmesh.notification.v1 import clock_pb2 as cpb
from finmesh.notification.v1 import delivery_pb2 as dlv
from finmesh.notification.v1 import notification_pb2 as pb
from finmesh.receivable.v1 import events_pb2 as receivable
from finmesh.receivable.v1 import receivable_pb2
from finmesh.roadshow.v1 import events_pb2 as roadshow
from meshkit.pbtime import set_ts, ts_to_dt
from services.notifier.domain import (
    DemandChange,
    LeadChange,
    LeadClock,
    LeadRef,
    MatchOutcome,
    Notification,
    Policy,
    ReceivableChange,
    RecipientKind,
    RenewalDue,
    RoadshowNotice,
)


def _name(enum: object, value: int, prefix: str) -> str:
    try:
        return enum.Name(value).removeprefix(prefix)  # type: ignore[attr-defined]
    except ValueError:
        return ""


def match_outcome(msg: matching.DemandMatched) -> MatchOutcome:
    origins = {_name(lead_pb2.LeadOrigin, lead.origin, "LEAD_ORIGIN_") for lead in msg.leads}
    return MatchOutcome(
        demand_id=msg.demand_id,
        enterprise_uscc=msg.enterprise_uscc,
        leads=tuple(
            LeadRef(lead_id=lead.lead_id, institution_id=lead.institution_id, product_id=lead.product_id,
                    score=lead.score, rank=lead.rank, contact_due_at=ts_to_dt(lead.contact_due_at))
            for lead in msg.leads
        ),
        no_match_explanation=msg.no_match_explanation,
        additional=msg.additional,
        hints=tuple(h.text for h in msg.hints if h.text),
        origin=origins.pop() if len(origins) == 1 else "",
    )


def demand_change(msg: demand_events.DemandStatusChanged, occurred_at: datetime) -> DemandChange:
    return DemandChange(
        demand_id=msg.demand_id, enterprise_uscc=msg.enterprise_uscc,
        status=_name(dpb.DemandStatus, msg.change.status, "DEMAND_STATUS_"), seq=msg.seq,
        reason=msg.change.reason, channel=_name(dpb.Channel, msg.channel, "CHANNEL_"),
        at=ts_to_dt(msg.change.at) or occurred_at,
    )


def lead_change(msg: lead_events.LeadStatusChanged, occurred_at: datetime) -> LeadChange:
    lead = msg.lead
    return LeadChange(
        lead_id=lead.lead_id, demand_id=lead.demand_id, institution_id=lead.institution_id,
        product_id=lead.product_id, status=_name(lead_pb2.LeadStatus, msg.change.status or lead.status,
                                                 "LEAD_STATUS_"),
        seq=msg.seq, reason=msg.change.reason, at=ts_to_dt(msg.change.at) or occurred_at,
        origin=_name(lead_pb2.LeadOrigin, lead.origin, "LEAD_ORIGIN_"),
        contacted_at=ts_to_dt(lead.contact.contacted_at) if lead.HasField("contact") else None,
        enterprise_uscc=msg.enterprise_uscc,
    )


def roadshow_notice(msg: roadshow.RoadshowNotice, occurred_at: datetime) -> RoadshowNotice:
    kind = msg.recipient_kind if msg.recipient_kind in RecipientKind._value2member_map_ else 0
    return RoadshowNotice(
        notice_id=msg.notice_id, roadshow_id=msg.roadshow_id,
        kind=_name(roadshow.NoticeKind, msg.kind, "NOTICE_KIND_") if msg.kind else "",
        recipient_kind=RecipientKind(kind), recipient_id=msg.recipient_id, title=msg.roadshow_title,
        city=msg.city, held_at=ts_to_dt(msg.held_at), reason=msg.reason,
        issued_at=ts_to_dt(msg.issued_at) or occurred_at,
    )


MATURITY_PASS = "demand"  # the actor of a receivable's change made by the demand service's maturity pass


def receivable_change(msg: receivable.ReceivableChanged, occurred_at: datetime) -> ReceivableChange:
    r = msg.receivable
    last = r.financings[-1] if r.financings else None
    live = last is not None and (last.approved or not last.HasField("decided_at"))
    change = _name(receivable.ChangeKind, msg.change, "CHANGE_KIND_") if msg.change else ""
    if change == "UPLOADED" and r.uploaded_by == receivable_pb2.PARTY_DEBTOR:
        change = "REGISTERED_BY_DEBTOR"  # confirmed at once: nothing to ask the debtor
    if change == "FINANCING_DECLINED" and r.history and r.history[-1].actor == MATURITY_PASS:
        change = "FINANCING_LAPSED"  # not the financier's decision: it is told too
    if change in ("FINANCING_LAPSED", "FINANCING_WITHDRAWN"):
        live = last is not None  # the institution applied to hears of it
    return ReceivableChange(
        receivable_id=r.receivable_id, version=r.version, change=change,
        document_number=r.document_number, amount_fen=r.confirmed_amount_fen or r.face_amount_fen,
        supplier_uscc=r.supplier_uscc, debtor_uscc=r.debtor_uscc, due_date=r.due_date, current_payee=r.current_payee,
        financier=last.institution_id if live and last is not None else "",
        reason=r.history[-1].reason if r.history else "", days_to_due=msg.days_to_due, at=occurred_at,
    )


def renewal_due(msg: loan.LoanRenewalDue, occurred_at: datetime) -> RenewalDue:
    return RenewalDue(lead_id=msg.lead_id, enterprise_uscc=msg.enterprise_uscc, institution_id=msg.institution_id,
                      amount_fen=msg.amount_fen, rate_bps=msg.rate_bps, term_months=msg.term_months,
                      matures_on=msg.matures_on, days=msg.days_to_maturity, first_loan=msg.first_loan, at=occurred_at)


def notification_pb(note: Notification, language: str = "en") -> pb.Notification:
    title, body = note.text(language)
    out = pb.Notification(
        notification_id=note.notification_id, recipient_kind=int(note.recipient_kind),
        recipient_id=note.recipient_id, kind=note.kind, title=title, body=body,
        demand_id=note.demand_id, lead_id=note.lead_id, read=note.read,
    )
    out.created_at.FromDatetime(note.created_at)
    return out


def sla_breached(clock: LeadClock, at: datetime) -> matching.LeadSlaBreached:
    out = matching.LeadSlaBreached(lead_id=clock.lead_id, demand_id=clock.demand_id,
                                   institution_id=clock.institution_id)
    out.contact_due_at.FromDatetime(clock.due_at)
    out.breached_at.FromDatetime(at)
    return out


_STATES = {"running": cpb.CLOCK_STATE_RUNNING, "stopped": cpb.CLOCK_STATE_STOPPED,
           "breached": cpb.CLOCK_STATE_BREACHED}


def clock_pb(c: LeadClock) -> cpb.LeadClock:
    out = cpb.LeadClock(lead_id=c.lead_id, demand_id=c.demand_id, institution_id=c.institution_id,
                        product_id=c.product_id, sla_hours=c.sla_hours, state=_STATES[c.state],
                        stopped_by=c.stopped_by, escalation_contact=c.escalation_contact, sla_source=c.sla_source)
    for field in ("delivered_at", "remind_at", "due_at", "reminded_at", "breached_at", "stopped_at"):
        set_ts(getattr(out, field), getattr(c, field))
    return out


def policy_from_pb(p: cpb.ContactPolicy) -> Policy:
    return Policy(institution_id=p.institution_id.strip(), product_id=p.product_id.strip(), sla_hours=p.sla_hours,
                  escalation_contact=p.escalation_contact.strip())


def policy_pb(p: Policy) -> cpb.ContactPolicy:
    out = cpb.ContactPolicy(institution_id=p.institution_id, product_id=p.product_id, sla_hours=p.sla_hours,
                            escalation_contact=p.escalation_contact)
    set_ts(out.updated_at, p.updated_at)
    return out


DELIVERY_STATUS = {"pending": dlv.DELIVERY_STATUS_PENDING, "delivered": dlv.DELIVERY_STATUS_DELIVERED,
                   "dead": dlv.DELIVERY_STATUS_DEAD}
DELIVERY_STATUS_NAMES = {v: k for k, v in DELIVERY_STATUS.items()}


def delivery_pb(r: dict) -> dlv.Delivery:
    status = r["status"]
    out = dlv.Delivery(delivery_id=str(r["delivery_id"]), webhook_id=str(r["webhook_id"]),
                       institution_id=r["institution_id"], notification_id=str(r["notification_id"]), kind=r["kind"],
                       status=DELIVERY_STATUS[status], attempts=r["attempts"], dead_reason=r["dead_reason"])
    set_ts(out.created_at, r["created_at"])
    set_ts(out.delivered_at, r["delivered_at"])
    if status == "pending":
        set_ts(out.next_attempt_at, r["next_attempt_at"])
    for a in json.loads(r["history"]):
        h = out.history.add(attempt=a["attempt"], ok=a["ok"], http_status=a["http_status"], error=a["error"],
                            duration_ms=a["duration_ms"])
        h.at.FromDatetime(datetime.fromisoformat(a["at"]))
    return out


def webhook_pb(webhook_id: str, institution_id: str, url: str, created_at: datetime) -> dlv.Webhook:
    out = dlv.Webhook(webhook_id=webhook_id, institution_id=institution_id, url=url)
    out.created_at.FromDatetime(created_at)
    return out


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
