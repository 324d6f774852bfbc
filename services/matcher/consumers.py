"""Kafka entry points: products published by institutions, the Faust demand agent, and the
watch that restarts the worker when the agent stops making progress."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from types import SimpleNamespace
from typing import Any, TypeVar

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from meshkit import codec, errors, inbox, log, topics
from meshkit.metrics import Metrics
from services.matcher import handlers
from services.matcher.view import LiveCatalog

logger = log.get(__name__)

STALL_EXIT_CODE = 70
T = TypeVar("T")


class ProductsPublished:
    """Handler of ``PRODUCTS_PUBLISHED`` (run by :class:`meshkit.kafka.EventConsumer`): an invalid
    product is a :class:`PoisonMessage`, so it lands on the topic's dead-letter topic."""

    def __init__(self, pool: asyncpg.Pool, catalog: LiveCatalog, schema: str) -> None:
        self.pool = pool
        self.catalog = catalog
        self.schema = schema

    async def __call__(self, env: codec.Envelope) -> None:
        try:
            product = handlers.prepare(env.message.product)  # type: ignore[attr-defined]
        except errors.ValidationFailed as err:
            raise codec.PoisonMessage(f"invalid product: {err}") from None
        async with self.pool.acquire() as conn, conn.transaction():
            if not await inbox.claim(conn, handlers.PRODUCTS_CONSUMER, env.event_id):
                return
            try:
                stored, changed = await handlers.upsert_product(conn, product, schema=self.schema)
            except errors.FailedPrecondition as err:
                raise codec.PoisonMessage(str(err)) from None
        if changed:
            self.catalog.apply(stored)


class LeadStatusChanges:
    """``LeadStatusChanged`` (demand service): institutions' records, re-matching after a decline."""

    def __init__(self, outcomes: handlers.LeadOutcomes) -> None:
        self.outcomes = outcomes

    async def __call__(self, env: codec.Envelope) -> None:
        await self.outcomes.status_changed(env)


class LeadSlaBreaches:
    """``LeadSlaBreached`` (notifier): the lead drops out and the demand is re-routed."""

    def __init__(self, outcomes: handlers.LeadOutcomes) -> None:
        self.outcomes = outcomes

    async def __call__(self, env: codec.Envelope) -> None:
        await self.outcomes.sla_breached(env)


class DemandStatusChanges:
    """``DemandStatusChanged`` (demand service): closed demands leave the open-demand table."""

    def __init__(self, outcomes: handlers.LeadOutcomes) -> None:
        self.outcomes = outcomes

    async def __call__(self, env: codec.Envelope) -> None:
        await self.outcomes.demand_status_changed(env)


def _headers(event: Any) -> codec.Headers:
    headers = event.message.headers
    if isinstance(headers, dict):
        return list(headers.items())
    return list(headers or ())


class DemandAgent:
    """The Faust agent on ``DEMANDS_ACCEPTED``: demands in batches (up to ``batch_size`` records, or
    what arrived within ``within`` seconds), each batch matched in one transaction and acknowledged
    (so Faust may commit its offsets) only after its leads are committed to PostgreSQL.

    Acks are manual: Faust's automatic ack would also ack a record whose handling was cancelled.
    A database error retries the batch with back-off, never skips it; an undecodable record goes to
    the topic's dead-letter topic with the reason. Once stopping, no new batch is started.
    """

    def __init__(self, *, matcher: Callable[[], handlers.DemandMatcher | None], ready: asyncio.Event,
                 metrics: Metrics, service: str,
                 dead_letter: Callable[[Any, str], Awaitable[None]] | None = None,
                 batch_size: int = 200, within: float = 0.005) -> None:
        self.matcher = matcher
        self.dead_letter = dead_letter
        self.ready = ready
        self.metrics = metrics
        self.service = service
        self.batch_size = batch_size
        self.within = within
        self.stopping = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.handled = 0

    async def run(self, stream: Any) -> None:
        async for events in stream.noack_take(self.batch_size, within=self.within):
            await self.ready.wait()
            if self.stopping.is_set():
                await asyncio.Event().wait()  # leave them unacknowledged until the agent is cancelled
            self.idle.clear()
            try:
                await self.handle_many([(e.value, _headers(e), e.message) for e in events])
            finally:
                self.idle.set()
            for event in events:
                await stream.ack(event)
            self.handled += len(events)

    async def handle(self, value: bytes | None, headers: codec.Headers, record: Any) -> None:
        """Match one record; ``record`` has the Kafka record's topic, partition, offset and key."""
        await self.handle_many([(value, headers, record)])

    async def handle_many(self, records: list[tuple[bytes | None, codec.Headers, Any]]) -> None:
        topic = topics.DEMANDS_ACCEPTED.name
        start = time.perf_counter()
        batch: list[handlers.Incoming] = []
        for value, headers, record in records:
            try:
                env = codec.decode(topics.DEMANDS_ACCEPTED, value, headers)
            except codec.PoisonMessage as poison:
                reason = str(poison)
                logger.error("undecodable demand dead-lettered", topic=topic, offset=record.offset, reason=reason)
                if self.dead_letter is not None:
                    original = SimpleNamespace(topic=record.topic, partition=record.partition, offset=record.offset,
                                               key=record.key, value=value, headers=headers)
                    await self._retrying(lambda o=original, r=reason: self.dead_letter(o, r),  # type: ignore[misc]
                                         record.offset)
                self.metrics.messages_consumed.labels(self.service, topic, "dead_lettered").inc()
                continue
            batch.append(handlers.Incoming(env, record.partition))
        if not batch:
            return
        outcomes = await self._retrying(lambda: self._match(batch), records[0][2].offset)
        for outcome in outcomes:
            self.metrics.messages_consumed.labels(self.service, topic, outcome).inc()
        elapsed = (time.perf_counter() - start) / len(batch)
        for _ in batch:
            self.metrics.message_duration.labels(self.service, topic).observe(elapsed)

    async def _match(self, batch: list[handlers.Incoming]) -> list[str]:
        matcher = self.matcher()
        assert matcher is not None, "the matcher is not running"
        return await matcher.handle_batch(batch)

    async def _retrying(self, attempt_once: Callable[[], Awaitable[T]], offset: int) -> T:
        """``attempt_once()`` until it succeeds: failures (database, broker) are retried with
        back-off, never skipped; once stopping, the record is left unacknowledged."""
        attempt = 0
        while True:
            try:
                return await attempt_once()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - transient: retry, never skip
                attempt += 1
                self.metrics.message_retries.labels(self.service, topics.DEMANDS_ACCEPTED.name).inc()
                logger.warning("matching failed; retrying", offset=offset, attempt=attempt, error=repr(err))
                await asyncio.sleep(min(0.1 * 2**attempt, 5.0))
                if self.stopping.is_set():
                    await asyncio.Event().wait()


class StallWatch:
    """Exits the process (code 70, for the supervisor to restart it) when one of this worker's
    partitions of ``topic`` has lag but its group's committed offset has not moved for
    ``stall_seconds``. Lag and commits are read from the broker, not from Faust's own state."""

    def __init__(self, *, bootstrap: str, group_id: str, topic: str,
                 assignment: Callable[[], Iterable[tuple[str, int]]], stall_seconds: float,
                 on_stall: Callable[[str], None] | None = None) -> None:
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.topic = topic
        self.assignment = assignment
        self.stall_seconds = stall_seconds
        self.on_stall = on_stall or _exit
        self._since: dict[TopicPartition, tuple[int, float]] = {}

    async def run(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, client_id=f"{self.group_id}-stall-watch")
        offsets = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False)
        await admin.start()
        await offsets.start()
        try:
            while True:
                await asyncio.sleep(max(0.5, min(5.0, self.stall_seconds / 4)))
                try:
                    await self.check(admin, offsets)
                except asyncio.CancelledError:
                    raise
                except Exception as err:  # noqa: BLE001 - the broker may be restarting
                    logger.warning("stall watch could not read offsets", error=repr(err))
                    self._since.clear()  # time without a broker is not the agent's stall
        finally:
            await offsets.stop()
            await admin.close()

    async def check(self, admin: AIOKafkaAdminClient, offsets: AIOKafkaConsumer) -> None:
        tps = sorted(TopicPartition(t, p) for t, p in self.assignment() if t == self.topic)
        if not tps:
            self._since.clear()
            return
        ends = await offsets.end_offsets(tps)
        committed = await admin.list_consumer_group_offsets(self.group_id, partitions=tps)
        now = time.monotonic()
        for tp in list(self._since):
            if tp not in tps:
                del self._since[tp]
        for tp in tps:
            meta = committed.get(tp)
            position = meta.offset if meta is not None and meta.offset >= 0 else -1
            lag = ends[tp] - max(position, 0)
            seen = self._since.get(tp)
            if lag <= 0 or seen is None or seen[0] != position:
                self._since[tp] = (position, now)
            elif now - seen[1] > self.stall_seconds:
                self.on_stall(f"{tp.topic}/{tp.partition}: lag {lag}, committed offset {position} unchanged "
                              f"for {now - seen[1]:.0f} s")
                self._since[tp] = (position, now)


def _exit(reason: str) -> None:
    logger.critical("demand consumer stalled; exiting for a restart", reason=reason)
    os._exit(STALL_EXIT_CODE)
