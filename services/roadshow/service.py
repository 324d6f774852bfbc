"""The roadshow service's use cases: decide with the pure core, store, and announce through the
outbox (notices, intents), each in one transaction. Shared by the gRPC servicer, the Kafka
consumers and the schedule (a background task).

Exactly once across replicas: the monthly roadshow is inserted under a unique index on its
month (automatic roadshows); a roadshow whose window has closed is selected by the replica that
locks its row (``FOR UPDATE SKIP LOCKED``) while its status still says it was not; invitations
are rows with a primary key, and only the replica that inserts one sends its notice. Every
notice and intent has a deterministic event id, so a retry never duplicates one. Time comes
from an injectable clock.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import asyncpg
from google.protobuf.message import Message

from meshkit import apikeys, codec, ids, log, outbox, topics
from meshkit.clock import Clock
from meshkit.errors import AlreadyExists, FailedPrecondition, NotFound, Violations, require
from meshkit.lifecycle import every
from meshkit.metrics import Metrics
from services.demand.domain import Reference
from services.roadshow import domain as r
from services.roadshow import mapping, store
from services.roadshow.domain import ApplicationStatus as AS

logger = log.get(__name__)

Event = tuple[topics.TopicSpec, Message, str]


def roadshow_id_for_month(month: str) -> str:
    return ids.stable_id("roadshow", month)


class Roadshows:
    def __init__(self, pool: asyncpg.Pool, metrics: Metrics, ref: Reference, *, schema: str,
                 clock: Clock = codec.now) -> None:
        self.pool = pool
        self.metrics = metrics
        self.ref = ref
        self.schema = schema
        self.clock = clock

    def _notice(self, rs: r.Roadshow, kind: int, recipient_id: str, *, institution: bool = False, reason: str = "",
                discriminator: str = "", now: datetime) -> Event:
        event_id = ids.event_id("roadshow-notice", rs.roadshow_id, str(kind), recipient_id, discriminator)
        return (topics.ROADSHOW_NOTICES,
                mapping.notice(rs, event_id, kind, recipient_id, institution=institution, reason=reason, at=now),
                event_id)

    async def _announce(self, conn: asyncpg.Connection, events: list[Event], now: datetime) -> None:
        await outbox.append_many(conn, events, schema=self.schema, occurred_at=now)

    # -- roadshows ---------------------------------------------------------------------------------------

    async def create(self, request_id: str, x: r.Roadshow) -> tuple[r.Roadshow, bool]:
        """An operator's extra roadshow; the same request id again returns the first. Every wrong
        field is named at once."""
        v = Violations()
        v.require("request_id", request_id)
        if not v.items:
            existing = await store.roadshow_by_request(self.pool, request_id)
            if existing is not None:
                return existing, False
        now = self.clock()
        v.check(x.held_at > now, "roadshow.held_at", "is required, in the future")
        close_defaulted = x.applications_close_at == mapping.UNSET
        x = replace(x, roadshow_id=ids.stable_id("roadshow-extra", request_id), automatic=False,
                    status=r.Status.PLANNED,
                    applications_open_at=now if x.applications_open_at == mapping.UNSET else x.applications_open_at,
                    applications_close_at=(x.held_at - r.DEFAULT_CLOSE_BEFORE if close_defaulted
                                           else x.applications_close_at))
        close_field = "roadshow.held_at" if close_defaulted else "roadshow.applications_close_at"
        if close_field not in v.fields():  # a window already closed: nobody could apply
            v.check(x.applications_close_at > now, close_field,
                    f"is too soon: applications would already be closed ({r.DEFAULT_CLOSE_BEFORE.days} days before "
                    "held_at when applications_close_at is not given)" if close_defaulted else "must be in the future")
        x = r.validate_roadshow(x, self.ref, v=v, close_defaulted=close_defaulted)
        async with self.pool.acquire() as conn, conn.transaction():
            stored = await store.insert_roadshow(conn, x, now, request_id=request_id)
            if stored is None:
                existing = await store.roadshow_by_request(conn, request_id)
                assert existing is not None
                return existing, False
        return stored, True

    async def update(self, incoming: r.Roadshow, paths: list[str]) -> r.Roadshow:
        require("roadshow.roadshow_id", incoming.roadshow_id)
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            current = await self._locked(conn, incoming.roadshow_id)
            wanted = r.updated(current, incoming, paths, self.ref)
            return await store.update_roadshow(conn, wanted, now)

    async def _locked(self, conn: asyncpg.Connection, roadshow_id: str) -> r.Roadshow:
        return _found(await store.get_roadshow(conn, roadshow_id, lock=True), roadshow_id)

    async def get(self, roadshow_id: str) -> r.Roadshow:
        require("roadshow_id", roadshow_id)
        return _found(await store.get_roadshow(self.pool, roadshow_id), roadshow_id)

    async def list(self, month: str, limit: int, offset: int) -> list[r.Roadshow]:
        v = Violations()
        v.check(month == "" or bool(r._MONTH.match(month)), "month", "must look like 2026-11")
        v.raise_if_any()
        return await store.list_roadshows(self.pool, month, limit, offset)

    # -- the schedule -------------------------------------------------------------------------------------

    async def ensure_monthly(self) -> list[r.Roadshow]:
        """Create this month's (while its applications are open) and next month's automatic roadshows if
        missing; returns those created."""
        created = []
        for month in r.months_to_plan(self.clock()):
            plan = r.plan_month(month, roadshow_id=roadshow_id_for_month(month), ref=self.ref)
            stored = await store.insert_roadshow(self.pool, plan, self.clock())
            if stored is not None:
                logger.info("monthly roadshow created", month=month, roadshow_id=stored.roadshow_id)
                created.append(stored)
        return created

    async def advance(self) -> int:
        """Move the roadshows the clock has overtaken, one batch in one transaction: open their
        window, select their presenters (exactly once), mark them held. Returns how many moved."""
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            due = await store.due(conn, now)
            events: list[Event] = []
            for rs in due:
                target = r.due_status(rs, now)
                if rs.status in r.BEFORE_SELECTION and target in (r.Status.SELECTION, r.Status.HELD):
                    events += await self._select(conn, rs, now)  # moves it to SELECTION
                if target != r.Status.SELECTION:  # OPEN_FOR_APPLICATIONS or HELD
                    await store.set_status(conn, rs.roadshow_id, target, now)
            await self._announce(conn, events, now)
        return len(due)

    async def _select(self, conn: asyncpg.Connection, rs: r.Roadshow, now: datetime) -> list[Event]:
        applied = await store.applications(conn, rs.roadshow_id, AS.APPLIED)
        views = await store.enterprises_of(conn, [a.uscc for a in applied])
        ranked = r.select([r.Candidate(views.get(a.uscc) or r.EnterpriseView(a.uscc), a.amount_sought_fen,
                                       a.applied_at) for a in applied], rs.theme, rs.capacity)
        await store.save_selection(conn, rs.roadshow_id, ranked, now)
        await store.set_status(conn, rs.roadshow_id, r.Status.SELECTION, now)
        logger.info("presenters selected", roadshow_id=rs.roadshow_id, applicants=len(applied),
                    presenters=sum(x.selected for x in ranked))
        return [self._notice(rs, mapping.NOTICE_SELECTED if x.selected else mapping.NOTICE_NOT_SELECTED, x.uscc,
                             reason=x.reason, now=now) for x in ranked]

    async def invite(self) -> int:
        """Invite SRDI enterprises with open demands that fit an open roadshow's theme (once each)."""
        now = self.clock()
        invited = 0
        for rs in await store.open_roadshows(self.pool):
            async with self.pool.acquire() as conn, conn.transaction():
                new = await store.insert_invitations(conn, rs.roadshow_id, await store.invitable(conn, rs), now)
                reason = (f"your open financing demand fits the theme {rs.theme.title!r}; apply by "
                          f"{rs.applications_close_at:%Y-%m-%d %H:%M} UTC")
                await self._announce(conn, [self._notice(rs, mapping.NOTICE_INVITED, u, reason=reason, now=now)
                                            for u in new], now)
            invited += len(new)
        return invited

    async def tick(self) -> None:
        await self.ensure_monthly()
        while await self.advance() > 0:
            pass
        await self.invite()
        await self.refresh_gauges()
        self.metrics.roadshow_schedule_passes.inc()

    async def run_schedule(self, interval_seconds: float) -> None:
        """The background task: keep the schedule every ``interval_seconds``, until cancelled."""
        await every(interval_seconds, self.tick, "roadshow schedule pass")

    # -- applications ---------------------------------------------------------------------------------------

    async def apply(self, roadshow_id: str, uscc: str, amount_sought_fen: int, purpose: int, pitch: str
                    ) -> tuple[store.Application, bool]:
        """An enterprise applies while the window is open. An ineligible one is recorded as REFUSED,
        told why (a notice), and the call fails with FAILED_PRECONDITION listing the reasons."""
        v = Violations()
        v.check(bool(roadshow_id.strip()), "roadshow_id", "is required")
        r.check_application(v, uscc=uscc, amount_sought_fen=amount_sought_fen, purpose=purpose, pitch=pitch)
        v.raise_if_any()
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            rs = await self._locked(conn, roadshow_id)
            if not rs.window_open(now):
                raise FailedPrecondition(
                    f"applications to roadshow {rs.title} are open from {rs.applications_open_at:%Y-%m-%d %H:%M} to "
                    f"{rs.applications_close_at:%Y-%m-%d %H:%M} UTC (status {rs.status.name}), not now")
            existing = await store.get_application(conn, roadshow_id, uscc, lock=True)
            if existing is not None and existing.status == AS.APPLIED:
                return existing, False
            e = await store.get_enterprise(conn, uscc)
            if e is None:
                raise FailedPrecondition(f"no enterprise with USCC {uscc} is registered on the platform (a newly "
                                         "registered one is known here within seconds)")
            reasons = r.refusal_reasons(e, rs.theme)
            # refused again for the same reasons: recorded, but the enterprise was told already
            told = (existing is not None and existing.status == AS.REFUSED
                    and existing.refusal_reasons == tuple(reasons))
            saved = await store.save_application(conn, store.Application(
                roadshow_id=roadshow_id, uscc=uscc, status=AS.REFUSED if reasons else AS.APPLIED,
                amount_sought_fen=amount_sought_fen, purpose=purpose, pitch=pitch, applied_at=now, updated_at=now,
                refusal_reasons=tuple(reasons)))
            kind = mapping.NOTICE_REFUSED if reasons else mapping.NOTICE_RECEIVED
            if not told:
                await self._announce(conn, [self._notice(rs, kind, uscc, reason="; ".join(reasons),
                                                         discriminator=str(saved.attempts), now=now)], now)
        if reasons:
            raise FailedPrecondition(f"{e.name or uscc} is not eligible for roadshow {rs.title}: " + "; ".join(reasons))
        return saved, True

    async def applications(self, roadshow_id: str, status: int, limit: int, offset: int) -> list[store.Application]:
        require("roadshow_id", roadshow_id)
        v = Violations()
        v.check(status in AS._value2member_map_, "status", "is not a known application status")
        v.raise_if_any()
        return await store.applications(self.pool, roadshow_id, status, limit, offset)

    async def override(self, roadshow_id: str, uscc: str, selected: bool, reason: str, operator_id: str
                       ) -> store.Application:
        """An operator overrides the ranking for one applicant, with a recorded reason (between
        selection and the roadshow; within capacity; never for an ineligible enterprise)."""
        v = Violations()
        v.check(bool(roadshow_id.strip()), "roadshow_id", "is required")
        r.check_uscc(v, "enterprise_uscc", uscc)
        v.check(bool(reason.strip()) and len(reason) <= r.MAX_REASON_CHARS, "reason",
                f"is required, at most {r.MAX_REASON_CHARS} characters")
        v.check(bool(operator_id.strip()) and len(operator_id) <= 128, "operator_id", "is required")
        v.raise_if_any()
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            rs = await self._locked(conn, roadshow_id)
            if rs.status != r.Status.SELECTION:
                raise FailedPrecondition(f"roadshow {rs.title} is {rs.status.name}: the selection can be overridden "
                                         "only after it is made and before the roadshow is held")
            a = await store.get_application(conn, roadshow_id, uscc, lock=True)
            if a is None:
                raise NotFound(f"{uscc} did not apply to roadshow {roadshow_id}")
            if a.status not in (AS.SELECTED, AS.NOT_SELECTED):
                raise FailedPrecondition(f"the application of {uscc} is {a.status.name}: only ranked applications "
                                         "can be overridden")
            if (a.status == AS.SELECTED) == selected:
                return a
            if selected:
                if rs.presenters >= rs.capacity:
                    raise FailedPrecondition(f"all {rs.capacity} places are taken: deselect a presenter first")
                e = await store.get_enterprise(conn, uscc)
                reasons = r.refusal_reasons(e, rs.theme) if e else ["the enterprise is unknown"]
                if reasons:
                    raise FailedPrecondition(f"{uscc} is not eligible: " + "; ".join(reasons))
            why = f"overridden by operator {operator_id}: {reason}"
            await store.override(conn, roadshow_id, uscc, selected, why, operator_id, now)
            kind = mapping.NOTICE_SELECTED if selected else mapping.NOTICE_NOT_SELECTED
            await self._announce(conn, [self._notice(rs, kind, uscc, reason=why,
                                                     discriminator=f"override-{a.overrides + 1}", now=now)], now)
            saved = await store.get_application(conn, roadshow_id, uscc)
        assert saved is not None
        return saved

    # -- investors and intents ----------------------------------------------------------------------------------

    async def register_investor(self, roadshow_id: str, institution_id: str) -> tuple[asyncpg.Record, bool]:
        require("roadshow_id", roadshow_id)
        require("institution_id", institution_id, 63)
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            rs = await self._locked(conn, roadshow_id)
            if rs.status == r.Status.CANCELLED:
                raise FailedPrecondition(f"roadshow {rs.title} is cancelled")
            found = await store.get_institution(conn, institution_id)
            if found is None:
                raise FailedPrecondition(f"no institution {institution_id!r} is registered on the platform (a newly "
                                         "registered one is known here within seconds)")
            name, type_ = found
            refusal = r.investor_refusal(type_)
            if refusal:
                raise FailedPrecondition(f"{name} cannot attend as an investor: {refusal}")
            created = await store.insert_investor(conn, roadshow_id, institution_id, name, type_, now)
            if created:
                await self._announce(conn, [self._notice(rs, mapping.NOTICE_INVESTOR_REGISTERED, institution_id,
                                                         institution=True, now=now)], now)
            investor = await store.get_investor(conn, roadshow_id, institution_id)
        assert investor is not None
        return investor, created

    async def record_intent(self, req: r.IntentRequest) -> tuple[store.Intent, bool]:
        """A registered investor's intent for a presenter, from the day the roadshow is held: stored,
        published as ``IntentRecorded`` (the demand service makes a lead of it) and notified to both."""
        v = Violations()
        req = r.check_intent(v, req)
        v.raise_if_any()
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            rs = await self._locked(conn, req.roadshow_id)
            if rs.status == r.Status.CANCELLED or now < rs.held_at:
                raise FailedPrecondition(f"intents for roadshow {rs.title} are recorded from when it is held "
                                         f"({rs.held_at:%Y-%m-%d %H:%M} UTC)")
            if await store.get_investor(conn, req.roadshow_id, req.institution_id) is None:
                raise FailedPrecondition(f"institution {req.institution_id} has not registered to attend roadshow "
                                         f"{rs.title}")
            a = await store.get_application(conn, req.roadshow_id, req.enterprise_uscc)
            if a is None or a.status != AS.SELECTED:
                raise FailedPrecondition(f"{req.enterprise_uscc} is not a presenter of roadshow {rs.title}")
            intent_id = ids.stable_id("roadshow-intent", req.roadshow_id, req.institution_id, req.enterprise_uscc)
            intent = store.Intent(
                intent_id=intent_id, roadshow_id=req.roadshow_id, institution_id=req.institution_id,
                uscc=req.enterprise_uscc, intended_amount_fen=req.intended_amount_fen, instrument=req.instrument,
                note=req.note, term_months=req.term_months, purpose=a.purpose, recorded_at=now,
                demand_id=ids.roadshow_demand_id(intent_id), lead_id=ids.roadshow_lead_id(intent_id),
            )
            if not await store.insert_intent(conn, intent):
                existing = await store.get_intent(conn, intent_id)
                assert existing is not None
                if existing.same_request(intent):
                    return existing, False
                raise AlreadyExists(f"{req.institution_id} recorded an intent for {req.enterprise_uscc} at this "
                                    "roadshow already, with other terms")
            events: list[Event] = [(topics.ROADSHOW_INTENTS, mapping.intent_recorded(intent),
                                    ids.event_id("intent-recorded", intent_id))]
            amount = f"intended {req.intended_amount_fen // r.YUAN} yuan ({r.Instrument(req.instrument).name})"
            events.append(self._notice(rs, mapping.NOTICE_INTENT, req.enterprise_uscc, now=now,
                                       reason=f"{req.institution_id}: {amount}", discriminator=intent_id))
            events.append(self._notice(rs, mapping.NOTICE_INTENT, req.institution_id, institution=True, now=now,
                                       reason=f"{req.enterprise_uscc}: {amount}", discriminator=intent_id))
            await self._announce(conn, events, now)
        return intent, True

    async def intents(self, roadshow_id: str, limit: int, offset: int) -> list[store.Intent]:
        require("roadshow_id", roadshow_id)
        return await store.list_intents(self.pool, roadshow_id, limit, offset)

    # -- read models (from the demand service's topics) -------------------------------------------------------

    async def enterprise_changed(self, e: r.EnterpriseView, version: int) -> None:
        await store.upsert_enterprise(self.pool, e, version)

    async def institution_changed(self, institution_id: str, name: str, type_: int, version: int,
                                  key_digest: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await store.upsert_institution(conn, institution_id, name, type_, version)
            await apikeys.learn(conn, institution_id, version, key_digest)

    async def demand_status_changed(self, demand_id: str, uscc: str, channel: int, status: int, seq: int) -> None:
        await store.upsert_demand_status(self.pool, demand_id, uscc, channel, status, seq)

    async def lead_changed(self, lead_id: str, status: int, seq: int, offer_fen: int, disbursed_fen: int) -> None:
        await store.record_lead(self.pool, lead_id, status, seq, offer_fen, disbursed_fen)

    # -- the report ---------------------------------------------------------------------------------------------

    async def report(self, *, roadshow_id: str, held_from: datetime | None, held_to: datetime | None,
                     group_by: int) -> tuple[dict[str, int], list[tuple[str, dict[str, int]]]]:
        """(totals, rows by group) for one roadshow or those held in [held_from, held_to)."""
        v = Violations()
        v.check(group_by in store.GROUP_KEYS or group_by == 0, "group_by", "is not a known grouping")
        v.check(held_from is None or held_to is None or held_from < held_to, "held_to", "must be after held_from")
        v.check(len(roadshow_id) <= 128, "roadshow_id", "must be at most 128 characters")
        if roadshow_id and (held_from or held_to):
            v.add("roadshow_id", "give a roadshow or a period, not both")
        v.raise_if_any()
        if roadshow_id:
            await self.get(roadshow_id)
        args = dict(roadshow_id=roadshow_id, held_from=held_from, held_to=held_to)
        total = await store.report(self.pool, group_by=0, **args)
        rows = await store.report(self.pool, group_by=group_by, **args) if group_by else []

        def figures(x: asyncpg.Record) -> dict[str, int]:
            return {k: int(x[k]) for k in x.keys() if k != "key"}

        empty = {k: 0 for k in mapping.FIGURES}
        return (figures(total[0]) if total else empty), [(str(x["key"]), figures(x)) for x in rows]

    async def refresh_gauges(self) -> None:
        totals, _ = await self.report(roadshow_id="", held_from=None, held_to=None, group_by=0)
        m = self.metrics
        m.roadshow_applicants.set(totals["applicants"])
        m.roadshow_presenters.set(totals["presenters"])
        m.roadshow_investors.set(totals["investors"])
        m.roadshow_intents.set(totals["intents"])
        m.roadshow_intended_amount.set(totals["intended_amount_fen"])
        m.roadshow_approved_amount.set(totals["approved_amount_fen"])
        m.roadshow_granted_amount.set(totals["granted_amount_fen"])


def _found(rs: r.Roadshow | None, roadshow_id: str) -> r.Roadshow:
    if rs is None:
        raise NotFound(f"no roadshow with id {roadshow_id!r}")
    return rs
