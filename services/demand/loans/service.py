"""The loan book's use cases: following each loan approved or disbursed on a lead (from the
leads' status changes; its interest subsidy with it), keeping the loans disbursed, and warning of
their maturity 30 days before, so that the enterprise and its lender can arrange a renewal in time
(``LoanRenewalDue``, through the outbox)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from finmesh.lead.v1 import events_pb2 as lead_events
from finmesh.lead.v1 import lead_pb2
from finmesh.loan.v1 import events_pb2 as loan_events
from meshkit import ids, inbox, outbox, topics
from meshkit.clock import Clock
from meshkit.errors import NotFound, PermissionDenied, Unavailable, require
from meshkit.lifecycle import drain, every
from meshkit.pbtime import set_ts
from services.demand import store as demand_store
from services.demand.domain import LeadStatus
from services.demand.loans import domain as ln
from services.demand.loans import store
from services.demand.subsidies import domain as sd
from services.demand.subsidies.service import Subsidies

CONSUMER = "loan-outcomes"


def renewal_due(loan: ln.Loan, days_to_maturity: int) -> loan_events.LoanRenewalDue:
    out = loan_events.LoanRenewalDue(
        lead_id=loan.lead_id, demand_id=loan.demand_id, enterprise_uscc=loan.enterprise_uscc,
        institution_id=loan.institution_id, amount_fen=loan.amount_fen, rate_bps=loan.rate_bps,
        term_months=loan.term_months, matures_on=loan.matures_on.isoformat(), days_to_maturity=days_to_maturity,
        first_loan=loan.first_loan)
    set_ts(out.disbursed_at, loan.disbursed_at)
    return out


@dataclass(frozen=True)
class Settlement:
    """What a lender's report of a loan repaid did: the loan's grant (None: it had none), when the
    loan book first recorded it repaid (None: no disbursed loan of that lead is in the book), and
    whether this report changed anything."""

    grant: sd.Grant | None
    loan_settled_at: datetime | None
    changed: bool


class Loans:
    def __init__(self, pool: asyncpg.Pool, subsidies: Subsidies, *, schema: str, clock: Clock) -> None:
        self.pool = pool
        self.subsidies = subsidies
        self.schema = schema
        self.clock = clock

    async def lead_changed(self, event_id: str, event: lead_events.LeadStatusChanged) -> None:
        """A loan approved or disbursed on a lead: its subsidy granted or used, and, disbursed, the
        loan joins the book; in one transaction, once per event (and once per lead)."""
        lead = event.lead
        if lead.status not in (lead_pb2.LEAD_STATUS_APPROVED, lead_pb2.LEAD_STATUS_DISBURSED):
            return
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            if not await inbox.claim(conn, CONSUMER, event_id):
                return
            demand = await demand_store.load_demand(conn, lead.demand_id)
            if demand is None:
                return
            await self.subsidies.on_lead(conn, lead, demand, now)
            if lead.status != lead_pb2.LEAD_STATUS_DISBURSED or not lead.offer.term_months:
                return
            disbursed = lead.disbursement
            at = disbursed.disbursed_at.ToDatetime(tzinfo=UTC) if disbursed.HasField("disbursed_at") else now
            await store.record(conn, ln.Loan(
                lead_id=lead.lead_id, demand_id=lead.demand_id, enterprise_uscc=demand.enterprise.uscc,
                institution_id=lead.institution_id, amount_fen=disbursed.amount_fen, rate_bps=lead.offer.rate_bps,
                term_months=lead.offer.term_months, disbursed_at=at,
                first_loan=demand.request.first_loan or not demand.enterprise.has_borrowed))

    async def settled(self, institution_id: str, lead_id: str) -> Settlement:
        """The lender reports the loan of ``lead_id`` repaid, at maturity or early: in one transaction
        the loan leaves the renewal watch and its grant, if any, releases its quota."""
        require("lead_id", lead_id)
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            loan = await store.lender_locked(conn, lead_id)
            if loan is not None and loan[0] != institution_id:
                raise PermissionDenied(f"lead {lead_id} is not a lead of {institution_id}")
            grant, released = await self.subsidies.settle(conn, institution_id, lead_id, now)
            if loan is None:  # booked meanwhile? the grant's lock waited for the transaction that books it
                loan = await store.lender_locked(conn, lead_id)
            if loan is None and await store.lead_lender(conn, lead_id, int(LeadStatus.DISBURSED)) == institution_id:
                raise Unavailable(f"the loan of lead {lead_id} is disbursed but not in the loan book yet: retry in a "
                                  "moment")
            if loan is None and grant is None:
                raise NotFound(f"lead {lead_id!r} has no disbursed loan in the book and no subsidy")
            if loan is not None and loan[1] is None:
                await store.mark_settled(conn, lead_id, now)
                return Settlement(grant, now, changed=True)
        return Settlement(grant, loan[1] if loan else None, changed=released)

    async def warn_due(self, *, limit: int = 200) -> int:
        """One batch of renewal warnings due today; returns how many were sent. Safe with several
        replicas (rows locked, others skipped)."""
        now = self.clock()
        today = now.date()
        async with self.pool.acquire() as conn, conn.transaction():
            due = await store.due_for_warning(conn, today, limit)
            warn = [loan for loan in due if loan.matures_on >= today]  # one matured already (reported late): moot
            if warn:
                await outbox.append_many(conn, [
                    (topics.LOAN_RENEWALS_DUE, renewal_due(loan, (loan.matures_on - today).days),
                     ids.event_id("loan-renewal-due", loan.lead_id)) for loan in warn],
                    schema=self.schema, occurred_at=now)
            await store.warned(conn, [loan.lead_id for loan in due], now)
        return len(due)

    async def run_warnings(self, interval_seconds: float) -> None:
        """The background task: renewal warnings every ``interval_seconds``, until cancelled."""
        await every(interval_seconds, lambda: drain(self.warn_due), "loan renewal warnings")
