"""Kafka: topic creation from the registry, producers, and consumers that never hang or skip.

:class:`EventConsumer` consumes one topic in a consumer group: it decodes each record with
the protobuf codec, hands it to the service's handler, dead-letters records that can never
be processed (with the reason and origin in headers), retries failures that may pass
(a database restart, a broker restart) without skipping, dead-letters a record that keeps failing
for any other reason (a defect, or data the handler cannot take) after ``attempts`` tries, with the
error (so one record never stops its partition and what waits on it), and commits offsets only after
the records are handled: the offsets handled are committed at most every ``commit_every``
seconds (one commit in flight at a time, while the next records are handled), so a commit's
round trip never delays a record, and a busy consumer does not send the broker a commit per
batch (each request costs both sides system calls; on this machine, at 300 demands/s, the
matcher spent a tenth of its time sending commits). A crash or a rebalance hands the records
handled since the last commit to a handler again: handlers are idempotent. Commits and fetches are
bounded by timeouts, and a watchdog restarts a consumer that stops making progress.

A consumer may also take a ``batch_handler``: it receives the usable records fetched so far
at once (up to ``max_records``, per-partition order kept), so a service can apply them in one
transaction. If a batch raises :class:`meshkit.codec.PoisonMessage`, its records are handled
again one at a time, so that only the culprit is dead-lettered; so are a batch's records whose
batch (either stage) keeps failing for a reason that does not pass. A batch handler may work in two
stages: it returns the rest of its work (a :data:`Finish`, e.g. the transaction that stores what
it computed), and the consumer runs that while it hands the next batch to the handler; each
batch's rest starts after the one before it has ended, and its offsets are committed only after it.
Records are fetched while the
ones before them are handled (see :class:`_Prefetch`), so one that arrives during a batch is
handed over with the next, not after another fetch. ``on_assigned`` hears each new assignment
of partitions (before records of them are handed over). ``assigned`` is set once the consumer
has joined its group and received its share, even an empty one (more members than
partitions): it is ready.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError, TopicAlreadyExistsError, for_code
from aiokafka.partitioner import DefaultPartitioner

from meshkit import codec, db, errors, log
from meshkit.metrics import Metrics
from meshkit.topics import BROKER_MAX_MESSAGE_BYTES, TopicSpec, replication_factor

logger = log.get(__name__)
T = TypeVar("T")

Handler = Callable[[codec.Envelope], Awaitable[None]]
Finish = Callable[[], Awaitable[None]]
# A batch handler returns None when it is done, or the rest of its work (see the module's notes):
# that must be idempotent (it is retried until it passes) and find no poison (that is the first stage's).
BatchHandler = Callable[[list[codec.Envelope]], Awaitable[Finish | None]]
AssignmentListener = Callable[[set[TopicPartition]], None]


def may_pass(err: BaseException) -> bool:
    """Whether a handler's failure may pass by itself, so its record is retried for ever: the
    network, the broker or the database unreachable or busy (:func:`meshkit.db.transient`), or
    something not there yet (:class:`meshkit.errors.Unavailable`). Anything else is a defect or
    data the handler cannot take: retried a few times, then dead-lettered with the error."""
    return isinstance(err, (OSError, KafkaError, errors.Unavailable)) or db.transient(err)


class _GaveUp(Exception):
    """A step failed ``attempts`` times for reasons that do not pass by themselves."""

    def __init__(self, attempts: int, error: Exception) -> None:
        super().__init__(f"failed {attempts} times, last with {error!r}")
        self.error = error


async def ensure_topics(bootstrap: str, specs: Iterable[TopicSpec], timeout: float = 30.0,
                        existing: set[str] | None = None) -> list[str]:
    """Create the topics of ``specs`` and their dead-letter topics that do not exist yet, with their
    partitions, configs and :func:`~meshkit.topics.replication_factor` for the cluster's size
    (``existing``: the topics known to exist, to skip listing the cluster's)."""
    specs = list(specs)
    specs += [s.dead_letter for s in specs if s.dead_letter is not None and s.dead_letter not in specs]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    await asyncio.wait_for(admin.start(), timeout)
    try:
        existing = existing if existing is not None else set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if not missing:
            return []
        replicas = replication_factor(len((await admin.describe_cluster())["brokers"]))
        created = []
        for spec in missing:
            try:
                await admin.create_topics(
                    [NewTopic(spec.name, spec.partitions, replicas, topic_configs=spec.configs())]
                )
                created.append(spec.name)
            except TopicAlreadyExistsError:
                pass
        return created
    finally:
        await admin.close()


async def align_topic_configs(bootstrap: str, specs: Iterable[TopicSpec], timeout: float = 30.0,
                              existing: set[str] | None = None) -> list[str]:
    """Give each existing topic of ``specs`` exactly its declared configs (:meth:`TopicSpec.configs`)
    where they differ: a topic created by an older release keeps the configs it was created with
    otherwise. Returns the names of the topics altered; topics that do not exist are left out
    (``existing``: the topics known to exist, to skip listing the cluster's)."""
    declared = {s.name: s.configs() for s in specs}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    await asyncio.wait_for(admin.start(), timeout)
    try:
        existing = existing if existing is not None else set(await admin.list_topics())
        names = sorted(set(declared) & existing)
        if not names:
            return []
        described = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, n, dict.fromkeys(declared[n])) for n in names])
        differing = []
        for response in described:
            for error_code, error_message, _, name, entries, *_ in response.resources:
                _raise_for(error_code, error_message, name)
                if {e[0]: e[1] for e in entries} != declared[name]:
                    differing.append(name)
        if differing:  # AlterConfigs sets a topic's whole set of configs: the declared ones, all of them
            altered = await admin.alter_configs(
                [ConfigResource(ConfigResourceType.TOPIC, n, declared[n]) for n in differing])
            for response in altered:
                for error_code, error_message, _, name, *_ in response.resources:
                    _raise_for(error_code, error_message, name)
        return differing
    finally:
        await admin.close()


def _raise_for(error_code: int, message: str | None, topic: str) -> None:
    if error_code:
        raise for_code(error_code)(f"topic {topic}: {message or 'error'}")


async def list_topics(bootstrap: str, timeout: float = 30.0) -> set[str]:
    """The names of every topic on the cluster."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    await asyncio.wait_for(admin.start(), timeout)
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


def partition_of(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """aiokafka's default partitioner (the murmur2 hash of the key, as Java clients place records),
    without hashing when the topic has one partition, as every institution's lead topic does: the
    pure-Python hash was a tenth of the matcher's outbox relay's CPU."""
    if len(all_partitions) == 1:
        return all_partitions[0]
    return _DEFAULT_PARTITIONER(key, all_partitions, available)


_DEFAULT_PARTITIONER = DefaultPartitioner()


def make_producer(bootstrap: str, client_id: str, *, linger_ms: int = 1, request_timeout_s: float = 10.0
                  ) -> AIOKafkaProducer:
    """An idempotent producer that waits for all in-sync replicas."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        partitioner=partition_of,
        enable_idempotence=True,
        acks="all",
        linger_ms=linger_ms,
        request_timeout_ms=int(request_timeout_s * 1000),
        max_request_size=BROKER_MAX_MESSAGE_BYTES,
        max_batch_size=256 * 1024,
    )


async def dead_letter(producer: AIOKafkaProducer, spec: TopicSpec, record: ConsumerRecord, reason: str,
                      consumer: str, kind: str = codec.UNUSABLE) -> None:
    """Publish ``record`` unchanged to ``spec``'s dead-letter topic with why (``kind``: the record
    is unusable, or its handler kept failing) and where from."""
    assert spec.dead_letter is not None, f"{spec.name} has no dead-letter topic"
    headers = [(k, v) for k, v in (record.headers or ()) if not k.startswith("dlq-")]
    headers += [
        (codec.DLQ_REASON, reason.encode()[:4000]),
        (codec.DLQ_ORIGIN, f"{record.topic}/{record.partition}@{record.offset}".encode()),
        (codec.DLQ_CONSUMER, consumer.encode()),
        (codec.DLQ_KIND, kind.encode()),
    ]
    value = record.value or b""
    if len(value) > BROKER_MAX_MESSAGE_BYTES - 64 * 1024:
        value = value[: BROKER_MAX_MESSAGE_BYTES - 64 * 1024]
        headers.append(("dlq-truncated", b"true"))
    await producer.send_and_wait(spec.dead_letter.name, value=value, key=record.key, headers=headers)


class EventConsumer:
    """Consumes ``spec`` in group ``group_id`` and calls ``handler`` once per usable record.

    The handler must be idempotent (use :mod:`meshkit.inbox`); raising
    :class:`meshkit.codec.PoisonMessage` dead-letters the record, an exception that may pass
    (:func:`may_pass`) is retried with back-off until it passes or the consumer stops, any other
    is retried until the record has been tried ``attempts`` times, then the record is dead-lettered
    with the error.

    With ``batch_handler``, the usable records of each fetch (up to ``max_records``) are handed
    over together, each partition's in order. It must be idempotent too and should apply a batch
    atomically: any other exception retries the whole batch; :class:`PoisonMessage`, or a batch
    (or its rest) tried ``attempts`` times for reasons that do not pass, makes the consumer handle
    the batch's records one at a time — with ``handler`` if given, else with ``batch_handler`` on
    one-record batches — dead-lettering only those that fail so again.

    A consumer whose handler depends on what another learns (a contact policy that dates its
    leads) starts once that one has :meth:`caught_up`: pass it as an ``after`` condition.
    """

    def __init__(
        self,
        *,
        spec: TopicSpec,
        group_id: str,
        bootstrap: str,
        handler: Handler | None,
        producer: AIOKafkaProducer,
        metrics: Metrics,
        service: str,
        stall_seconds: float = 60.0,
        max_records: int = 500,
        auto_offset_reset: str = "earliest",
        batch_handler: BatchHandler | None = None,
        on_assigned: AssignmentListener | None = None,
        commit_every: float = 0.5,
        after: Iterable[Callable[[], Awaitable[bool]]] = (),
        attempts: int = 5,
    ) -> None:
        assert handler is not None or batch_handler is not None, "a handler or a batch handler is required"
        self.spec = spec
        self.group_id = group_id
        self.bootstrap = bootstrap
        self.handler = handler
        self.batch_handler = batch_handler
        self.producer = producer
        self.metrics = metrics
        self.service = service
        self.stall_seconds = stall_seconds
        self.max_records = max_records
        self.attempts = attempts
        self.auto_offset_reset = auto_offset_reset
        self.on_assigned = on_assigned
        self.after = tuple(after)  # conditions to hold before the first record is consumed
        self._stopping = asyncio.Event()
        self._progress = time.monotonic()
        self._consumer: AIOKafkaConsumer | None = None
        self.commit_every = commit_every
        self._committing: asyncio.Task[None] | None = None
        self._commit_lock = asyncio.Lock()  # one commit at a time: a later one never lands before an earlier
        self._to_commit: dict[TopicPartition, int] = {}  # handled, not committed yet
        self._last_commit = 0.0
        self._flush = asyncio.Event()  # commit what is handled now (the session ends)
        self._prefetch: _Prefetch | None = None
        self.assigned = asyncio.Event()
        self._backlog: dict[TopicPartition, int] | None = None  # the topic's end offsets when first asked
        self._caught_up = False

    # -- life cycle ---------------------------------------------------------------
    async def run(self) -> None:
        """Once every ``after`` condition holds, run until :meth:`stop`, restarting the Kafka consumer
        whenever it stalls or fails."""
        await self._until_after()
        while not self._stopping.is_set():
            session = asyncio.create_task(self._session(), name=f"consume:{self.spec.name}")
            watchdog = asyncio.create_task(self._watchdog(session))
            try:
                await session
            except asyncio.CancelledError:
                if self._stopping.is_set():
                    break
                if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    raise
                logger.warning("consumer stalled; restarting", topic=self.spec.name, group=self.group_id)
                self.metrics.consumer_restarts.labels(self.service, self.spec.name).inc()
            except Exception:
                logger.exception("consumer failed; restarting", topic=self.spec.name, group=self.group_id)
                self.metrics.consumer_restarts.labels(self.service, self.spec.name).inc()
                await self._sleep(1.0)
            finally:
                watchdog.cancel()
                await self._close_consumer()

    async def stop(self) -> None:
        self._stopping.set()

    async def _until_after(self) -> None:
        while self.after and not self._stopping.is_set():
            try:
                if all([await condition() for condition in self.after]):
                    return
            except Exception as err:  # noqa: BLE001 - asked again (the broker or database may be back)
                logger.warning("consumer waits on its start condition", topic=self.spec.name, error=repr(err))
            await self._sleep(0.1)

    async def caught_up(self) -> bool:
        """Whether the group has handled and committed everything the topic held when this was first
        asked (by this worker or by the others of its group, on every partition): what a service
        learns from a topic before it serves, such as the institutions' contact SLAs it dates leads
        by. Stays true once true."""
        consumer = self._consumer
        if self._caught_up or consumer is None or not self.assigned.is_set():
            return self._caught_up
        async with asyncio.timeout(10):  # asked again later (aiokafka retries some errors for ever)
            if self._backlog is None:
                partitions = consumer.partitions_for_topic(self.spec.name)
                if not partitions:
                    return False  # its metadata is not in yet
                tps = [TopicPartition(self.spec.name, p) for p in partitions]
                ends, firsts = await consumer.end_offsets(tps), await consumer.beginning_offsets(tps)
                # A partition whose records are all past their retention has nothing to handle.
                self._backlog = {tp: end for tp, end in ends.items() if end > firsts.get(tp, 0)}
            for tp, end in self._backlog.items():
                if (await consumer.committed(tp) or 0) < end:
                    return False
        self._caught_up = True
        return True

    async def _watchdog(self, session: asyncio.Task) -> None:
        while not session.done():
            await asyncio.sleep(min(5.0, self.stall_seconds / 4))
            if time.monotonic() - self._progress > self.stall_seconds:
                session.cancel()
                return

    async def _on_revoked(self, partitions: set[TopicPartition]) -> None:
        if self._prefetch is not None:
            self._prefetch.forget(partitions)
        handled = {tp: self._to_commit.pop(tp) for tp in partitions if tp in self._to_commit}
        if handled and self._consumer is not None:  # before the partitions move: their new owner starts there
            try:
                await self._commit(self._consumer, handled)
            except Exception as err:  # noqa: BLE001 - not committed: their new owner handles them again
                logger.warning("offsets of revoked partitions not committed", topic=self.spec.name, error=repr(err))

    def _on_assigned(self, partitions: set[TopicPartition]) -> None:
        self.assigned.set()
        if self.on_assigned is not None:
            self.on_assigned(partitions)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def _close_consumer(self) -> None:
        consumer, self._consumer = self._consumer, None
        self.assigned.clear()
        if consumer is not None:
            try:
                await asyncio.wait_for(consumer.stop(), 10)
            except Exception:  # noqa: BLE001 - closing a broken consumer must not fail the loop
                logger.warning("consumer did not close cleanly", topic=self.spec.name)

    # -- one consumer session -------------------------------------------------------
    async def _session(self) -> None:
        self._progress = time.monotonic()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            client_id=f"{self.service}-{self.spec.name}",
            enable_auto_commit=False,
            auto_offset_reset=self.auto_offset_reset,
            max_poll_records=self.max_records,
            fetch_max_wait_ms=100,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
            rebalance_timeout_ms=10_000,
            request_timeout_ms=15_000,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        self._consumer = consumer
        await asyncio.wait_for(consumer.start(), 30)
        consumer.subscribe([self.spec.name], listener=_Listener(self._on_assigned, self._on_revoked))
        try:
            await self._consume(consumer)
        finally:
            await self._commit_settled()

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        self._prefetch = prefetch = _Prefetch(consumer, limit=2 * self.max_records)
        filling = asyncio.create_task(prefetch.fill(), name=f"fetch:{self.spec.name}")
        try:
            await self._handle_fetched(consumer, prefetch, filling)
        finally:
            self._prefetch = None
            filling.cancel()
            await asyncio.gather(filling, return_exceptions=True)

    async def _handle_fetched(self, consumer: AIOKafkaConsumer, prefetch: _Prefetch, filling: asyncio.Task[None]
                              ) -> None:
        finishing: asyncio.Task[bool] | None = None  # the rest of the batch before, then its commit
        try:
            while not self._stopping.is_set():
                batch = await prefetch.take(self.max_records, 0.5, filling)
                self._progress = time.monotonic()
                if not batch:
                    self._raise_failed_commit()  # idle: no next commit would tell
                    continue
                fetched_at = time.time()
                age = self.metrics.record_age.labels(self.service, self.spec.name)
                for records in batch.values():
                    for record in records:
                        age.observe(max(0.0, fetched_at - record.timestamp / 1000))
                if self.batch_handler is not None:
                    started = time.perf_counter()
                    handled = await self._process_batch(batch, finishing)
                    if handled is None:
                        return  # stopping: leave the batch uncommitted, it will be redelivered
                    if finishing is not None and not await finishing:
                        return
                    offsets = {tp: records[-1].offset + 1 for tp, records in batch.items() if records}
                    finishing = asyncio.create_task(self._finish(consumer, *handled, offsets, started))
                    self._progress = time.monotonic()
                    continue
                offsets: dict[TopicPartition, int] = {}
                for tp, records in batch.items():
                    for record in records:
                        if not await self._process(record):
                            return  # stopping: leave the rest uncommitted, it will be redelivered
                        offsets[tp] = record.offset + 1
                        self._progress = time.monotonic()
                self._commit_after(consumer, offsets)
        finally:
            if finishing is not None:
                if self._stopping.is_set():
                    await finishing  # the batch in hand is stored and committed (or given up: redelivered)
                else:
                    finishing.cancel()
                    await asyncio.gather(finishing, return_exceptions=True)

    def _raise_failed_commit(self) -> None:
        """A commit that failed ends the session: it restarts from the last commit that passed."""
        if self._committing is not None and self._committing.done():
            committing, self._committing = self._committing, None
            committing.result()

    def _commit_after(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        """Add ``offsets`` (handled) to the next commit, and have one scheduled."""
        self._to_commit.update(offsets)
        self._raise_failed_commit()
        if self._committing is None:
            self._committing = asyncio.create_task(self._commit_handled(consumer))

    async def _commit_handled(self, consumer: AIOKafkaConsumer) -> None:
        """Commit the offsets handled, at most every ``commit_every`` seconds, until none are left."""
        while self._to_commit:
            wait = self._last_commit + self.commit_every - time.monotonic()
            if wait > 0 and not self._flush.is_set():
                try:
                    await asyncio.wait_for(self._flush.wait(), wait)
                except TimeoutError:
                    pass
            offsets, self._to_commit = self._to_commit, {}
            self._last_commit = time.monotonic()
            await self._commit(consumer, offsets)

    async def _finish(self, consumer: AIOKafkaConsumer, finish: Finish | None, records: list[ConsumerRecord],
                      offsets: dict[TopicPartition, int], started: float) -> bool:
        """Run a batch's rest until it passes (it must be idempotent), or its records one by one if it
        keeps failing for reasons that do not pass, then commit its offsets; False if stopping first."""
        topic = self.spec.name
        handled = len(records)
        if finish is not None:
            try:
                if not (await self._until_passes(finish, "batch handler failed; retrying", give_up=True,
                                                 records=handled))[0]:
                    return False
            except _GaveUp as gave_up:
                logger.error("the rest of a batch keeps failing; handling its records one by one", topic=topic,
                             records=handled, error=repr(gave_up.error))
                if not await self._one_by_one(records, None):
                    return False
                handled = 0  # counted one by one
        if handled:
            self.metrics.messages_consumed.labels(self.service, topic, "processed").inc(handled)
            each = (time.perf_counter() - started) / handled
            duration = self.metrics.message_duration.labels(self.service, topic)
            for _ in range(handled):
                duration.observe(each)
        self._progress = time.monotonic()
        self._commit_after(consumer, offsets)
        return True

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        """Commit ``offsets`` (of records already handled) while the next batch is handled.

        Commits run one at a time, so offsets taken later never land before offsets taken earlier
        (the periodic commit and a revoked partition's could otherwise race, moving the partition's
        committed offset back). Offsets of partitions no longer assigned are left out (their new
        owner reads those records again, and handlers are idempotent), and so is a commit refused
        because the group moved partitions on. Any other failure ends the session when the next commit awaits this one,
        and the consumer restarts from the last committed offsets.
        """
        async with self._commit_lock:  # the periodic commit and a revoked partitions' one, in order
            assigned = consumer.assignment()
            offsets = {tp: offset for tp, offset in offsets.items() if tp in assigned}
            if not offsets:
                return
            try:
                await asyncio.wait_for(consumer.commit(offsets), 15)
            except (CommitFailedError, IllegalStateError) as err:
                logger.info("offsets not committed: the group rebalanced", topic=self.spec.name, error=repr(err))

    async def _commit_settled(self) -> None:
        """Commit what is handled before the consumer closes (a lost commit only re-delivers)."""
        if self._consumer is not None and self._to_commit and self._committing is None:
            self._committing = asyncio.create_task(self._commit_handled(self._consumer))
        committing, self._committing = self._committing, None
        if committing is None:
            return
        self._flush.set()
        try:
            done, _ = await asyncio.wait({committing}, timeout=5)
            if committing in done and not committing.cancelled() and committing.exception() is not None:
                logger.warning("last offset commit failed", topic=self.spec.name, error=repr(committing.exception()))
            committing.cancel()
        finally:
            self._flush.clear()
            self._to_commit.clear()  # the next session starts from what the group has committed

    async def _until_passes(self, step: Callable[[], Awaitable[T]], failure: str, *, give_up: bool = False,
                            **context: object) -> tuple[bool, T | None]:
        """Run ``step`` until it raises nothing (a failure may pass: a database or broker restart),
        retrying with back-off, never skipping; ``(False, None)`` if the consumer stops first. With
        ``give_up``, raise :class:`_GaveUp` once it has failed ``attempts`` times for reasons that
        do not pass (:func:`may_pass`)."""
        attempt = defects = 0
        while True:
            try:
                return True, await step()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - retried; given up only if asked to, and not transient
                attempt += 1
                if not may_pass(err):
                    defects += 1
                    if give_up and defects >= self.attempts:
                        raise _GaveUp(defects, err) from err
                self.metrics.message_retries.labels(self.service, self.spec.name).inc()
                logger.warning(failure, topic=self.spec.name, attempt=attempt, error=repr(err), **context)
                self._progress = time.monotonic()
                await self._sleep(min(0.1 * 2**attempt, 5.0))
                if self._stopping.is_set():
                    return False, None

    async def _process(self, record: ConsumerRecord) -> bool:
        """Handle one record until it is handled or dead-lettered; False if stopping first."""
        start = time.perf_counter()
        topic = self.spec.name

        def count(outcome: str) -> None:
            self.metrics.messages_consumed.labels(self.service, topic, outcome).inc()
            self.metrics.message_duration.labels(self.service, topic).observe(time.perf_counter() - start)

        async def once() -> None:
            try:
                env = codec.decode(self.spec, record.value, record.headers, record.partition)
                await self._handle_one(env)
            except codec.PoisonMessage as poison:
                await dead_letter(self.producer, self.spec, record, str(poison), self.group_id)
                logger.warning("dead-lettered", topic=topic, offset=record.offset, reason=str(poison))
                count("dead_lettered")
                return
            count("processed")

        try:
            return (await self._until_passes(once, "handler failed; retrying", give_up=True, offset=record.offset))[0]
        except _GaveUp as gave_up:
            reason = str(gave_up)
            logger.error("dead-lettered: the record keeps failing", topic=topic, offset=record.offset, reason=reason)

            async def park() -> None:
                await dead_letter(self.producer, self.spec, record, reason, self.group_id, codec.KEPT_FAILING)
                count("dead_lettered")

            return (await self._until_passes(park, "could not dead-letter; retrying", offset=record.offset))[0]

    async def _handle_one(self, env: codec.Envelope) -> None:
        if self.handler is not None:
            await self.handler(env)
        else:
            assert self.batch_handler is not None
            finish = await self.batch_handler([env])
            if finish is not None:
                await finish()

    async def _process_batch(self, batch: dict[TopicPartition, list[ConsumerRecord]],
                             finishing: asyncio.Task[bool] | None) -> tuple[Finish | None, list[ConsumerRecord]] | None:
        """Hand a fetch to the batch handler (or its records one by one after a poison batch, once
        the batch before has finished): the rest of its work and the records handed over (none:
        handled already); None if stopping first."""
        assert self.batch_handler is not None
        topic = self.spec.name
        usable: list[tuple[ConsumerRecord, codec.Envelope]] = []
        poisoned: list[ConsumerRecord] = []
        for records in batch.values():
            for record in records:
                try:
                    usable.append((record, codec.decode(self.spec, record.value, record.headers, record.partition)))
                except codec.PoisonMessage:
                    poisoned.append(record)
        if poisoned and not await self._one_by_one(poisoned, finishing):  # dead-letters them
            return None
        if not usable:
            return None, []
        batch_handler = self.batch_handler

        async def hand_over() -> tuple[Finish | None, list[ConsumerRecord]] | None:
            try:
                return await batch_handler([env for _, env in usable]), [record for record, _ in usable]
            except codec.PoisonMessage as poison:
                logger.info("poison in a batch; handling its records one by one", topic=topic,
                            records=len(usable), reason=str(poison))
                return await one_by_one()

        async def one_by_one() -> tuple[Finish | None, list[ConsumerRecord]] | None:
            if not await self._one_by_one([record for record, _ in usable], finishing):
                return None
            return None, []

        try:
            return (await self._until_passes(hand_over, "batch handler failed; retrying", give_up=True,
                                             records=len(usable)))[1]
        except _GaveUp as gave_up:
            logger.error("a batch keeps failing; handling its records one by one", topic=topic, records=len(usable),
                         error=repr(gave_up.error))
            return await one_by_one()

    async def _one_by_one(self, records: list[ConsumerRecord], finishing: asyncio.Task[bool] | None) -> bool:
        """Handle ``records`` one at a time, after the batch before has finished; False if stopping."""
        if finishing is not None and not await finishing:
            return False
        for record in records:
            if not await self._process(record):
                return False
            self._progress = time.monotonic()
        return True


class _Prefetch:
    """Takes fetched records out of aiokafka's buffer as soon as they land, while the records
    before them are handled, and hands them over in batches.

    aiokafka sends a broker no fetch request while records it fetched from that broker wait
    unconsumed. Without this, a record arriving while a batch is handled would wait for that
    batch, then for a fetch, then for the batch fetched before it. Holds at most ``limit``
    records (then it stops fetching); those of revoked partitions are dropped.
    """

    def __init__(self, consumer: AIOKafkaConsumer, limit: int) -> None:
        self.consumer = consumer
        self.limit = limit
        self.records: dict[TopicPartition, list[ConsumerRecord]] = {}
        self.held = 0
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    async def fill(self) -> None:
        """Fetch until cancelled (a fetch hanging for 30 s raises, and the consumer restarts)."""
        while True:
            await self._room.wait()
            # Not wait_for: on Python 3.11 it swallows a cancellation that comes as the fetch returns,
            # and this loop would fetch on after its consumer stopped (its session never ending).
            async with asyncio.timeout(30):
                batch = await self.consumer.getmany(timeout_ms=500, max_records=self.limit - self.held)
            for tp, records in batch.items():
                self.records.setdefault(tp, []).extend(records)
                self.held += len(records)
            if self.held:
                self._arrived.set()
            if self.held >= self.limit:
                self._room.clear()

    async def take(self, max_records: int, timeout: float, filling: asyncio.Task[None]
                   ) -> dict[TopicPartition, list[ConsumerRecord]]:
        """Up to ``max_records`` records, each partition's in order, as soon as there are any;
        none after ``timeout`` seconds. Raises what ended ``filling``."""
        if not self.held:
            self._arrived.clear()
            arrived = asyncio.ensure_future(self._arrived.wait())
            try:
                await asyncio.wait({arrived, filling}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                arrived.cancel()
        if filling.done():
            filling.result()  # raises the fetch's failure; a fetch loop never returns otherwise
        taken: dict[TopicPartition, list[ConsumerRecord]] = {}
        room = max_records
        for tp in list(self.records):
            if room == 0:
                break
            records = self.records.pop(tp)
            taken[tp], rest = records[:room], records[room:]
            room -= len(taken[tp])
            if rest:
                self.records[tp] = rest  # last in line now: the other partitions go first next time
        self.held -= max_records - room
        self._room.set()
        return taken

    def forget(self, partitions: set[TopicPartition]) -> None:
        """Drop the records of ``partitions`` (revoked: their new owner reads them again)."""
        for tp in partitions:
            self.held -= len(self.records.pop(tp, ()))
        self._room.set()


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Tells ``on_revoked`` and ``on_assigned`` the partitions of each rebalance."""

    def __init__(self, on_assigned: AssignmentListener,
                 on_revoked: Callable[[set[TopicPartition]], Awaitable[None]]) -> None:
        self.on_assigned = on_assigned
        self.on_revoked = on_revoked

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.on_assigned(set(assigned))
