"""The demand service's use cases: validate with the pure core, store, and announce through the
outbox, each in one transaction. Shared by the gRPC servicers and the Kafka consumers."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

import asyncpg

from finmesh.demand.v1 import events_pb2 as events
from meshkit import codec, ids, inbox, log, outbox, topics
from meshkit.errors import AlreadyExists, FailedPrecondition, NotFound, ValidationFailed, Violations
from meshkit.kafka import ensure_topics
from meshkit.metrics import Metrics
from services.demand import domain as d
from services.demand import mapping, store

logger = log.get(__name__)

MATCHED_CONSUMER = "demand-matched"


@dataclass(frozen=True)
class Intake:
    """Where a demand came from: its channel, its idempotency key (and the field naming it), who filed it."""

    channel: d.Channel
    key: str
    actor: str
    key_fields: tuple[tuple[str, str], ...]  # (field path, value): each required, at most 128 characters


def _require(field_name: str, value: str) -> None:
    v = Violations()
    v.check(bool(value), field_name, "is required")
    v.raise_if_any()


class Enterprises:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def register(self, e: d.Enterprise) -> tuple[d.Enterprise, bool]:
        """Register ``e``; the same content again is a no-op (created=False), new content updates it."""
        now = codec.now()
        d.validate_enterprise(e, now=now)
        async with self.pool.acquire() as conn, conn.transaction():
            existing = await store.get_enterprise(conn, e.uscc, for_update=True)
            if existing is not None and existing.same_content(e):
                return existing, False
            return await store.save_enterprise(conn, e, now), existing is None

    async def get(self, uscc: str) -> d.Enterprise:
        _require("uscc", uscc)
        async with self.pool.acquire() as conn:
            e = await store.get_enterprise(conn, uscc)
        if e is None:
            raise NotFound(f"no enterprise with USCC {uscc!r}")
        return e


class Institutions:
    def __init__(self, pool: asyncpg.Pool, bootstrap: str) -> None:
        self.pool = pool
        self.bootstrap = bootstrap

    async def register(self, i: d.Institution) -> tuple[d.Institution, bool]:
        """Register ``i`` and create its lead topic on the broker before answering."""
        i = d.validate_institution(i)
        spec = topics.lead_topic(i.institution_id)
        i = replace(i, lead_topic=spec.name)
        await ensure_topics(self.bootstrap, [spec])  # a bank system can subscribe as soon as we answer
        async with self.pool.acquire() as conn, conn.transaction():
            existing = await store.get_institution(conn, i.institution_id, for_update=True)
            if existing is not None and existing.same_content(i):
                return existing, False
            return await store.save_institution(conn, i, codec.now()), existing is None

    async def get(self, institution_id: str) -> d.Institution:
        _require("institution_id", institution_id)
        i = await store.get_institution(self.pool, institution_id)
        if i is None:
            raise NotFound(f"no institution with id {institution_id!r}")
        return i

    async def list(self, limit: int, offset: int) -> list[d.Institution]:
        return await store.list_institutions(self.pool, limit, offset)


class Demands:
    def __init__(self, pool: asyncpg.Pool, metrics: Metrics, *, schema: str) -> None:
        self.pool = pool
        self.metrics = metrics
        self.schema = schema

    async def submit(self, intake: Intake, request: d.DemandRequest) -> tuple[d.Demand, bool]:
        """Validate, store and announce a demand, idempotently on ``intake.key``.

        The same key with the same content returns the original (created=False); with other
        content it raises :class:`AlreadyExists` and changes nothing. One transaction of four
        statements on the happy path: context (enterprise + existing hash), demand + history,
        outbox row, notify.
        """
        now = codec.now()
        v = Violations()
        for path, value in intake.key_fields:
            d.check_key(v, path, value)
        d.check_demand(v, request, now=now)
        try:
            return await self._submit(intake, request, v, now)
        except ValidationFailed:
            self.metrics.demands_rejected.labels(intake.channel.label).inc()
            raise

    async def _submit(self, intake: Intake, request: d.DemandRequest, v: Violations, now: datetime
                      ) -> tuple[d.Demand, bool]:
        key_paths = {path for path, _ in intake.key_fields}
        if any(f.field in key_paths for f in v.items):
            v.raise_if_any()  # without a usable key there is nothing to look up
        demand_id = ids.demand_id(intake.channel.label, intake.key)
        digest = request.content_hash()
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                enterprise, existing = await store.intake_context(conn, request.enterprise_uscc, demand_id)
                created: d.Demand | None = None
                if existing is None:
                    if enterprise is None and d.valid_uscc(request.enterprise_uscc):
                        v.add("demand.enterprise_uscc", "no enterprise is registered with this code")
                    v.raise_if_any()
                    assert enterprise is not None
                    demand = d.accept(demand_id=demand_id, request=request, channel=intake.channel,
                                      idempotency_key=intake.key, actor=intake.actor, enterprise=enterprise, now=now)
                    if await store.insert_demand(conn, demand):
                        await outbox.append(
                            conn, topics.DEMANDS_ACCEPTED, events.DemandAccepted(demand=mapping.demand_to_pb(demand)),
                            schema=self.schema, event_id=ids.event_id("demand-accepted", demand_id), occurred_at=now,
                        )
                        created = demand
                    else:
                        existing = await store.content_hash(conn, demand_id)  # a concurrent twin won the race
            if created is not None:
                self.metrics.demands_accepted.labels(intake.channel.label).inc()
                return created, True
            if existing != digest:
                raise AlreadyExists(
                    f"idempotency key {intake.key!r} was already used for a different demand ({demand_id})"
                )
            original = await store.load_demand(conn, demand_id)
            assert original is not None
            return original, False

    async def get(self, demand_id: str) -> d.Demand:
        _require("demand_id", demand_id)
        async with self.pool.acquire() as conn:
            demand = await store.load_demand(conn, demand_id)
        if demand is None:
            raise NotFound(f"no demand with id {demand_id!r}")
        return demand

    async def record_match(self, event_id: str, demand_id: str, leads: tuple[d.Lead, ...], explanation: str) -> None:
        """Store the matcher's leads and move the demand to LEADS_ISSUED or NO_MATCH, once per event."""
        now = codec.now()
        async with self.pool.acquire() as conn, conn.transaction():
            if not await inbox.claim(conn, MATCHED_CONSUMER, event_id):
                return
            current = await store.lock_demand(conn, demand_id)
            if current is None:
                logger.warning("match outcome for an unknown demand; ignored", demand_id=demand_id)
                return
            status, _submitted_at = current
            try:
                outcome = d.match_outcome(status, leads, explanation, at=now)
            except FailedPrecondition as err:  # e.g. withdrawn meanwhile: the outcome no longer applies
                logger.warning("match outcome ignored", demand_id=demand_id, reason=str(err))
                return
            await store.insert_leads(conn, outcome.leads)
            await store.record_status(conn, demand_id, outcome.change,
                                      no_match_explanation=outcome.no_match_explanation)
