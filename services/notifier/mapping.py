"""Protobuf ⇄ domain, in one place."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from finmesh.matching.v1 import events_pb2 as matching
from finmesh.notification.v1 import notification_pb2 as pb
from services.notifier.domain import LeadRef, MatchOutcome, Notification


def _when(ts: Timestamp) -> datetime | None:
    return ts.ToDatetime(tzinfo=UTC) if (ts.seconds or ts.nanos) else None


def match_outcome(msg: matching.DemandMatched) -> MatchOutcome:
    return MatchOutcome(
        demand_id=msg.demand_id,
        enterprise_uscc=msg.enterprise_uscc,
        leads=tuple(
            LeadRef(lead_id=lead.lead_id, institution_id=lead.institution_id, product_id=lead.product_id,
                    score=lead.score, rank=lead.rank, contact_due_at=_when(lead.contact_due_at))
            for lead in msg.leads
        ),
        no_match_explanation=msg.no_match_explanation,
    )


def notification_pb(note: Notification, language: str = "en") -> pb.Notification:
    title, body = note.text(language)
    out = pb.Notification(
        notification_id=note.notification_id, recipient_kind=int(note.recipient_kind),
        recipient_id=note.recipient_id, kind=note.kind, title=title, body=body,
        demand_id=note.demand_id, lead_id=note.lead_id, read=note.read,
    )
    out.created_at.FromDatetime(note.created_at)
    return out
