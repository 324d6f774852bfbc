"""Subsidy funds' use cases: creating funds, and granting, using and releasing subsidies from the
leads' outcomes (``LeadStatusChanged``, this service's own events, handed over by the loan book:
:class:`services.demand.loans.service.Loans`) without any application. Each change of a grant, its
fund's ledger and its ``GrantChanged`` are written in the caller's transaction."""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg

from finmesh.lead.v1 import lead_pb2
from meshkit import ids, log, outbox, topics
from meshkit.clock import Clock
from meshkit.errors import AlreadyExists, NotFound, PermissionDenied, Violations, require
from meshkit.lifecycle import drain, every
from meshkit.metrics import Metrics
from services.demand.domain import Demand
from services.demand.subsidies import domain as s
from services.demand.subsidies import mapping, store

logger = log.get(__name__)



def grant_id(lead_id: str) -> str:
    return ids.stable_id("subsidy-grant", lead_id)


class Subsidies:
    def __init__(self, pool: asyncpg.Pool, metrics: Metrics, *, schema: str, clock: Clock) -> None:
        self.pool = pool
        self.metrics = metrics
        self.schema = schema
        self.clock = clock

    async def create_fund(self, f: s.Fund) -> tuple[s.Fund, bool]:
        s.validate(f)
        async with self.pool.acquire() as conn, conn.transaction():
            created = await store.insert_fund(conn, f, self.clock())
            stored = await store.fund(conn, f.fund_id)
        assert stored is not None
        if not created and stored.terms() != f.terms():
            raise AlreadyExists(f"fund {f.fund_id} exists with other terms")
        return stored, created

    async def get_fund(self, fund_id: str) -> s.Fund:
        require("fund_id", fund_id)
        f = await store.fund(self.pool, fund_id)
        if f is None:
            raise NotFound(f"no subsidy fund with id {fund_id!r}")
        return f

    async def list_funds(self, limit: int, offset: int) -> list[s.Fund]:
        return await store.funds(self.pool, limit=limit, offset=offset)

    async def list_grants(self, *, fund_id: str, enterprise_uscc: str, status: int, limit: int, offset: int
                          ) -> list[s.Grant]:
        v = Violations()
        v.check(status == 0 or status in s.GrantStatus._value2member_map_, "status", "is not a known status")
        v.raise_if_any()
        return await store.grants(self.pool, fund_id=fund_id.strip(), enterprise_uscc=enterprise_uscc.strip().upper(),
                                  status=status, limit=limit, offset=offset)

    async def _save(self, conn: asyncpg.Connection, g: s.Grant, f: s.Fund, now: datetime) -> None:
        await store.save_grant(conn, g)
        await store.save_ledger(conn, f)
        await outbox.append_many(conn, [(topics.SUBSIDY_GRANTS_CHANGED, mapping.changed(g, f),
                                         ids.event_id("subsidy-grant-changed", g.grant_id, g.status.name))],
                                 schema=self.schema, occurred_at=now)
        self.metrics.subsidy_grants.labels(g.status.name.lower()).inc()

    async def on_lead(self, conn: asyncpg.Connection, lead: lead_pb2.Lead, demand: Demand, now: datetime) -> None:
        """A loan's outcome, in the caller's transaction (:meth:`Loans.lead_changed`): approved → a
        grant if a fund fits and has room; disbursed → the grant used (granted now if the approval
        made none). An approved lead can only be disbursed next (the lead life cycle), so a
        reservation ends by disbursal (or lapses)."""
        disbursed = lead.status == lead_pb2.LEAD_STATUS_DISBURSED
        current = await store.grant_of_lead(conn, lead.lead_id, lock=True)
        if current is None:
            current = await self._grant(conn, lead, demand, now)
            if current is None:
                return
        if disbursed and current.status == s.GrantStatus.RESERVED:
            f = await self._fund_locked(conn, current.fund_id)
            await self._save(conn, *s.disbursed(current, f, lead.disbursement.amount_fen, now=now), now)
        elif disbursed and current.status == s.GrantStatus.RELEASED and current.reason.endswith(s.LAPSED):
            logger.warning("loan disbursed after its subsidy reservation lapsed: no subsidy", lead_id=lead.lead_id)
            self.metrics.subsidy_grants.labels("disbursed_after_lapse").inc()

    async def _grant(self, conn: asyncpg.Connection, lead: lead_pb2.Lead, demand: Demand, now: datetime
                     ) -> s.Grant | None:
        offer = lead.offer
        if not offer.amount_fen or not offer.term_months:
            return None
        e = demand.enterprise  # as it was when it asked: a first loan stays one once disbursed
        loan = s.Loan(lead_id=lead.lead_id, demand_id=lead.demand_id, enterprise_uscc=e.uscc,
                      institution_id=lead.institution_id, amount_fen=offer.amount_fen, term_months=offer.term_months,
                      region_code=e.region_code, key_industry=e.key_industry,
                      has_borrowed=e.has_borrowed and not demand.request.first_loan)
        made = None
        # Candidates are read without locks; only the fund chosen is locked (and checked again), in id
        # order, so grants to different funds go on at once and lock orders never cross.
        for candidate in sorted(await store.funds(conn), key=lambda f: f.fund_id):
            if s.grant([candidate], loan, grant_id="", now=now) is None:
                continue
            made = s.grant([await self._fund_locked(conn, candidate.fund_id)], loan, grant_id=grant_id(lead.lead_id),
                           now=now)
            if made is not None:
                break
        if made is None:
            self.metrics.subsidy_grants.labels("none").inc()
            return None
        await self._save(conn, *made, now)
        logger.info("subsidy granted", lead_id=lead.lead_id, fund_id=made[0].fund_id, subsidy_fen=made[0].subsidy_fen)
        return made[0]

    async def _fund_locked(self, conn: asyncpg.Connection, fund_id: str) -> s.Fund:
        f = await store.fund(conn, fund_id, lock=True)
        assert f is not None, f"the fund {fund_id} of a grant is gone"  # a foreign key holds it
        return f

    async def lapse_due(self, *, limit: int = 200) -> int:
        """One batch of reservations lapsed (loans approved :data:`domain.RESERVATION_DAYS` ago and
        not disbursed); returns how many. Safe with several replicas."""
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            due = await store.reserved_before(conn, now - timedelta(days=s.RESERVATION_DAYS), limit)
            for g in sorted(due, key=lambda x: x.fund_id):  # funds locked in id order, as grants lock them
                await self._save(conn, *s.lapsed(g, await self._fund_locked(conn, g.fund_id), now=now), now)
        return len(due)

    async def run_lapses(self, interval_seconds: float) -> None:
        await every(interval_seconds, lambda: drain(self.lapse_due), "subsidy reservation lapses")

    async def settle(self, conn: asyncpg.Connection, institution_id: str, lead_id: str,
                     now: datetime) -> tuple[s.Grant | None, bool]:
        """The lender reports the loan of ``lead_id`` repaid (in the caller's transaction): its
        grant's quota is released for reuse. Returns the grant (None: the loan had none) and whether
        this report released it."""
        g = await store.grant_of_lead(conn, lead_id, lock=True)
        if g is None:
            return None, False
        if g.loan.institution_id != institution_id:
            raise PermissionDenied(f"lead {lead_id} is not a lead of {institution_id}")
        if g.status == s.GrantStatus.RELEASED:
            return g, False
        f = await self._fund_locked(conn, g.fund_id)
        released, f = s.settled(g, f, now=now)
        await self._save(conn, released, f, now)
        return released, True
