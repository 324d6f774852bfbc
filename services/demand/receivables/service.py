"""The receivable registry's use cases: decide with the pure core, store the receivable and its
``ReceivableChanged`` in one transaction (through the outbox), so a refusal changes nothing and no
change goes unannounced. Time comes from an injectable clock."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import asyncpg

from meshkit import ids, log, outbox, topics
from meshkit.clock import Clock
from meshkit.errors import AlreadyExists, FieldViolation, NotFound, ValidationFailed, Violations, require
from meshkit.lifecycle import drain, every
from meshkit.metrics import Metrics
from services.demand import domain as demand_domain
from services.demand import store as demand_store
from services.demand.receivables import domain as r
from services.demand.receivables import mapping, store

logger = log.get(__name__)


def receivable_id(u: r.Upload) -> str:
    """Derived from the uploader and its request id: the same upload again finds the same receivable."""
    return ids.stable_id("receivable", u.uploader, u.request_id)


class Receivables:
    def __init__(self, pool: asyncpg.Pool, metrics: Metrics, *, schema: str, clock: Clock) -> None:
        self.pool = pool
        self.metrics = metrics
        self.schema = schema
        self.clock = clock

    async def _announce(self, conn: asyncpg.Connection, x: r.Receivable, change: r.Change, now: datetime,
                        days_to_due: int = 0) -> None:
        event = mapping.changed(x, change, days_to_due)
        await outbox.append_many(conn, [(topics.RECEIVABLES_CHANGED, event,
                                         ids.event_id("receivable-changed", x.receivable_id, str(x.version)))],
                                 schema=self.schema, occurred_at=now)
        self.metrics.receivable_changes.labels(change.name.lower()).inc()

    async def upload(self, u: r.Upload) -> tuple[r.Receivable, bool]:
        """Register ``u`` (see ``ReceivableService.UploadReceivable``); (the receivable, created)."""
        now = self.clock()
        r.validate(u, today=now.date(), uscc_problem=demand_domain.uscc_problem)
        rid = receivable_id(u)
        fingerprint = r.fingerprint(u)
        async with self.pool.acquire() as conn, conn.transaction():
            # One upload of a request, and of a fingerprint, at a time (in this order): two at once
            # neither both find none, nor both insert the same receivable.
            for lock in (f"receivable-id:{rid}", f"receivable:{fingerprint}"):
                await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", lock)
            existing = await store.load(conn, rid)
            if existing is not None:
                if existing.upload != u:
                    raise AlreadyExists(f"request_id {u.request_id!r} was used for another receivable ({rid}) "
                                        "with other content")
                return existing, False
            v = Violations()
            for field, uscc in (("receivable.supplier_uscc", u.supplier_uscc),
                                ("receivable.debtor_uscc", u.debtor_uscc)):
                v.check(await demand_store.get_enterprise(conn, uscc) is not None, field,
                        "no enterprise is registered with this code")
            v.raise_if_any()
            duplicate_of = await store.live_with_fingerprint(conn, fingerprint) or ""
            near = () if duplicate_of else r.near_duplicates(u, await store.similar(conn, u))
            x = r.register(u, receivable_id=rid, now=now, duplicate_of=duplicate_of, near=near)
            await store.insert(conn, x, now)
            await self._announce(conn, x, r.change_of_upload(x), now)
        if duplicate_of:
            logger.warning("duplicate receivable blocked", receivable_id=rid, duplicate_of=duplicate_of)
        return x, True

    async def _change(self, receivable_id: str, decide: Callable[[r.Receivable, datetime], tuple[r.Receivable, bool]],
                      change_of: Callable[[r.Receivable], r.Change]) -> tuple[r.Receivable, bool]:
        """Load ``receivable_id`` locked, apply ``decide`` (the pure core: (new, changed)), store it
        and announce ``change_of(new)`` if it changed."""
        require("receivable_id", receivable_id)
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            x = await store.load(conn, receivable_id, lock=True)
            if x is None:
                raise NotFound(f"no receivable with id {receivable_id!r}")
            new, changed = decide(x, now)
            if changed:
                await store.save(conn, new, now)
                await self._announce(conn, new, change_of(new), now)
        return new, changed

    async def confirm(self, receivable_id: str, debtor_uscc: str, amount_fen: int) -> tuple[r.Receivable, bool]:
        require("debtor_uscc", debtor_uscc)
        return await self._change(
            receivable_id, lambda x, now: r.confirm(x, debtor_uscc=debtor_uscc, amount_fen=amount_fen, at=now),
            lambda _: r.Change.CONFIRMED)

    async def dispute(self, receivable_id: str, debtor_uscc: str, reason: str) -> r.Receivable:
        require("debtor_uscc", debtor_uscc)
        return (await self._change(
            receivable_id, lambda x, now: (r.dispute(x, debtor_uscc=debtor_uscc, reason=reason, at=now), True),
            lambda _: r.Change.DISPUTED))[0]

    async def request_financing(self, receivable_id: str, supplier_uscc: str, institution_id: str, amount_fen: int,
                                kind: int) -> r.Receivable:
        require("supplier_uscc", supplier_uscc)
        if institution_id and await demand_store.get_institution(self.pool, institution_id) is None:
            raise ValidationFailed([FieldViolation("institution_id", "no institution with this id is registered")])
        return (await self._change(receivable_id, lambda x, now: (r.request_financing(
            x, supplier_uscc=supplier_uscc, institution_id=institution_id, amount_fen=amount_fen, kind=kind,
            today=now.date(), at=now), True), lambda _: r.Change.FINANCING_REQUESTED))[0]

    async def decide_financing(self, receivable_id: str, institution_id: str, approve: bool, rate_bps: int,
                               decline_reason: str) -> r.Receivable:
        return (await self._change(receivable_id, lambda x, now: (r.decide_financing(
            x, institution_id=institution_id, approve=approve, rate_bps=rate_bps, decline_reason=decline_reason,
            today=now.date(), at=now), True), lambda x: r.Change.FINANCED if x.status == r.Status.FINANCED
            else r.Change.FINANCING_DECLINED))[0]

    async def withdraw_financing(self, receivable_id: str, supplier_uscc: str, reason: str) -> r.Receivable:
        require("supplier_uscc", supplier_uscc)
        return (await self._change(receivable_id, lambda x, now: (r.withdraw_financing(
            x, supplier_uscc=supplier_uscc, reason=reason, at=now), True),
            lambda _: r.Change.FINANCING_WITHDRAWN))[0]

    async def settle(self, receivable_id: str, *, supplier_uscc: str = "", institution_id: str = "") -> r.Receivable:
        """``institution_id``: the caller authenticated as that financier; else ``supplier_uscc``."""
        return (await self._change(receivable_id, lambda x, now: (r.settle(
            x, supplier_uscc=supplier_uscc, institution_id=institution_id, at=now), True),
            lambda _: r.Change.SETTLED))[0]

    async def get(self, receivable_id: str) -> r.Receivable:
        require("receivable_id", receivable_id)
        x = await store.load(self.pool, receivable_id)
        if x is None:
            raise NotFound(f"no receivable with id {receivable_id!r}")
        return x

    async def list(self, *, supplier_uscc: str, debtor_uscc: str, financier_id: str, status: int, limit: int,
                   offset: int) -> list[r.Receivable]:
        v = Violations()
        v.check(status == 0 or status in r.Status._value2member_map_, "status", "is not a known status")
        v.raise_if_any()
        return await store.find(self.pool, supplier_uscc=supplier_uscc.strip().upper(),
                                debtor_uscc=debtor_uscc.strip().upper(), financier_id=financier_id.strip(),
                                status=status, limit=limit, offset=offset)

    # -- maturity ---------------------------------------------------------------------------------------------

    async def mature_due(self, *, limit: int = 200) -> int:
        """One batch of the maturity pass: payment prompts due today and receivables now overdue;
        returns how many receivables it looked at. Safe with several replicas (rows locked, others skipped)."""
        now = self.clock()
        today = now.date()
        async with self.pool.acquire() as conn, conn.transaction():
            due = await store.due_for_maturity(conn, today, limit)
            for x in due:
                new, changes = r.mature(x, today=today, at=now)
                await store.save(conn, new, now)
                for change, days in changes:
                    await self._announce(conn, new, change, now, days_to_due=days)
        return len(due)

    async def run_maturity(self, interval_seconds: float) -> None:
        """The background task: the maturity pass every ``interval_seconds``, until cancelled."""
        await every(interval_seconds, lambda: drain(self.mature_due), "receivable maturity pass")
