"""The transactional outbox and its relay.

A service writes an event with :func:`append` on the same connection, inside the same
transaction, as the state change it announces; so both are committed or neither is. The
:class:`OutboxRelay` publishes committed rows in order and deletes them once the broker
has acknowledged them (in the same round trip as it reads the next rows), vacuuming the table
itself every ``vacuum_every`` deleted rows so that it stays small between autovacuum runs (a
minute apart by default, when a busy service has deleted a hundred thousand rows). It wakes on
PostgreSQL ``NOTIFY`` (so an event leaves within milliseconds) and also polls, and only
one relay per schema publishes at a time (an advisory lock), which keeps per-key order
across replicas. A crash between the broker's acknowledgement and the delete republishes
the same event id: consumers dedupe on it. So do they when a database crash loses the
relay's last deletes, which are committed without waiting for the disk (the events they
remove are on the broker already).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import signal
import sys
import time
import zlib
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from aiokafka import AIOKafkaProducer
from google.protobuf.message import Message
from pydantic import Field

from meshkit import codec, log
from meshkit.kafka import ensure_topics, list_topics, make_producer
from meshkit.metrics import Metrics
from meshkit.metrics import serve as serve_metrics
from meshkit.settings import ServiceSettings, load
from meshkit.topics import TopicSpec, metric_topic, spec_for

logger = log.get(__name__)


def channel(schema: str) -> str:
    return f"outbox_{schema}"


async def append(
    conn: asyncpg.Connection,
    spec: TopicSpec,
    message: Message,
    *,
    schema: str,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
) -> str:
    """Add an event for ``spec`` to the outbox, in the caller's transaction; returns its event id."""
    event_id = event_id or codec.new_event_id()
    await append_many(conn, [(spec, message, event_id)], schema=schema, occurred_at=occurred_at)
    return event_id


@dataclass(frozen=True, slots=True)
class Encoded:
    """An event for the outbox, already serialised (see :mod:`meshkit.wire`): its topic, record
    key, payload (a message of ``spec.message``) and event id."""

    spec: TopicSpec
    key: bytes
    payload: bytes
    event_id: str


async def append_many(conn: asyncpg.Connection, items: list[tuple[TopicSpec, Message, str]], *, schema: str,
                      occurred_at: datetime | None = None) -> None:
    """Add several events ``(spec, message, event_id)`` at once, in the caller's transaction."""
    for s, m, _ in items:
        assert not s.is_template, "use topics.lead_topic(...) for a concrete topic"
        assert s.message is not None and isinstance(m, s.message), (s.name, type(m))
    await append_encoded(conn, [Encoded(s, s.key_of(m), m.SerializeToString(), eid) for s, m, eid in items],
                         schema=schema, occurred_at=occurred_at)


def columns(items: list[Encoded]) -> tuple[list[str], list[str], list[bytes], list[bytes], list[str]]:
    """The arguments of the SQL function ``outbox_append`` for ``items``: event ids, topics, keys,
    payloads and event types (for a service's own SQL function that appends in one round trip).
    Event ids go as text: asyncpg encodes a UUID's text five times faster than a ``uuid.UUID``."""
    return ([i.event_id for i in items], [i.spec.name for i in items], [i.key for i in items],
            [i.payload for i in items], [i.spec.event_type for i in items])


async def append_encoded(conn: asyncpg.Connection, items: list[Encoded], *, schema: str,
                         occurred_at: datetime | None = None) -> None:
    """Add several serialised events at once, in order, in the caller's transaction, and wake the
    relay: one round trip (the SQL function ``outbox_append``)."""
    if not items:
        return
    await conn.execute("SELECT outbox_append($1, $2, $3, $4, $5, $6, $7)", *columns(items),
                       occurred_at or codec.now(), channel(schema))


class OutboxRelay:
    """Publishes the outbox of ``schema`` to Kafka, in order, at least once."""

    def __init__(self, *, database_url: str, schema: str, bootstrap: str, service: str, metrics: Metrics,
                 batch_size: int = 1000, poll_seconds: float = 1.0, send_timeout: float = 15.0,
                 vacuum_every: int = 10_000) -> None:
        self.database_url = database_url
        self.schema = schema
        self.bootstrap = bootstrap
        self.service = service
        self.metrics = metrics
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self.send_timeout = send_timeout
        self.vacuum_every = vacuum_every
        self._deleted = 0  # rows deleted since the last vacuum
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._known_topics: set[str] = set()
        self.published = 0

    async def stop(self) -> None:
        """Stop after the pass in progress (which is allowed to finish: a drain)."""
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        """Hold the relay lock and publish until stopped; survive database and broker restarts."""
        while not self._stopping.is_set():
            try:
                await self._lead()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - reconnect and carry on
                self.metrics.outbox_failures.labels(self.service).inc()
                logger.warning("outbox relay failed; retrying", schema=self.schema, error=repr(err))
                await self._sleep(1.0)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass
        self._wake.clear()

    async def _lead(self) -> None:
        # The relay only deletes rows it has published: a delete lost in a database crash publishes
        # those events again, which consumers dedupe, so its commits need not wait for the disk.
        # The outbox is a queue: a few live rows among many dead ones between vacuums. Statistics taken
        # while it was empty make the planner scan all of it for each pass; its reads and deletes must
        # go by the primary key.
        conn: asyncpg.Connection = await asyncpg.connect(
            self.database_url, server_settings={"search_path": self.schema, "application_name": "outbox-relay",
                                                "synchronous_commit": "off", "enable_seqscan": "off"}
        )
        producer: AIOKafkaProducer | None = None
        try:
            lock = zlib.crc32(f"outbox:{self.schema}".encode())
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock):
                await self._sleep(2.0)  # another replica relays this schema
                if self._stopping.is_set():
                    return
            await conn.add_listener(channel(self.schema), lambda *_: self._wake.set())
            producer = make_producer(self.bootstrap, f"{self.service}-outbox", linger_ms=0)
            await asyncio.wait_for(producer.start(), self.send_timeout)
            await self._learn_all(producer)
            published: list[int] = []
            while True:
                deleted = len(published)  # the pass deletes them before it reads
                published = await self._pass(conn, producer, published)
                await self._vacuum_if_due(conn, deleted)
                if not published:
                    if self._stopping.is_set():
                        return
                    await self._sleep(self.poll_seconds)
        finally:
            if producer is not None:
                try:
                    await asyncio.wait_for(producer.stop(), 10)
                except Exception:  # noqa: BLE001
                    pass
            await conn.close(timeout=5)

    async def _learn_all(self, producer: AIOKafkaProducer) -> None:
        """Have the producer track every topic of the cluster, in one metadata request.

        An aiokafka producer that meets a topic it does not track fetches the metadata of every
        topic it tracks; meeting thousands of lead topics one by one would cost quadratic time.
        """
        existing = await list_topics(self.bootstrap, self.send_timeout)
        self._known_topics = existing
        await asyncio.wait_for(producer.client.set_topics(existing), self.send_timeout)

    async def _learn(self, producer: AIOKafkaProducer, new_topics: set[str]) -> None:
        """Create the topics of a pass that do not exist yet, and track them all at once."""
        await ensure_topics(self.bootstrap, [spec_for(t) for t in new_topics], self.send_timeout,
                            existing=self._known_topics)
        self._known_topics |= new_topics
        await asyncio.wait_for(producer.client.set_topics(self._known_topics), self.send_timeout)

    async def _vacuum_if_due(self, conn: asyncpg.Connection, deleted: int) -> None:
        """Vacuum the outbox once ``vacuum_every`` rows have been deleted since the last time, between
        passes (so the events in hand are not held up by it): it frees their space for new inserts."""
        self._deleted += deleted
        if self._deleted >= self.vacuum_every:
            await conn.execute("VACUUM outbox")
            self._deleted = 0

    async def _pass(self, conn: asyncpg.Connection, producer: AIOKafkaProducer, published: list[int]) -> list[int]:
        """Delete the rows of the pass before (``published``, acknowledged by the broker) and read the
        next ones, in one round trip; publish those; returns their ids (none: the outbox was empty)."""
        rows = await conn.fetch(
            "WITH gone AS (DELETE FROM outbox WHERE id = ANY($2::bigint[]))"
            " SELECT id, event_id, topic, key, payload, event_type, occurred_at FROM outbox"
            " WHERE id <> ALL($2::bigint[]) ORDER BY id LIMIT $1",  # the delete is not seen by this read
            self.batch_size, published,
        )
        if len(rows) < self.batch_size:
            self.metrics.outbox_pending.labels(self.service).set(len(rows))
        if not rows:
            return []
        new_topics = {r["topic"] for r in rows} - self._known_topics
        if new_topics:
            await self._learn(producer, new_topics)
        async def send_all() -> None:
            futures = []
            for r in rows:
                headers = codec.make_headers(r["event_type"], self.service, str(r["event_id"]), r["occurred_at"])
                futures.append(await producer.send(r["topic"], value=r["payload"], key=r["key"], headers=headers))
            await asyncio.gather(*futures)

        # One bound for the whole pass: enqueueing is cheap, and the broker acknowledges in batches.
        await asyncio.wait_for(send_all(), self.send_timeout)
        acked = time.time()
        lag = self.metrics.outbox_lag.labels(self.service)
        per_family: dict[str, int] = {}
        for r in rows:
            lag.observe(max(0.0, acked - r["occurred_at"].timestamp()))
            family = metric_topic(r["topic"])
            per_family[family] = per_family.get(family, 0) + 1
        for family, n in per_family.items():
            self.metrics.messages_produced.labels(self.service, family).inc(n)
        self.metrics.outbox_published.labels(self.service).inc(len(rows))
        self.published += len(rows)
        return [r["id"] for r in rows]


# -- the relay in a process of its own -----------------------------------------------------------------------


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Have the kernel send SIGTERM to the child when the service that started it dies."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class RelayProcess:
    """The relay of ``schema`` as a child process (``python -m meshkit.outbox``), so its broker and
    database work runs on another core instead of inside the service's event loop.

    Same interface as :class:`OutboxRelay`: :meth:`run` keeps the child running (restarting it if
    it dies), :meth:`stop` has it finish the pass in hand and drain. The child dies with the
    service and serves the relay's metrics on ``metrics_port`` (0: any free port, logged). Only
    one relay per schema publishes at a time, whichever process it runs in.
    """

    def __init__(self, settings: ServiceSettings, *, schema: str, metrics_port: int) -> None:
        self.env = {**os.environ, "SERVICE_NAME": settings.service_name, "OUTBOX_SCHEMA": schema,
                    "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
                    "DATABASE_URL": settings.database_url, "METRICS_PORT": str(metrics_port),
                    "GRPC_PORT": "0", "LOG_LEVEL": settings.log_level}
        self.grace = settings.shutdown_grace_seconds
        self.proc: asyncio.subprocess.Process | None = None
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        while not self._stopping.is_set():
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "meshkit.outbox", env=self.env, preexec_fn=_die_with_parent)
            code = await self.proc.wait()
            if not self._stopping.is_set():
                logger.warning("outbox relay process exited; restarting", code=code)
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        """Ask the child to drain and exit (``run`` returns once it has)."""
        self._stopping.set()
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)


class RelaySettings(ServiceSettings):
    outbox_schema: str = Field(description="The schema whose outbox this relay process publishes.")


def main() -> None:
    """The relay process: publishes ``OUTBOX_SCHEMA``'s outbox until SIGTERM, then drains."""
    settings = load(RelaySettings)
    log.configure(settings.service_name, settings.log_level)

    async def run() -> None:
        metrics = Metrics()
        port, server = serve_metrics(metrics, settings.metrics_port)
        relay = OutboxRelay(database_url=settings.database_url, schema=settings.outbox_schema,
                            bootstrap=settings.kafka_bootstrap_servers, service=settings.service_name,
                            metrics=metrics)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(relay.stop()))
        logger.info("outbox relay process", schema=settings.outbox_schema, metrics_port=port)
        try:
            await relay.run()
        finally:
            server.shutdown()

    asyncio.run(run())


if __name__ == "__main__":
    main()
