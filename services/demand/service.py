"""The demand service's use cases: validate with the pure core, store, and announce through the
outbox, each in one transaction. Shared by the gRPC servicers and the Kafka consumers.

Every status change of a demand or a lead is written with its history entry and its
``DemandStatusChanged`` / ``LeadStatusChanged`` event in the same transaction; the pure core
decides (and refuses illegal transitions) before anything is written, so a refusal never
leaves half a change behind. Time comes from an injectable clock.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import asyncpg
from google.protobuf.message import Message

from finmesh.demand.v1 import events_pb2 as events
from finmesh.matching.v1 import events_pb2 as matching
from meshkit import apikeys, codec, ids, inbox, institutions, log, operators, outbox, topics
from meshkit.clock import Clock
from meshkit.contact_sla import contact_sla
from meshkit.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    FieldViolation,
    NotFound,
    PermissionDenied,
    ValidationFailed,
    Violations,
    require,
)
from meshkit.kafka import ensure_topics
from meshkit.lifecycle import drain, every
from meshkit.metrics import Metrics
from services.demand import domain as d
from services.demand import evaluation, mapping, store

logger = log.get(__name__)

Event = tuple[topics.TopicSpec, Message, str]  # (topic, message, event id), for outbox.append_many

MATCHED_CONSUMER = "demand-matched"
INTAKE_ATTEMPTS = 3  # an intake transaction that loses a race for a demand id is run again
OUTCOME_CONSUMER = "lead-outcome-reported"
SLA_CONSUMER = "lead-sla-breached"


def _status_events(x: d.Demand, from_seq: int = 1) -> list[Event]:
    """DemandStatusChanged for the history entries of ``x`` from position ``from_seq`` on."""
    return [(topics.DEMAND_STATUS_CHANGED, mapping.demand_status_changed(x, seq),
             ids.event_id("demand-status-changed", x.demand_id, str(seq)))
            for seq in range(from_seq, len(x.history) + 1)]


def _lead_events(lead: d.Lead, uscc: str, from_seq: int = 1) -> list[Event]:
    """LeadStatusChanged for the history entries of ``lead`` from ``from_seq`` on; ``uscc``: the demand's enterprise."""
    return [(topics.LEAD_STATUS_CHANGED, mapping.lead_status_changed(lead, seq, uscc),
             ids.event_id("lead-status-changed", lead.lead_id, str(seq)))
            for seq in range(from_seq, len(lead.history) + 1)]


async def _change_status(conn: asyncpg.Connection, head: store.DemandHead, previous: d.DemandStatus,
                         change: d.StatusChange, **kw: object) -> Event:
    """Record one demand status change (already checked by the core) and return its event."""
    seq = await store.record_status(conn, head.demand_id, change, **kw)
    msg = mapping.status_changed(demand_id=head.demand_id, uscc=head.enterprise_uscc, channel=head.channel,
                                 previous=previous, change=change, seq=seq, duplicate_of=head.duplicate_of)
    return topics.DEMAND_STATUS_CHANGED, msg, ids.event_id("demand-status-changed", head.demand_id, str(seq))


async def _save_leads(conn: asyncpg.Connection, before: Sequence[d.Lead], after: Sequence[d.Lead], uscc: str
                      ) -> list[Event]:
    """Store the leads of ``after`` that differ from ``before`` (the same leads, in order) and return
    their LeadStatusChanged events."""
    changed = [(new, old) for new, old in zip(after, before, strict=True) if new != old]
    for new, _old in changed:
        await store.save_lead_outcome(conn, new)
    await store.append_lead_history(conn, [(new, len(old.history)) for new, old in changed])
    return [e for new, old in changed for e in _lead_events(new, uscc, len(old.history) + 1)]


def _enterprise_changed(e: d.Enterprise, created: bool) -> Event:
    return (topics.ENTERPRISES_CHANGED, mapping.enterprise_changed(e, created),
            ids.event_id("enterprise-changed", e.uscc, str(e.version)))


def _accepted_event(x: d.Demand) -> Event:
    return (topics.DEMANDS_ACCEPTED, events.DemandAccepted(demand=mapping.demand_to_pb(x)),
            ids.event_id("demand-accepted", x.demand_id))


# -- enterprises ---------------------------------------------------------------------------------------


class Enterprises:
    def __init__(self, pool: asyncpg.Pool, ref: d.Reference, *, schema: str, clock: Clock = codec.now) -> None:
        self.pool = pool
        self.ref = ref
        self.schema = schema
        self.clock = clock

    async def register(self, e: d.Enterprise) -> tuple[d.Enterprise, bool]:
        """Register ``e``. The same content again is a no-op (created=False); other content for a
        registered USCC is :class:`AlreadyExists` (UpdateEnterprise changes an enterprise)."""
        now = self.clock()
        e = d.validate_enterprise(e.content(), now=now, ref=self.ref)
        async with self.pool.acquire() as conn, conn.transaction():
            stored = await store.insert_enterprise(conn, e, now)
            if stored is None:
                existing = await store.get_enterprise(conn, e.uscc)
                assert existing is not None
                if existing.same_content(e):
                    return existing, False
                raise AlreadyExists(f"enterprise {e.uscc} is already registered with other details; "
                                    "use UpdateEnterprise to change it")
            await outbox.append_many(conn, [_enterprise_changed(stored, True)], schema=self.schema, occurred_at=now)
            return stored, True

    async def update(self, e: d.Enterprise, paths: Sequence[str], expected_version: int = 0
                     ) -> tuple[d.Enterprise, bool]:
        """Change the fields of ``paths`` (all when empty); optimistic on ``expected_version`` (0 = any)."""
        require("enterprise.uscc", e.uscc)
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            current = await store.get_enterprise(conn, e.uscc, for_update=True)
            if current is None:
                raise NotFound(f"no enterprise with USCC {e.uscc!r}")
            if expected_version and expected_version != current.version:
                raise FailedPrecondition(f"enterprise {e.uscc} is at version {current.version}, "
                                         f"not {expected_version}")
            wanted = d.validate_enterprise(d.updated_enterprise(current, e, paths).content(), now=now, ref=self.ref)
            if wanted.same_content(current):
                return current, False
            stored = await store.update_enterprise(conn, wanted, now)
            await outbox.append_many(conn, [_enterprise_changed(stored, False)], schema=self.schema, occurred_at=now)
            return stored, True

    async def get(self, uscc: str) -> d.Enterprise:
        require("uscc", uscc)
        e = await store.get_enterprise(self.pool, uscc)
        if e is None:
            raise NotFound(f"no enterprise with USCC {uscc!r}")
        return e

    async def evaluate(self, uscc: str, institution_id: str) -> evaluation.Evaluation:
        """The platform's evaluation of ``uscc`` for an institution holding a lead for one of its
        demands (:class:`PermissionDenied` for any other)."""
        require("uscc", uscc)
        e = await store.get_enterprise(self.pool, uscc)
        if e is None or not await store.holds_lead_of(self.pool, institution_id, uscc):
            raise PermissionDenied(f"institution {institution_id} holds no lead for an enterprise {uscc}: "
                                   "only institutions it was introduced to see its evaluation")
        disbursed, credit = await store.track_record(self.pool, uscc)
        return evaluation.evaluate(e, evaluation.TrackRecord(disbursed, credit), year=self.clock().year)

    async def list(self, *, region_code: str, city: str, key_industry: int, srdi_tier: int, size: int,
                   special_zone: str, limit: int, offset: int) -> list[d.Enterprise]:
        v = Violations()
        v.check(region_code == "" or region_code.isdigit() and len(region_code) in (2, 6), "region_code",
                "must be a 6-digit region code or a 2-digit province prefix")
        codes: tuple[str, ...] = ()
        if city.strip():
            found = self.ref.city_named(city)
            v.check(found is not None, "city", "is not one of the pilot cities (reference/pilot_cities.csv)")
            codes = (found.region_code,) if found else ()
        v.check(key_industry == 0 or key_industry in self.ref.key_industries, "key_industry", "is not known")
        v.check(srdi_tier == 0 or srdi_tier in self.ref.srdi_tiers, "srdi_tier", "is not known")
        v.check(size == 0 or size in self.ref.sizes, "size", "is not known")
        v.check(special_zone == "" or special_zone in self.ref.special_zones, "special_zone", "is not known")
        v.raise_if_any()
        f = store.EnterpriseFilter(region_prefix=region_code, region_codes=codes, key_industry=key_industry,
                                   srdi_tier=srdi_tier, size=size, special_zone=special_zone)
        return await store.list_enterprises(self.pool, f, limit, offset)


# -- institutions -----------------------------------------------------------------------------------------

class Institutions:
    def __init__(self, pool: asyncpg.Pool, bootstrap: str, ref: d.Reference, *, schema: str,
                 clock: Clock = codec.now) -> None:
        self.pool = pool
        self.bootstrap = bootstrap
        self.ref = ref
        self.schema = schema
        self.clock = clock

    async def _announce(self, conn: asyncpg.Connection, i: d.Institution, key_digest: str, *, created: bool,
                        now: datetime) -> None:
        """``InstitutionChanged`` for version ``i.version``, with the digest of its current API key."""
        event = (topics.INSTITUTIONS_CHANGED, mapping.institution_changed(i, created, key_digest),
                 ids.event_id("institution-changed", i.institution_id, str(i.version)))
        await outbox.append_many(conn, [event], schema=self.schema, occurred_at=now)

    async def register(self, i: d.Institution, api_key: str = "", *, operator: str | None = None
                       ) -> tuple[d.Institution, bool, str]:
        """Register ``i`` and create its lead topic before answering; returns the institution, whether
        it was created, and its new API key (only when created: the key is never shown again).

        Only an ``operator`` registers a new institution (or gives a key to one registered before keys
        existed). The same content again is a no-op. Other content changes the institution, which
        needs its own ``api_key``; else :class:`PermissionDenied`."""
        i = d.validate_institution(i, ref=self.ref)
        if operator is None and await store.get_institution(self.pool, i.institution_id) is None:
            raise PermissionDenied(f"registering institution {i.institution_id} is an operator's call: it needs an "
                                   f"operator key in the metadata {operators.HEADER}")
        spec = topics.lead_topic(i.institution_id)
        i = replace(i, lead_topic=spec.name)
        await ensure_topics(self.bootstrap, [spec])  # a bank system can subscribe as soon as we answer
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            key = apikeys.new()
            stored = await store.insert_institution(conn, i, apikeys.digest(key), now)
            if stored is not None:
                await self._announce(conn, stored, apikeys.digest(key), created=True, now=now)
                return stored, True, key
            existing = await store.get_institution(conn, i.institution_id, for_update=True)
            assert existing is not None
            if existing.same_content(i):
                if operator is not None and await store.lacks_api_key(conn, i.institution_id):  # registered before keys
                    keyed = await store.set_api_key(conn, i.institution_id, apikeys.digest(key), now)
                    await self._announce(conn, keyed, apikeys.digest(key), created=False, now=now)
                    return keyed, False, key
                return existing, False, ""
            if not api_key or await store.institution_by_key(conn, apikeys.digest(api_key)) != i.institution_id:
                raise PermissionDenied(f"institution {i.institution_id} is registered; changing it needs its "
                                       f"API key in the metadata {apikeys.HEADER}")
            stored = await store.update_institution(conn, i, now)
            await self._announce(conn, stored, apikeys.digest(api_key), created=False, now=now)
            return stored, False, ""

    async def rotate_key(self, institution_id: str, api_key: str) -> str:
        """A new API key for ``institution_id`` in place of ``api_key`` (its current one, else
        :class:`PermissionDenied`); the old key stops working at once here, and in the other services
        as soon as they have the new version of the institution. Returns the new key."""
        require("institution_id", institution_id)
        key, now = apikeys.new(), self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            rotated = api_key and await store.replace_api_key(conn, institution_id, apikeys.digest(api_key),
                                                              apikeys.digest(key), now)
            if not rotated:
                raise PermissionDenied(f"rotating the API key of institution {institution_id} needs its current key "
                                       f"in the metadata {apikeys.HEADER}")
            await self._announce(conn, rotated, apikeys.digest(key), created=False, now=now)
        return key

    async def authenticate(self, api_key: str) -> str:
        """The id of the institution holding ``api_key``, else :class:`PermissionDenied`."""
        if api_key:
            institution_id = await store.institution_by_key(self.pool, apikeys.digest(api_key))
            if institution_id:
                return institution_id
        raise PermissionDenied(f"a valid institution API key is required in the metadata {apikeys.HEADER}")

    async def get(self, institution_id: str) -> d.Institution:
        require("institution_id", institution_id)
        i = await store.get_institution(self.pool, institution_id)
        if i is None:
            raise NotFound(f"no institution with id {institution_id!r}")
        return i

    async def list(self, limit: int, offset: int, *, type_: int = 0, region_code: str = "") -> list[d.Institution]:
        v = Violations()
        v.check(type_ == 0 or type_ in d.InstitutionType._value2member_map_, "type", "is not a known type")
        v.check(region_code == "" or region_code.isdigit() and len(region_code) == 6, "region_code",
                "must be a 6-digit region code")
        v.raise_if_any()
        return await store.list_institutions(self.pool, limit, offset, type_=type_, region_code=region_code)


# -- demands ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Intake:
    """Where a demand came from: its channel, its idempotency key (and the fields naming it), who filed it."""

    channel: d.Channel
    key: str
    actor: str
    key_fields: tuple[tuple[str, str], ...]  # (field path, value): each required, at most 128 characters
    operator_id: str = ""  # OFFLINE_WINDOW: the staff member filing on the enterprise's behalf (required)


@dataclass(frozen=True)
class RoadshowIntent:
    """An investor's intent recorded at a roadshow (``IntentRecorded``), as the demand it makes."""

    intent_id: str
    roadshow_id: str
    institution_id: str
    request: d.DemandRequest  # the enterprise, the intended amount, term and purpose
    summary: str  # e.g. "5000000 yuan, EQUITY"


@dataclass(frozen=True)
class Submission:
    intake: Intake
    request: d.DemandRequest


@dataclass(frozen=True)
class IntakeResult:
    """One submission's outcome: the demand (new, or the original for a repeated key), or the error."""

    demand: d.Demand | None
    created: bool
    error: DomainError | None = None

    def unwrap(self) -> tuple[d.Demand, bool]:
        if self.error is not None:
            raise self.error
        assert self.demand is not None
        return self.demand, self.created


@dataclass
class _Pending:
    n: int
    sub: Submission
    v: Violations
    demand_id: str
    digest: str


class _Coalescer:
    """Group commit for concurrent callers: submissions that arrive while a batch is being stored
    wait and go together in the next one (at most ``max_batches`` stored at once, each of at most
    ``max_size``). One caller alone is stored at once, so a quiet service adds no delay."""

    def __init__(self, run: Callable[[list[Submission]], Awaitable[list[IntakeResult]]], *, max_batches: int = 4,
                 max_size: int = 256) -> None:
        self._run = run
        self._max_batches = max_batches
        self._max_size = max_size
        self._queue: list[tuple[Submission, asyncio.Future[IntakeResult]]] = []
        self._running = 0
        self._tasks: set[asyncio.Task] = set()

    async def submit(self, sub: Submission) -> IntakeResult:
        fut: asyncio.Future[IntakeResult] = asyncio.get_running_loop().create_future()
        self._queue.append((sub, fut))
        if self._running < self._max_batches:
            self._running += 1
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await fut

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[: self._max_size], self._queue[self._max_size:]
                try:
                    results = await self._run([sub for sub, _ in batch])
                except BaseException as err:  # noqa: BLE001 - every caller of the batch gets the failure
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(err)
                    if isinstance(err, asyncio.CancelledError):
                        raise
                    continue
                for (_, fut), result in zip(batch, results, strict=True):
                    if not fut.done():
                        fut.set_result(result)
        finally:
            self._running -= 1


class Demands:
    def __init__(self, pool: asyncpg.Pool, metrics: Metrics, *, schema: str, clock: Clock = codec.now) -> None:
        self.pool = pool
        self.metrics = metrics
        self.schema = schema
        self.clock = clock
        self._submissions = _Coalescer(self.intake)

    # -- intake -------------------------------------------------------------------------------------------

    async def submit(self, intake: Intake, request: d.DemandRequest) -> tuple[d.Demand, bool]:
        """One demand through :meth:`intake`, together with those submitted at the same time (group
        commit: one transaction for all); raises its error."""
        return (await self._submissions.submit(Submission(intake, request))).unwrap()

    async def intake(self, batch: Sequence[Submission]) -> list[IntakeResult]:
        """THE intake path of every channel: validate a list of submissions and store them in one
        transaction; one result per submission, in order (errors are results, not exceptions).

        Per submission: every wrong field is named at once (ValidationFailed); the same idempotency
        key with the same content returns the original (created=False), with other content is
        AlreadyExists and changes nothing; the same need of the same enterprise that arrived
        through another channel within 72 hours (the first still live) is stored as DUPLICATE
        naming the first, and not matched; a window filing waits in NEEDS_INFO; anything else
        goes to MATCHING and ``DemandAccepted`` is published. Round trips per batch, whatever its
        size: intake lock, enterprises, existing and recent demands, one insert per demand, outbox.
        """
        now = self.clock()
        results: list[IntakeResult | None] = [None] * len(batch)
        pending: list[_Pending] = []
        for n, sub in enumerate(batch):
            v = Violations()
            for path, value in sub.intake.key_fields:
                d.check_key(v, path, value)
            if sub.intake.channel == d.Channel.OFFLINE_WINDOW:
                d.check_key(v, "operator_id", sub.intake.operator_id)
            d.check_demand(v, sub.request, now=now)
            key_paths = {path for path, _ in sub.intake.key_fields} | {"operator_id"}
            if any(f.field in key_paths for f in v.items):  # without a usable key there is nothing to look up
                results[n] = IntakeResult(None, False, ValidationFailed(v.items))
                continue
            pending.append(_Pending(n, sub, v, ids.demand_id(sub.intake.channel.label, sub.intake.key),
                                    sub.request.content_hash()))
        repeats: list[_Pending] = []
        if pending:
            async with self.pool.acquire() as conn:
                for attempt in range(1, INTAKE_ATTEMPTS + 1):
                    try:
                        async with conn.transaction():
                            accepted = await self._store_new(conn, pending, results, repeats, now)
                            await outbox.append_many(conn, [e for x in accepted for e in self._intake_events(x)],
                                                     schema=self.schema, occurred_at=now)
                        break
                    except asyncpg.UniqueViolationError:  # a concurrent twin took an id: look again
                        if attempt == INTAKE_ATTEMPTS:
                            raise
                        for p in pending:
                            results[p.n] = None
                        repeats.clear()
                originals = {x.demand_id: x for x in await store.load_demands(conn, [p.demand_id for p in repeats])}
            for p in repeats:
                results[p.n] = IntakeResult(originals[p.demand_id], False)
        for sub, r in zip(batch, results, strict=True):
            assert r is not None
            if r.created:
                self.metrics.demands_accepted.labels(sub.intake.channel.label).inc()
            elif isinstance(r.error, ValidationFailed):
                self.metrics.demands_rejected.labels(sub.intake.channel.label).inc()
        return results  # type: ignore[return-value]

    async def _store_new(self, conn: asyncpg.Connection, pending: list[_Pending], results: list[IntakeResult | None],
                         repeats: list[_Pending], now: datetime) -> list[d.Demand]:
        usccs = [p.sub.request.enterprise_uscc for p in pending]
        await store.lock_enterprises_for_intake(conn, usccs)
        enterprises = await store.intake_enterprises(conn, usccs)
        needs = [(r.enterprise_uscc, r.amount_fen, r.term_months, r.loan_category)
                 for r in (p.sub.request for p in pending)]
        hashes, found = await store.intake_demands(conn, [p.demand_id for p in pending], needs,
                                                   now - d.DUPLICATE_WINDOW)
        recent: dict[str, list[d.RecentDemand]] = defaultdict(list)  # by enterprise
        for x in found:
            recent[x.enterprise_uscc].append(x)
        accepted: dict[str, d.Demand] = {}
        for p in pending:
            existing = hashes.get(p.demand_id)
            if existing is None:
                uscc = p.sub.request.enterprise_uscc
                enterprise = enterprises.get(uscc)
                violations = list(p.v.items)
                if enterprise is None and d.valid_uscc(uscc):
                    violations.append(FieldViolation("demand.enterprise_uscc",
                                                     "no enterprise is registered with this code"))
                if violations:
                    results[p.n] = IntakeResult(None, False, ValidationFailed(violations))
                    continue
                assert enterprise is not None
                demand = d.accept(
                    demand_id=p.demand_id, request=p.sub.request, channel=p.sub.intake.channel,
                    idempotency_key=p.sub.intake.key, actor=p.sub.intake.actor, enterprise=enterprise, now=now,
                    operator_id=p.sub.intake.operator_id,
                    duplicate_of=d.find_duplicate(p.sub.request, p.sub.intake.channel, recent[uscc], now=now) or "",
                )
                accepted[demand.demand_id] = demand
                results[p.n] = IntakeResult(demand, True)
                hashes[p.demand_id] = p.digest
                r = demand.request
                recent[uscc].append(d.RecentDemand(demand.demand_id, uscc, r.amount_fen, r.term_months,
                                                   r.loan_category, demand.status, now, demand.channel))
            elif existing != p.digest:
                results[p.n] = IntakeResult(None, False, AlreadyExists(
                    f"idempotency key {p.sub.intake.key!r} was already used for a different demand ({p.demand_id})"))
            elif p.demand_id in accepted:  # the same key twice in this batch
                results[p.n] = IntakeResult(accepted[p.demand_id], False)
            else:
                repeats.append(p)
        await store.insert_demands(conn, list(accepted.values()))  # all at once (COPY)
        return list(accepted.values())

    @staticmethod
    def _intake_events(x: d.Demand) -> list[Event]:
        out = _status_events(x)
        if x.status == d.DemandStatus.MATCHING and x.channel != d.Channel.ROADSHOW:  # an intent's: not matched
            out.append(_accepted_event(x))
        return out

    # -- the enterprise's actions ---------------------------------------------------------------------------

    async def confirm(self, demand_id: str, uscc: str) -> d.Demand:
        """The enterprise confirms a window filing: NEEDS_INFO -> SUBMITTED -> MATCHING; DemandAccepted."""
        require("demand_id", demand_id)
        require("enterprise_uscc", uscc)
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            demand = await self._load_for_update(conn, demand_id)
            confirmed = d.confirm(demand, uscc=uscc, at=now)
            for change in confirmed.history[len(demand.history):]:
                await store.record_status(conn, demand_id, change)
            await outbox.append_many(conn, [*_status_events(confirmed, len(demand.history) + 1),
                                            _accepted_event(confirmed)], schema=self.schema, occurred_at=now)
        return confirmed

    async def withdraw(self, demand_id: str, uscc: str, reason: str) -> d.Demand:
        """The enterprise withdraws its demand and, with it, every open lead."""
        require("demand_id", demand_id)
        require("enterprise_uscc", uscc)
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            demand = await self._load_for_update(conn, demand_id)
            withdrawn = d.withdraw(demand, uscc=uscc, reason=reason, at=now)
            await store.record_status(conn, demand_id, withdrawn.history[-1])
            evts = _status_events(withdrawn, len(withdrawn.history))
            evts += await _save_leads(conn, demand.leads, withdrawn.leads, uscc)
            await outbox.append_many(conn, evts, schema=self.schema, occurred_at=now)
        return withdrawn

    async def _load_for_update(self, conn: asyncpg.Connection, demand_id: str) -> d.Demand:
        demand = await store.load_demand(conn, demand_id, lock=True)
        if demand is None:
            raise NotFound(f"no demand with id {demand_id!r}")
        return demand

    # -- expiry ---------------------------------------------------------------------------------------------

    async def expire_due(self, *, limit: int = 200) -> int:
        """Expire one batch of open demands whose valid-until has passed; returns how many. Safe with
        several replicas: each locks its batch and skips rows another holds."""
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            due = await store.due_for_expiry(conn, now, limit)
            evts = []
            for head in due:
                d.check_transition(head.status, d.DemandStatus.EXPIRED)
                change = d.StatusChange(d.DemandStatus.EXPIRED, now, d.SERVICE_ACTOR, "valid-until passed")
                evts.append(await _change_status(conn, head, head.status, change))
                leads = await store.leads_of_demand(conn, head.demand_id, lock=True)
                evts += await _save_leads(conn, leads, d.close_leads(
                    leads, at=now, actor=d.SERVICE_ACTOR, reason="the demand expired: its valid-until passed"),
                    head.enterprise_uscc)
            await outbox.append_many(conn, evts, schema=self.schema, occurred_at=now)
        return len(due)

    async def run_expiry(self, interval_seconds: float = 30.0) -> None:
        """The background task: expire due demands every ``interval_seconds``, until cancelled."""
        await every(interval_seconds, lambda: drain(self.expire_due), "expiry pass")

    # -- the matcher's outcome --------------------------------------------------------------------------------

    async def record_match(self, event_id: str, demand_id: str, leads: tuple[d.Lead, ...], explanation: str, *,
                           additional: bool = False, actor: str = "matcher", announce: Sequence[Event] = (),
                           hints: Sequence[str] = ()) -> None:
        """Store the matcher's leads (DELIVERED) and move the demand to LEADS_ISSUED or NO_MATCH, once
        per event; leads added later (``additional``) as :func:`domain.match_outcome` says. ``announce``:
        more events for the same transaction (a roadshow intent's ``LeadIssued``)."""
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            if not await inbox.claim(conn, MATCHED_CONSUMER, event_id):
                return
            head = await store.lock_demand(conn, demand_id)
            if head is None:
                logger.warning("match outcome for an unknown demand; ignored", demand_id=demand_id)
                return
            try:
                outcome = d.match_outcome(head.status, leads, explanation, at=now, additional=additional, actor=actor,
                                          hints=hints)
            except FailedPrecondition as err:  # e.g. withdrawn meanwhile: the outcome no longer applies
                logger.warning("match outcome ignored", demand_id=demand_id, reason=str(err))
                return
            inserted = set(await store.insert_leads(conn, outcome.leads))
            evts = []
            if additional and inserted:  # leads whose clock ran out are over: the demand went on
                breached = await store.leads_of_demand(conn, demand_id, lock=True,
                                                       status=int(d.LeadStatus.SLA_BREACHED))
                evts += await _save_leads(conn, breached, d.rerouted(
                    breached, [x for x in outcome.leads if x.lead_id in inserted], at=now, actor=actor),
                    head.enterprise_uscc)
            previous = head.status
            for change in outcome.changes:
                evts.append(await _change_status(conn, head, previous, change,
                                                 no_match_explanation=outcome.no_match_explanation,
                                                 no_match_hints=outcome.no_match_hints))
                previous = change.status
            evts += [e for lead in outcome.leads if lead.lead_id in inserted
                     for e in _lead_events(lead, head.enterprise_uscc)]
            await outbox.append_many(conn, [*evts, *announce], schema=self.schema, occurred_at=now)

    # -- roadshow intents ---------------------------------------------------------------------------------------

    async def record_intent(self, event_id: str, intent: RoadshowIntent) -> d.Demand:
        """An investor's intent at a roadshow becomes, idempotently, a demand of the enterprise (channel
        ROADSHOW, id from the intent, not matched: no DemandAccepted) with one lead for the investor
        (origin ROADSHOW), delivered like the matcher's and published on the investor's lead topic.
        Through the same paths as any demand (:meth:`intake`) and any lead (:meth:`record_match`)."""
        institution = await store.get_institution(self.pool, intent.institution_id)
        if institution is None:
            raise NotFound(f"no institution with id {intent.institution_id!r}")
        intake = Intake(channel=d.Channel.ROADSHOW, key=intent.intent_id, actor=f"roadshow:{intent.roadshow_id}",
                        key_fields=(("intent_id", intent.intent_id),))
        demand, _ = (await self.intake([Submission(intake, intent.request)]))[0].unwrap()
        now = self.clock()
        hours, _ = contact_sla(0, await institutions.policy_hours(self.pool, intent.institution_id),
                               institution.contact_sla_hours)
        lead = d.intent_lead(lead_id=ids.roadshow_lead_id(intent.intent_id), demand_id=demand.demand_id,
                             institution_id=intent.institution_id, at=now, contact_sla_hours=hours,
                             roadshow_id=intent.roadshow_id, intent=intent.summary)
        issued = (topics.lead_topic(intent.institution_id),
                  matching.LeadIssued(lead=mapping.lead_to_pb(lead), demand=mapping.request_to_pb(demand.request),
                                      enterprise=mapping.enterprise_to_pb(demand.enterprise)),
                  ids.event_id("lead-issued", lead.lead_id))
        await self.record_match(event_id, demand.demand_id, (lead,), "", actor="roadshow", announce=[issued])
        return demand

    # -- institutions' outcomes ---------------------------------------------------------------------------------

    async def report_outcome(self, institution_id: str, lead_id: str, outcome: d.Outcome, *,
                             event_id: str | None = None) -> tuple[d.Lead, bool]:
        """Record an institution's report on one of its own leads and move the demand accordingly.

        PermissionDenied if the lead is another institution's; FailedPrecondition for an illegal
        transition (nothing applied); a repeated report changes nothing (changed=False)."""
        now = self.clock()
        v = Violations()
        d.check_key(v, "lead_id", lead_id)
        d.check_outcome(v, outcome, now=now)
        v.raise_if_any()
        async with self.pool.acquire() as conn, conn.transaction():
            owner = await store.lead_owner(conn, lead_id)
            if owner is None:
                raise NotFound(f"no lead with id {lead_id!r}")
            demand_id, owner_id = owner
            if owner_id != institution_id:
                raise PermissionDenied(f"lead {lead_id} is not a lead of institution {institution_id}")
            head = await store.lock_demand(conn, demand_id)  # demand first, then its leads: the withdrawal's order
            assert head is not None
            leads = await store.leads_of_demand(conn, demand_id, lock=True)
            lead = next(x for x in leads if x.lead_id == lead_id)
            if event_id is not None and not await inbox.claim(conn, OUTCOME_CONSUMER, event_id):
                return lead, False
            new, changed = d.apply_outcome(lead, outcome, at=now, actor=f"institution:{institution_id}")
            if not changed:
                return lead, False
            await store.save_lead_outcome(conn, new)
            await store.append_lead_history(conn, [(new, len(lead.history))])
            evts = _lead_events(new, head.enterprise_uscc, len(lead.history) + 1)
            leads = [new if x.lead_id == lead_id else x for x in leads]
            evts += await self._progress(conn, head, leads, new, now)
            if new.status == d.LeadStatus.DISBURSED:  # no longer a first-time borrower, for later demands
                borrowed = await store.mark_borrowed(conn, head.enterprise_uscc, now)
                if borrowed is not None:
                    evts.append(_enterprise_changed(borrowed, False))
            await outbox.append_many(conn, evts, schema=self.schema, occurred_at=now)
        return new, True

    async def _progress(self, conn: asyncpg.Connection, head: store.DemandHead, leads: list[d.Lead],
                        changed: d.Lead, now: datetime) -> list[Event]:
        """Move the demand as its ``leads`` (``changed`` the one that moved) say; once it is FUNDED, close
        the leads other institutions are still working."""
        evts: list[Event] = []
        previous = head.status
        for to in d.demand_progress(head.status, leads, amount_fen=head.amount_fen,
                                    least_acceptable_amount_fen=head.least_acceptable_amount_fen):
            d.check_transition(previous, to)
            change = d.StatusChange(to, now, d.SERVICE_ACTOR, d.progress_reason(to, changed))
            evts.append(await _change_status(conn, head, previous, change))
            previous = to
        if previous == d.DemandStatus.FUNDED and head.status != d.DemandStatus.FUNDED:
            evts += await _save_leads(conn, leads, d.close_leads(
                leads, at=now, actor=d.SERVICE_ACTOR, reason=f"the demand was funded by {changed.institution_id}"),
                head.enterprise_uscc)
        return evts

    async def record_sla_breach(self, event_id: str, lead_id: str, at: datetime) -> bool:
        """The notifier's ``LeadSlaBreached``: a DELIVERED lead moves to SLA_BREACHED (once per event);
        a lead that moved on meanwhile (contacted, declined, withdrawn) or is unknown stays as it is."""
        async with self.pool.acquire() as conn, conn.transaction():
            if not await inbox.claim(conn, SLA_CONSUMER, event_id):
                return False
            owner = await store.lead_owner(conn, lead_id)
            if owner is None:
                logger.warning("SLA breach of an unknown lead; ignored", lead_id=lead_id)
                return False
            head = await store.lock_demand(conn, owner[0])  # demand first, then its leads
            assert head is not None
            leads = await store.leads_of_demand(conn, owner[0], lock=True)
            lead = next(x for x in leads if x.lead_id == lead_id)
            if lead.status != d.LeadStatus.DELIVERED:
                return False
            new = d.lead_transition(lead, d.LeadStatus.SLA_BREACHED, at=at, actor="notifier",
                                    reason=d.sla_breach_reason(head.consent_to_share))
            await store.save_lead_outcome(conn, new)
            await store.append_lead_history(conn, [(new, len(lead.history))])
            evts = _lead_events(new, head.enterprise_uscc, len(lead.history) + 1)
            now = self.clock()
            evts += await self._progress(conn, head, [new if x.lead_id == lead_id else x for x in leads], new, now)
            await outbox.append_many(conn, evts, schema=self.schema, occurred_at=now)
        return True

    # -- queries ----------------------------------------------------------------------------------------------

    async def get(self, demand_id: str) -> d.Demand:
        require("demand_id", demand_id)
        demand = await store.load_demand(self.pool, demand_id)
        if demand is None:
            raise NotFound(f"no demand with id {demand_id!r}")
        return demand

    async def list(self, f: store.DemandFilter, limit: int, offset: int) -> list[d.Demand]:
        v = Violations()
        v.check(len(f.enterprise_uscc) <= 18, "enterprise_uscc", "must be at most 18 characters")
        v.check(all(s in d.DemandStatus._value2member_map_ and s != 0 for s in f.statuses), "statuses",
                "each must be a known, specified status")
        v.check(len(set(f.statuses)) == len(f.statuses), "statuses", "must not list a status twice")
        v.check(f.channel in d.Channel._value2member_map_, "channel", "is not a known channel")
        v.check(len(f.institution_id) <= 63, "institution_id", "must be at most 63 characters")
        v.check(f.submitted_from is None or f.submitted_to is None or f.submitted_from < f.submitted_to,
                "submitted_to", "must be after submitted_from")
        v.raise_if_any()
        async with self.pool.acquire() as conn:
            return await store.load_demands(conn, await store.list_demand_ids(conn, f, limit, offset))

    async def list_leads(self, institution_id: str, status: int, demand_id: str, limit: int, offset: int
                         ) -> list[d.Lead]:
        v = Violations()
        v.check(status in d.LeadStatus._value2member_map_, "status", "is not a known lead status")
        v.check(len(demand_id) <= d.MAX_KEY_CHARS, "demand_id", f"must be at most {d.MAX_KEY_CHARS} characters")
        v.raise_if_any()
        return await store.list_leads(self.pool, institution_id, status, demand_id, limit, offset)
