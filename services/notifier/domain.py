"""The pure core of the notifier: which notifications an event gives rise to, and their texts.

No I/O and no protobuf. Each notification's id is derived from the fact it announces and its
recipient, so handling the same fact twice yields the same notification (stored once).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum

from meshkit.errors import Violations
from meshkit.ids import stable_id
from services.notifier import templates

DEMAND_MATCHED = "demand.matched"
DEMAND_NO_MATCH = "demand.no_match"
LEAD_ISSUED = "lead.issued"

DEFAULT_SLA_DAYS = 3  # "on average, financial institutions contact enterprises within 3 days"


class RecipientKind(IntEnum):
    """Mirrors ``finmesh.notification.v1.RecipientKind``."""

    UNSPECIFIED = 0
    ENTERPRISE = 1
    INSTITUTION = 2

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class LeadRef:
    """What the notifier needs of one lead."""

    lead_id: str
    institution_id: str
    product_id: str
    score: int
    rank: int
    contact_due_at: datetime | None = None


@dataclass(frozen=True)
class MatchOutcome:
    """The outcome of matching one demand: its leads, or why there are none."""

    demand_id: str
    enterprise_uscc: str
    leads: tuple[LeadRef, ...]
    no_match_explanation: str = ""


@dataclass(frozen=True)
class Notification:
    notification_id: str
    recipient_kind: RecipientKind
    recipient_id: str
    kind: str
    title: str
    body: str
    title_zh: str
    body_zh: str
    created_at: datetime
    demand_id: str = ""
    lead_id: str = ""
    read: bool = False

    def text(self, language: str) -> tuple[str, str]:
        """(title, body) in ``language`` ("zh…" gives Chinese, anything else English)."""
        return (self.title_zh, self.body_zh) if language.startswith("zh") else (self.title, self.body)


def notification_id(fact: str, kind: RecipientKind, recipient_id: str) -> str:
    return stable_id("notification", fact, f"{kind.label}:{recipient_id}")


def _compose(fact: str, kind: RecipientKind, recipient_id: str, what: str, at: datetime, *,
             demand_id: str = "", lead_id: str = "", **fields: object) -> Notification:
    fields = {"demand_id": demand_id, "lead_id": lead_id, **fields}
    title, body = templates.render(what, "en", **fields)
    title_zh, body_zh = templates.render(what, "zh", **fields)
    return Notification(
        notification_id=notification_id(fact, kind, recipient_id), recipient_kind=kind, recipient_id=recipient_id,
        kind=what, title=title, body=body, title_zh=title_zh, body_zh=body_zh, created_at=at,
        demand_id=demand_id, lead_id=lead_id,
    )


def problems(outcome: MatchOutcome) -> list[str]:
    """Why an outcome cannot be notified (empty if it can)."""
    out = []
    if not outcome.demand_id:
        out.append("demand_id is empty")
    if not outcome.enterprise_uscc:
        out.append("enterprise_uscc is empty")
    for i, lead in enumerate(outcome.leads):
        if not lead.lead_id or not lead.institution_id:
            out.append(f"leads[{i}] lacks its lead_id or institution_id")
    return out


def for_match(outcome: MatchOutcome, at: datetime, *, sla_days: int = DEFAULT_SLA_DAYS) -> list[Notification]:
    """One notification for the enterprise, and one for each institution that received a lead.

    The enterprise's fact is the demand and the set of leads it was told about, so a re-match
    with other leads is news again, while the same outcome replayed is not.
    """
    assert not problems(outcome), problems(outcome)
    notes: list[Notification] = []
    if outcome.leads:
        leads_digest = hashlib.sha256("|".join(sorted(lead.lead_id for lead in outcome.leads)).encode()).hexdigest()
        notes.append(_compose(
            f"{DEMAND_MATCHED}:{outcome.demand_id}:{leads_digest[:16]}", RecipientKind.ENTERPRISE,
            outcome.enterprise_uscc, DEMAND_MATCHED, at, demand_id=outcome.demand_id,
            leads=len(outcome.leads), sla_days=sla_days,
        ))
    else:
        notes.append(_compose(
            f"{DEMAND_NO_MATCH}:{outcome.demand_id}", RecipientKind.ENTERPRISE, outcome.enterprise_uscc,
            DEMAND_NO_MATCH, at, demand_id=outcome.demand_id,
            explanation=outcome.no_match_explanation or "no eligible product",
        ))
    for lead in outcome.leads:
        due = lead.contact_due_at.strftime("%Y-%m-%d %H:%M UTC") if lead.contact_due_at else f"{sla_days} days"
        notes.append(_compose(
            f"{LEAD_ISSUED}:{lead.lead_id}", RecipientKind.INSTITUTION, lead.institution_id, LEAD_ISSUED, at,
            demand_id=outcome.demand_id, lead_id=lead.lead_id,
            product_id=lead.product_id, score=lead.score, rank=lead.rank, contact_due=due,
        ))
    return notes


def validate_query(recipient_kind: int, recipient_id: str) -> None:
    """Raise ValidationFailed naming every missing or wrong field of an inbox query."""
    v = Violations()
    if recipient_kind not in (RecipientKind.ENTERPRISE, RecipientKind.INSTITUTION):
        v.add("recipient_kind", "is required: RECIPIENT_KIND_ENTERPRISE or RECIPIENT_KIND_INSTITUTION")
    v.check(bool(recipient_id.strip()), "recipient_id", "is required: a USCC or an institution id")
    v.raise_if_any()
