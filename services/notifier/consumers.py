"""Kafka consumers of the notifier: thin — decode, check, delegate to the use cases."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from finmesh.demand.v1 import events_pb2 as demand_events
from finmesh.lead.v1 import events_pb2 as lead_events
from finmesh.loan.v1 import events_pb2 as loan
from finmesh.matching.v1 import events_pb2 as matching
from finmesh.receivable.v1 import events_pb2 as receivable
from finmesh.roadshow.v1 import events_pb2 as roadshow
from meshkit import codec, institutions, log
from meshkit.kafka import BatchHandler, Handler
from services.notifier import domain, mapping
from services.notifier.service import Notifier

logger = log.get(__name__)
T = TypeVar("T")


def demand_matched(notifier: Notifier, name: str) -> Handler:
    """``matcher.demand-matched.v1`` → the enterprise's notice (matched, re-matched or why not) and
    one per institution with a lead."""

    async def handle(env: codec.Envelope) -> None:
        assert isinstance(env.message, matching.DemandMatched)
        outcome = mapping.match_outcome(env.message)
        wrong = domain.problems(outcome)
        if wrong:
            raise codec.PoisonMessage("unusable DemandMatched: " + "; ".join(wrong))
        await notifier.on_match(name, env.event_id, outcome, env.occurred_at)

    return handle


def demand_matched_batch(notifier: Notifier, name: str) -> BatchHandler:
    """The same as :func:`demand_matched` for a whole fetch, in one transaction; an unusable record
    makes the batch raise PoisonMessage and the consumer falls back to one record at a time."""

    async def handle(envs: list[codec.Envelope]) -> None:
        items = []
        for env in envs:
            outcome = mapping.match_outcome(env.message)  # type: ignore[arg-type]
            if domain.problems(outcome):
                raise codec.PoisonMessage("unusable DemandMatched in batch")
            items.append((env.event_id, outcome, env.occurred_at))
        await notifier.on_matches(name, items)

    return handle


def demand_status_changed(notifier: Notifier, name: str) -> Handler:
    """``demand.demand-status-changed.v1`` → received, needs info, withdrawn, expired, funded…"""

    async def handle(env: codec.Envelope) -> None:
        assert isinstance(env.message, demand_events.DemandStatusChanged)
        change = mapping.demand_change(env.message, env.occurred_at)
        if not change.demand_id or not change.status:
            raise codec.PoisonMessage("unusable DemandStatusChanged: demand_id or change.status is empty")
        await notifier.on_demand_change(name, env.event_id, change)

    return handle


def _checked(message_type: type, to_domain: Callable[[Any, datetime], T], problems: Callable[[T], list[str]],
             use: Callable[[str, T], Awaitable[None]]) -> Handler:
    """A handler that maps each record to the core's terms, dead-letters it with the reasons if the
    core cannot use it, and hands it over with its event id."""

    async def handle(env: codec.Envelope) -> None:
        assert isinstance(env.message, message_type)
        item = to_domain(env.message, env.occurred_at)
        wrong = problems(item)
        if wrong:
            raise codec.PoisonMessage(f"unusable {message_type.__name__}: " + "; ".join(wrong))
        await use(env.event_id, item)

    return handle


def lead_status_changed(notifier: Notifier, name: str) -> Handler:
    """``demand.lead-status-changed.v1`` → contact clocks started and stopped; outcome notices."""
    return _checked(lead_events.LeadStatusChanged, mapping.lead_change, domain.lead_change_problems,
                    lambda event_id, change: notifier.on_lead_change(name, event_id, change))


def roadshow_notice(notifier: Notifier, name: str) -> Handler:
    """``roadshow.notice-issued.v1`` → a notice in the recipient's inbox (and webhooks for institutions)."""
    return _checked(roadshow.RoadshowNotice, mapping.roadshow_notice, domain.notice_problems,
                    lambda event_id, notice: notifier.on_notice(name, event_id, notice))


def receivable_changed(notifier: Notifier, name: str) -> Handler:
    """``demand.receivable-changed.v1`` → the debtor asked to confirm and prompted to pay (and told
    whom), the supplier and the financier told of what concerns them."""
    return _checked(receivable.ReceivableChanged, mapping.receivable_change, domain.receivable_problems,
                    lambda event_id, change: notifier.on_receivable(name, event_id, change))


def loan_renewal_due(notifier: Notifier, name: str) -> Handler:
    """``demand.loan-renewal-due.v1`` → the enterprise and its lender told a loan matures soon."""
    return _checked(loan.LoanRenewalDue, mapping.renewal_due, domain.renewal_problems,
                    lambda event_id, due: notifier.on_renewal_due(name, event_id, due))


def institution_changed(notifier: Notifier) -> Handler:
    """``demand.institution-changed.v1`` (compacted) → the institution's own contact SLA and the digest of
    its API key (latest version wins)."""

    async def handle(env: codec.Envelope) -> None:
        # 0 = the institution set no SLA: kept as 0, so the clock says "default" rather than "institution".
        await notifier.on_institution(institutions.announced(env))

    return handle
