"""The event consumer's batch mode on the real broker and database: each partition's order is kept,
a poison record in a batch is dead-lettered alone, a failing batch is retried, nothing is skipped
and nothing is handled twice; the consumer reports its assignment and each record's partition, and
it fetches while it handles; a two-stage handler's rest runs while the next batch is prepared."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from finmesh.demand.v1 import events_pb2
from meshkit import codec, db, inbox, topics
from meshkit.kafka import EventConsumer, Finish, make_producer
from meshkit.metrics import Metrics

pytestmark = pytest.mark.integration

KEYS = 12  # spread over the topic's partitions
PER_KEY = 40


async def read_all(bootstrap: str, topic: str, timeout: float) -> list[ConsumerRecord]:
    """Every record of ``topic`` that arrives within ``timeout`` seconds."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                group_id=f"t-{uuid.uuid4().hex}", enable_auto_commit=False)
    await consumer.start()
    out: list[ConsumerRecord] = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                out.extend(records)
    finally:
        await consumer.stop()
    return out


@pytest.mark.parametrize("fallback", ["batch handler", "record handler"])
async def test_batches_keep_order_and_dead_letter_only_the_culprit(
    database_url: str, bootstrap: str, tmp_path: Path, fallback: str
) -> None:
    schema = f"batch_{uuid.uuid4().hex[:8]}"
    await db.migrate(database_url, schema, tmp_path)
    pool = await db.create_pool(database_url, schema=schema)
    spec = topics.PORTAL_DEMANDS
    marker = uuid.uuid4().hex
    producer = make_producer(bootstrap, "test", linger_ms=5)
    await producer.start()
    handled: list[tuple[int, int]] = []  # (key, seq) in the order handled and committed
    batch_sizes: list[int] = []
    calls = Counter[str]()
    assignments: list[set[int]] = []
    partitions_of: dict[int, set[int]] = {}  # key -> the partitions its records were read from

    def ours(env: codec.Envelope) -> bool:
        return env.message.portal_demand_id.startswith(marker)  # type: ignore[attr-defined]

    async def store(envs: list[codec.Envelope]) -> None:
        done = []
        async with pool.acquire() as conn, conn.transaction():
            for env in envs:
                if await inbox.claim(conn, "batch-test", env.event_id):
                    _, key, seq = env.message.portal_demand_id.rsplit("-", 2)  # type: ignore[attr-defined]
                    done.append((int(key), int(seq)))
                    partitions_of.setdefault(int(key), set()).add(env.partition)
        handled.extend(done)  # only once committed

    async def batch_handler(envs: list[codec.Envelope]) -> None:
        mine = [e for e in envs if ours(e)]
        if not mine:
            return
        calls["batches"] += 1
        if any(e.message.demand.amount_fen < 0 for e in mine):  # type: ignore[attr-defined]
            raise codec.PoisonMessage("demand.amount_fen: must be positive")
        if calls["batches"] == 1:
            raise ConnectionError("database restarting")  # the first batch fails once: retried whole
        batch_sizes.append(len(mine))
        await store(mine)

    async def record_handler(env: codec.Envelope) -> None:
        calls["records"] += 1
        await batch_handler([env])

    poison_at = (3, 17)
    for seq in range(PER_KEY):
        for key in range(KEYS):
            msg = events_pb2.PortalDemandSubmitted(portal_demand_id=f"{marker}-{key}-{seq}")
            if (key, seq) == poison_at:
                msg.demand.amount_fen = -1
            await producer.send(spec.name, value=msg.SerializeToString(), key=f"{marker}-{key}".encode(),
                                headers=codec.make_headers(spec.event_type, "portal"))
        if seq == 25:
            await producer.send(spec.name, value=b"\x0a\xff\xff", key=f"{marker}-undecodable".encode(),
                                headers=codec.make_headers(spec.event_type, "portal"))
    await producer.flush()
    metrics = Metrics()
    consumer = EventConsumer(spec=spec, group_id=f"g-{marker}", bootstrap=bootstrap, batch_handler=batch_handler,
                             handler=record_handler if fallback == "record handler" else None,
                             producer=producer, metrics=metrics, service="test", max_records=200,
                             on_assigned=lambda tps: assignments.append({tp.partition for tp in tps}))
    task = asyncio.create_task(consumer.run())
    want = KEYS * PER_KEY - 1
    try:
        for _ in range(300):
            if len(handled) >= want:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # anything handled twice would show now
        assert len(handled) == want and len(set(handled)) == want  # nothing skipped, nothing twice
        assert poison_at not in handled
        for key in range(KEYS):
            seqs = [s for k, s in handled if k == key]
            assert seqs == sorted(seqs), f"key {key} out of order"
        assert max(batch_sizes) > 1  # really handled in batches
        ages = metrics.registry.get_sample_value("finmesh_consumer_record_age_seconds_count",
                                                 {"service": "test", "topic": spec.name})
        assert ages is not None and ages >= KEYS * PER_KEY + 1  # every record fetched has its age observed
        total_age = metrics.registry.get_sample_value("finmesh_consumer_record_age_seconds_sum",
                                                      {"service": "test", "topic": spec.name})
        assert 0 < total_age / ages < 120  # produced before the consumer started: older than 0, younger than the test
        assert assignments and assignments[-1] == set(range(spec.partitions))  # the only member: all of them
        for key, parts in partitions_of.items():  # each envelope knows where it was read from
            assert len(parts) == 1 and parts <= assignments[-1], (key, parts)
        assert (calls["records"] > 0) == (fallback == "record handler")
        dead = [r for r in await read_all(bootstrap, spec.dead_letter.name, timeout=5)
                if r.key and r.key.startswith(marker.encode())]
        assert sorted(r.key for r in dead) == sorted([f"{marker}-3".encode(), f"{marker}-undecodable".encode()])
        reasons = {r.key: codec.header(r.headers, codec.DLQ_REASON) for r in dead}
        assert "amount_fen" in reasons[f"{marker}-3".encode()]
        assert "not a valid" in reasons[f"{marker}-undecodable".encode()]
    finally:
        await consumer.stop()
        await asyncio.wait_for(task, 15)
        await producer.stop()
        await pool.close()


async def test_records_that_arrive_during_a_batch_come_together_in_the_next(bootstrap: str) -> None:
    """The consumer keeps fetching while it handles a batch: records that arrive one by one
    meanwhile (on one partition) are handed over together in the next batch, not one fetch at a
    time after it (aiokafka alone fetches nothing while a fetched record waits unconsumed)."""
    spec = topics.PORTAL_DEMANDS
    marker = uuid.uuid4().hex
    producer = make_producer(bootstrap, "test", linger_ms=0)
    await producer.start()
    batches: list[list[str]] = []
    first_batch = asyncio.Event()

    async def batch_handler(envs: list[codec.Envelope]) -> None:
        mine = [e.message.portal_demand_id for e in envs  # type: ignore[attr-defined]
                if e.message.portal_demand_id.startswith(marker)]  # type: ignore[attr-defined]
        if not mine:
            return
        batches.append(mine)
        if len(batches) == 1:
            first_batch.set()
            await asyncio.sleep(3)  # a slow batch: the next records arrive meanwhile

    async def send(n: int | str) -> None:
        msg = events_pb2.PortalDemandSubmitted(portal_demand_id=f"{marker}-{n}")
        await producer.send_and_wait(spec.name, value=msg.SerializeToString(), key=marker.encode(),  # one partition
                                     headers=codec.make_headers(spec.event_type, "portal"))

    consumer = EventConsumer(spec=spec, group_id=f"g-{marker}", bootstrap=bootstrap, batch_handler=batch_handler,
                             handler=None, producer=producer, metrics=Metrics(), service="test", max_records=100,
                             auto_offset_reset="latest")
    task = asyncio.create_task(consumer.run())
    try:
        await asyncio.wait_for(consumer.assigned.wait(), 60)
        for attempt in range(60):  # the consumer starts from the end once it has looked it up
            await send(f"start{attempt}")
            try:
                await asyncio.wait_for(asyncio.shield(first_batch.wait()), 1)
                break
            except TimeoutError:
                pass
        wanted = [f"{marker}-{n}" for n in range(1, 6)]
        for n in range(1, 6):
            await send(n)
            await asyncio.sleep(0.2)
        for _ in range(100):
            if set(wanted) <= {i for b in batches for i in b}:
                break
            await asyncio.sleep(0.1)
        together = [[i for i in b if i in wanted] for b in batches[1:]]
        assert [b for b in together if b] == [wanted]
    finally:
        await consumer.stop()
        await asyncio.wait_for(task, 15)
        await producer.stop()


async def committed_offset(bootstrap: str, group: str, tp: TopicPartition) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return await consumer.committed(tp) or 0
    finally:
        await consumer.stop()


async def test_a_two_stage_batch_handler_prepares_the_next_batch_while_the_rest_of_one_runs(bootstrap: str) -> None:
    """A batch handler that returns the rest of its work (the matcher's transaction): the consumer
    hands it the next batch meanwhile; the rests run one at a time, in order, a failing one is
    retried; a batch's offsets are committed only once its rest has passed, and the last ones while
    the consumer runs on; nothing is skipped and nothing is stored twice."""
    spec = topics.PORTAL_DEMANDS
    marker = uuid.uuid4().hex
    group = f"g-{marker}"
    producer = make_producer(bootstrap, "test", linger_ms=5)
    await producer.start()
    offset_of: dict[str, int] = {}
    for n in range(50):
        name = f"{marker}-{n}"
        meta = await (await producer.send(spec.name, value=events_pb2.PortalDemandSubmitted(
            portal_demand_id=name).SerializeToString(), key=marker.encode(),  # one partition
            headers=codec.make_headers(spec.event_type, "portal")))
        offset_of[name] = meta.offset
        tp = TopicPartition(spec.name, meta.partition)
    log: list[tuple[str, int]] = []  # (stage, batch number) as they happen
    batches: list[list[str]] = []
    stored: list[str] = []
    running = Counter[str]()
    second_blocked, release = asyncio.Event(), asyncio.Event()

    async def batch_handler(envs: list[codec.Envelope]) -> Finish | None:
        mine = [e.message.portal_demand_id for e in envs  # type: ignore[attr-defined]
                if e.message.portal_demand_id.startswith(marker)]  # type: ignore[attr-defined]
        if not mine:
            return None
        k = len(batches)
        batches.append(mine)
        log.append(("prepared", k))

        async def finish() -> None:
            running["now"] += 1
            running["most"] = max(running["most"], running["now"])
            try:
                if k == 0 and ("failed", 0) not in log:
                    log.append(("failed", 0))
                    raise ConnectionError("database restarting")  # retried: the rest only
                if k == 1:
                    second_blocked.set()
                    await release.wait()
                await asyncio.sleep(0.05)
                stored.extend(mine)
                log.append(("finished", k))
            finally:
                running["now"] -= 1
        return finish

    consumer = EventConsumer(spec=spec, group_id=group, bootstrap=bootstrap, batch_handler=batch_handler,
                             handler=None, producer=producer, metrics=Metrics(), service="test", max_records=10)
    task = asyncio.create_task(consumer.run())
    try:
        await asyncio.wait_for(second_blocked.wait(), 60)
        await asyncio.sleep(1.5)
        assert ("prepared", 2) in log and ("finished", 1) not in log  # the next batch came meanwhile
        committed = await committed_offset(bootstrap, group, tp)
        assert max(offset_of[n] for n in batches[0]) < committed <= min(offset_of[n] for n in batches[1])
        release.set()
        for _ in range(300):
            if len(stored) >= len(offset_of):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        assert sorted(stored) == sorted(offset_of)  # nothing skipped, nothing twice
        assert stored == sorted(stored, key=offset_of.__getitem__)  # in order
        assert running["most"] == 1  # one rest at a time
        assert log.index(("failed", 0)) < log.index(("finished", 0))
        await asyncio.sleep(1.0)  # commits are spaced (commit_every, 0.5 s), but the last one is not left behind
        assert await committed_offset(bootstrap, group, tp) > max(offset_of.values())
    finally:
        await consumer.stop()
        await asyncio.wait_for(task, 15)
        await producer.stop()
    assert await committed_offset(bootstrap, group, tp) > max(offset_of.values())


@pytest.mark.parametrize("stage", ["first stage", "rest"])
async def test_a_batch_that_keeps_failing_is_handled_one_by_one_and_only_the_culprit_is_dead_lettered(
    bootstrap: str, stage: str
) -> None:
    """A batch whose handler (its first stage, or the rest of its work) keeps failing for a reason
    that does not pass, because of one record, is tried ``attempts`` times; then its records are
    handled one at a time: the culprit goes to the dead-letter topic with the error, the others are
    stored once each and in order, and so are the batches after it."""
    spec = topics.PORTAL_DEMANDS
    marker = uuid.uuid4().hex
    producer = make_producer(bootstrap, "test", linger_ms=5)
    await producer.start()
    names = [f"{marker}-{n:02d}" for n in range(40)]
    culprit = names[13]
    for name in names:
        value = events_pb2.PortalDemandSubmitted(portal_demand_id=name).SerializeToString()
        await producer.send(spec.name, value=value, key=marker.encode(),
                            headers=codec.make_headers(spec.event_type, "portal", f"e-{name}"))
    await producer.flush()
    stored: list[str] = []
    tries = Counter[str]()

    def cannot_take(mine: list[str]) -> None:
        if culprit in mine:
            tries[stage] += 1
            raise ValueError(f"{culprit}: the handler cannot take it")

    async def batch_handler(envs: list[codec.Envelope]) -> Finish | None:
        mine = [e.message.portal_demand_id for e in envs  # type: ignore[attr-defined]
                if e.message.portal_demand_id.startswith(marker)]  # type: ignore[attr-defined]
        if stage == "first stage":
            cannot_take(mine)

        async def finish() -> None:
            if stage == "rest":
                cannot_take(mine)
            stored.extend(mine)
        return finish

    consumer = EventConsumer(spec=spec, group_id=f"g-{marker}", bootstrap=bootstrap, batch_handler=batch_handler,
                             handler=None, producer=producer, metrics=Metrics(), service="test", max_records=10,
                             attempts=3)
    task = asyncio.create_task(consumer.run())
    try:
        for _ in range(600):
            if len(stored) >= len(names) - 1:
                break
            await asyncio.sleep(0.1)
        assert stored == [n for n in names if n != culprit]  # each once, in order, the rest of the topic too
        assert tries[stage] == 3 + 3  # the batch's tries, then the culprit's alone
        dead = [r for r in await read_all(bootstrap, spec.dead_letter.name, timeout=5) if r.key == marker.encode()]
        assert [codec.header(r.headers, codec.EVENT_ID) for r in dead] == [f"e-{culprit}"]
        reason = codec.header(dead[0].headers, codec.DLQ_REASON)
        assert "failed 3 times" in reason and "cannot take it" in reason, reason
    finally:
        await consumer.stop()
        await asyncio.wait_for(task, 15)
        await producer.stop()
