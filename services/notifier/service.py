"""The notifier's use cases: record notifications (and their webhook deliveries) once per fact,
run the contact clocks, keep policies and webhooks. Shared by the Kafka consumers, the gRPC
servicers and the background tasks; time comes from an injectable :class:`Clock`.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from finmesh.institution.v1.events_pb2 import InstitutionChanged
from finmesh.notification.v1.events_pb2 import ContactPolicyChanged
from meshkit import apikeys, codec, ids, inbox, institutions, log, outbox, topics
from meshkit.clock import Clock
from meshkit.errors import NotFound, PermissionDenied
from meshkit.lifecycle import drain, every
from meshkit.metrics import Metrics
from meshkit.paging import Page
from services.notifier import domain, mapping, store
from services.notifier.domain import LeadChange, LeadClock, Notification, Policy, RecipientKind

logger = log.get(__name__)

class Signal:
    """Wakes every waiter (delivery worker, Subscribe streams) when something new was recorded."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            pass


WEBHOOK_SECRET_HEADER = "x-webhook-secret"


@dataclass(frozen=True)
class Caller:
    """An institution's credentials as a call carries them: its API key and its webhook secret."""

    api_key: str = ""
    secret: str = ""


class Notifier:
    def __init__(self, pool: asyncpg.Pool, metrics: Metrics, clock: Clock, *, schema: str) -> None:
        self.pool = pool
        self.metrics = metrics
        self.clock = clock
        self.schema = schema
        self.recorded = Signal()
        self.deliveries_due = Signal()

    # -- recording -------------------------------------------------------------------------------------------

    async def record(self, conn: asyncpg.Connection, notes: list[Notification]) -> tuple[list[Notification], int]:
        """Insert the notes that are new and a delivery for each new institution note and webhook,
        in the caller's transaction. Returns (new notes, deliveries created)."""
        new = await store.insert(conn, notes)
        institution_notes = [n for n in new if n.recipient_kind == RecipientKind.INSTITUTION]
        deliveries = await store.add_deliveries(conn, institution_notes, self.clock()) if institution_notes else 0
        return new, deliveries

    def announce(self, attempted: list[Notification], new: list[Notification], deliveries: int) -> None:
        """After the commit: metrics, and wake the streams and the delivery worker."""
        ids_new = {n.notification_id for n in new}
        for n in attempted:
            if n.notification_id in ids_new:
                self.metrics.notifications.labels(n.recipient_kind.label, n.kind).inc()
            else:
                self.metrics.notifications_duplicate.labels(n.kind).inc()
        if new:
            self.recorded.notify()
        if deliveries:
            self.deliveries_due.notify()

    async def _once(self, consumer: str, event_id: str, notes: list[Notification],
                    before: object = None) -> bool:
        """Record ``notes`` once per event (inbox); ``before(conn)`` runs first in the same transaction."""
        async with self.pool.acquire() as conn, conn.transaction():
            if not await inbox.claim(conn, consumer, event_id):
                self.announce(notes, [], 0)
                return False
            if before is not None:
                notes = [*notes, *(await before(conn))]  # type: ignore[operator]
            new, deliveries = await self.record(conn, notes)
        self.announce(notes, new, deliveries)
        return True

    # -- events ----------------------------------------------------------------------------------------------

    async def _remember(self, conn: asyncpg.Connection, demand_id: str, uscc: str) -> list[Notification]:
        """Learn the demand's enterprise; returns the enterprise's notices of lead changes that waited for it."""
        await store.lock_demand_enterprise(conn, demand_id)
        await store.remember_demand(conn, demand_id, uscc)
        uscc = await store.enterprise_of(conn, demand_id)  # the first one learnt stays
        return [n for c in await store.unpark(conn, demand_id) for n in domain.for_lead_change(c, uscc)
                if n.recipient_kind == RecipientKind.ENTERPRISE]

    async def on_match(self, consumer: str, event_id: str, outcome: domain.MatchOutcome, at: datetime) -> None:
        async def remember(conn: asyncpg.Connection) -> list[Notification]:
            return await self._remember(conn, outcome.demand_id, outcome.enterprise_uscc)
        await self._once(consumer, event_id, domain.for_match(outcome, at), remember)

    async def on_matches(self, consumer: str, items: list[tuple[str, domain.MatchOutcome, datetime]]) -> None:
        """Several ``(event id, outcome, at)`` in one transaction (a fetch's worth), each once."""
        async with self.pool.acquire() as conn, conn.transaction():
            notes: list[Notification] = []
            seen: list[Notification] = []
            for event_id, outcome, at in items:
                composed = domain.for_match(outcome, at)
                if await inbox.claim(conn, consumer, event_id):
                    notes += await self._remember(conn, outcome.demand_id, outcome.enterprise_uscc)
                    notes += composed
                else:
                    seen += composed
            new, deliveries = await self.record(conn, notes)
        self.announce(notes + seen, new, deliveries)

    async def on_demand_change(self, consumer: str, event_id: str, change: domain.DemandChange) -> None:
        async def remember(conn: asyncpg.Connection) -> list[Notification]:
            if change.enterprise_uscc:
                return await self._remember(conn, change.demand_id, change.enterprise_uscc)
            return []
        await self._once(consumer, event_id, domain.for_demand_change(change), remember)

    async def on_notice(self, consumer: str, event_id: str, notice: domain.RoadshowNotice) -> None:
        await self._once(consumer, event_id, [domain.for_notice(notice)])

    async def on_receivable(self, consumer: str, event_id: str, change: domain.ReceivableChange) -> None:
        await self._once(consumer, event_id, domain.for_receivable(change))

    async def on_renewal_due(self, consumer: str, event_id: str, due: domain.RenewalDue) -> None:
        await self._once(consumer, event_id, domain.for_renewal(due))

    async def on_institution(self, changed: InstitutionChanged) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await institutions.learn(conn, changed)

    async def on_lead_change(self, consumer: str, event_id: str, c: LeadChange) -> None:
        """Start the clock at DELIVERED, stop it at contact, decline, withdrawal (or later); tell the
        enterprise of each outcome and the institution of a withdrawal. The event names the enterprise;
        an older one that does not, for a demand whose enterprise is not known here yet, parks the
        enterprise's notice until it is (:meth:`_remember`)."""
        contacted_ttfc: tuple[str, float] | None = None

        async with self.pool.acquire() as conn, conn.transaction():
            if not await inbox.claim(conn, consumer, event_id):
                return
            if c.enterprise_uscc:
                notes = await self._remember(conn, c.demand_id, c.enterprise_uscc)
                uscc = c.enterprise_uscc
            else:
                notes = []
                await store.lock_demand_enterprise(conn, c.demand_id)
                uscc = await store.enterprise_of(conn, c.demand_id)
                if not uscc and c.status in domain.LEAD_STATUSES_NOTIFIED:
                    await store.park(conn, c, self.clock())
                    logger.info("lead change waits for its demand's enterprise", lead_id=c.lead_id,
                                demand_id=c.demand_id, status=c.status)
            notes += domain.for_lead_change(c, uscc)
            if c.status == domain.CLOCK_STARTER:
                product, institution, inst_hours = await store.sla_inputs(conn, c.institution_id, c.product_id)
                hours, source, contact = domain.resolve_sla(product, institution, inst_hours)
                await store.start_clock(conn, domain.start_clock(c, hours, source, contact))
                if c.origin == "ROADSHOW":  # leads the matcher issued are announced from DemandMatched
                    notes.append(domain.for_match(domain.MatchOutcome(
                        c.demand_id, uscc or "-", (domain.LeadRef(c.lead_id, c.institution_id, c.product_id, 0, 1,
                                                                  c.at + timedelta(hours=hours)),)), c.at)[1])
            elif c.status in domain.CLOCK_STOPPERS:
                contacted = (c.contacted_at or c.at) if c.status == "CONTACTED" else None
                before, _stopped = await store.stop_clock(conn, c.lead_id, c.status, c.at, contacted)
                if before is not None and contacted is not None and before.contacted_at is None:
                    contacted_ttfc = (c.institution_id, (contacted - before.delivered_at).total_seconds())
            new, deliveries = await self.record(conn, notes)
        self.announce(notes, new, deliveries)
        if contacted_ttfc:
            self.metrics.time_to_first_contact.labels(contacted_ttfc[0]).observe(max(0.0, contacted_ttfc[1]))

    # -- the contact clocks ----------------------------------------------------------------------------------

    async def tick_clocks(self, limit: int = 200) -> int:
        """Fire the reminders and deadlines due now, once: the rows are locked (SKIP LOCKED, so two
        replicas share the work) and updated in the transaction that records the notifications and
        the ``LeadSlaBreached`` event (outbox). Returns how many clocks fired."""
        now = self.clock()
        reminded: list[LeadClock] = []
        breached: list[LeadClock] = []
        async with self.pool.acquire() as conn, conn.transaction():
            due = await store.due_clocks(conn, now, limit)
            notes: list[Notification] = []
            for c in due:
                t = domain.tick(c, now)
                if t.remind:
                    notes.append(domain.for_reminder(c, now))
                    reminded.append(c)
                if t.breach:
                    notes.append(domain.for_escalation(c, now))
                    await outbox.append(conn, topics.LEAD_SLA_BREACHED, mapping.sla_breached(c, now),
                                        schema=self.schema, event_id=ids.event_id("lead-sla-breached", c.lead_id),
                                        occurred_at=now)
                    breached.append(c)
                await store.save_tick(conn, c.lead_id, reminded_at=now if t.remind else None,
                                      breached_at=now if t.breach else None, next_fire_at=t.next_fire_at)
            new, deliveries = await self.record(conn, notes)
        self.announce(notes, new, deliveries)
        for c in reminded:
            self.metrics.clock_reminders.labels(c.institution_id).inc()
        for c in breached:
            self.metrics.clock_breaches.labels(c.institution_id).inc()
            logger.info("contact deadline missed", lead_id=c.lead_id, institution_id=c.institution_id)
        return len(due)

    async def run_clocks(self, interval_seconds: float = 1.0, count_every_seconds: float = 15.0) -> None:
        """The background task: fire due clocks every ``interval_seconds`` (a notifier that was down
        catches up at once), and count the running clocks for their gauge every ``count_every_seconds``
        (a count reads every running clock: three days' leads)."""
        counted = -math.inf

        async def clock_pass() -> None:
            nonlocal counted
            await drain(self.tick_clocks)
            if time.monotonic() - counted >= count_every_seconds:
                self.metrics.clocks_open.set(await store.running_clocks(self.pool))
                counted = time.monotonic()

        await every(interval_seconds, clock_pass, "contact clock pass")

    async def get_clock(self, lead_id: str) -> LeadClock:
        clock = await store.get_clock(self.pool, lead_id)
        if clock is None:
            raise NotFound(f"no contact clock for lead {lead_id!r} (not delivered, or not known here)")
        return clock

    # -- institutions: secret, webhooks, policies ------------------------------------------------------------
    # (Caller: who a DeliveryService or policy call says it is; see _authorise.)

    async def _authorise(self, conn: asyncpg.Connection | asyncpg.Pool, institution_id: str, caller: Caller) -> bool:
        """Whether the institution has a webhook secret yet. The caller must prove it is the institution:
        with its API key, or (once it has one) its webhook secret; else :class:`PermissionDenied`
        (:class:`Unavailable` for a key given before the institution's registration has arrived here)."""
        secret = await store.secret_of(conn, institution_id)
        if caller.api_key:
            await apikeys.authenticate(conn, institution_id, caller.api_key)
            return bool(secret)
        if secret and caller.secret and secrets.compare_digest(secret, caller.secret):
            return True
        if secret:
            raise PermissionDenied(f"{WEBHOOK_SECRET_HEADER} is missing or wrong for institution {institution_id}")
        raise PermissionDenied(f"institution {institution_id} has no webhook yet: registering the first one needs "
                               f"its API key in the metadata {apikeys.HEADER}")

    async def set_policy(self, p: Policy, caller: Caller) -> Policy:
        domain.validate_policy(p)
        async with self.pool.acquire() as conn, conn.transaction():
            await self._authorise(conn, p.institution_id, caller)
            saved = await store.set_policy(conn, p, self.clock())
            await self._announce(conn, [saved])
            return saved

    async def announce_policies(self) -> int:
        """Announce the policies set before policies were announced (by the release before); at start."""
        async with self.pool.acquire() as conn, conn.transaction():
            policies = await store.announce_unannounced_policies(conn)
            await self._announce(conn, policies)
        return len(policies)

    async def _announce(self, conn: asyncpg.Connection, policies: list[Policy]) -> None:
        """``ContactPolicyChanged`` for each of ``policies`` (one round trip): the matcher and the demand
        service date their leads by them."""
        events = [(topics.CONTACT_POLICIES_CHANGED, ContactPolicyChanged(policy=mapping.policy_pb(p)),
                   codec.new_event_id()) for p in policies]
        await outbox.append_many(conn, events, schema=self.schema, occurred_at=self.clock())

    async def register_webhook(self, institution_id: str, url: str, caller: Caller
                               ) -> tuple[str, datetime, bool, str]:
        """(webhook id, created at, created, the new secret if this call created it)."""
        domain.validate_webhook(institution_id, url)
        now = self.clock()
        wid = domain.webhook_id(institution_id, url)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"webhooks:{institution_id}")
            new_secret = ""
            if not await self._authorise(conn, institution_id, caller):
                new_secret = secrets.token_urlsafe(32)
                await store.create_secret(conn, institution_id, new_secret, now)
            created_at, created = await store.add_webhook(conn, wid, institution_id, url, now)
        return wid, created_at, created, new_secret

    async def delete_webhook(self, institution_id: str, webhook_id: str, caller: Caller) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            if not await self._authorise(conn, institution_id, caller):
                raise NotFound(f"institution {institution_id} has no webhooks")
            return await store.delete_webhook(conn, institution_id, webhook_id)

    async def list_deliveries(self, institution_id: str, status: str, page: Page, caller: Caller) -> list:
        if not await self._authorise(self.pool, institution_id, caller):
            return []
        return await store.list_deliveries(self.pool, institution_id, status, page)
