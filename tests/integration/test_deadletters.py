"""Putting dead letters back (``python -m meshkit.deadletters``), on the real broker and database."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from waiting import eventually

from finmesh.demand.v1 import demand_pb2, events_pb2
from meshkit import codec, db, deadletters, inbox, topics
from meshkit.kafka import EventConsumer, ensure_topics, make_producer
from meshkit.metrics import Metrics

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def scratch(name: str) -> topics.TopicSpec:
    """A topic of the test's own with its dead-letter topic, named as the registry names them."""
    dlt = topics.TopicSpec(f"test.{name}{deadletters.DLQ_SUFFIX}", None, "", "test", ("ops",), 1, "Its dead letters.")
    return topics.TopicSpec(f"test.{name}", events_pb2.DemandAccepted, "demand.demand_id", "test", ("test",), 2,
                            "A test's own.", dead_letter=dlt)


def accepted(demand_id: str) -> bytes:
    return events_pb2.DemandAccepted(demand=demand_pb2.Demand(demand_id=demand_id)).SerializeToString()


async def pending(bootstrap: str, spec: topics.TopicSpec) -> int:
    """Records of ``spec``'s dead-letter topic after its replay mark."""
    assert spec.dead_letter is not None
    [span] = await deadletters.spans(bootstrap, [spec.dead_letter.name])
    return span.pending


async def replayed_from(bootstrap: str, topic: str) -> list[str]:
    """The ``replayed-from`` headers of the records on ``topic`` (every partition)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    try:
        out = []
        for records in (await consumer.getmany(timeout_ms=2000)).values():
            out += [codec.header(r.headers, deadletters.REPLAYED_FROM) for r in records]
        return [h for h in out if h]
    finally:
        await consumer.stop()


async def test_a_dead_letter_replayed_once_its_cause_is_fixed_is_handled_by_the_group_that_failed_only(
    database_url: str, bootstrap: str, tmp_path: Path
) -> None:
    """A record one group kept failing on is dead-lettered; after the fix, ``replay`` puts it back on
    the partition it came from with its own event id: that group handles it, the group that had
    handled it skips it (its inbox), and a second replay puts nothing back."""
    marker = uuid.uuid4().hex[:8]
    spec = scratch(f"replay-{marker}")
    await ensure_topics(bootstrap, [spec])
    await db.migrate(database_url, "dlt", tmp_path)
    pool = await db.create_pool(database_url, schema="dlt")
    producer = make_producer(bootstrap, "test")
    await producer.start()
    fixed = asyncio.Event()
    handled: list[str] = []
    effects: Counter[str] = Counter()
    deliveries: Counter[str] = Counter()

    async def failing_until_fixed(env: codec.Envelope) -> None:
        demand_id = env.message.demand.demand_id  # type: ignore[attr-defined]
        if demand_id.endswith("needs-fix") and not fixed.is_set():
            raise KeyError("srdi_tier")  # a defect, until it is deployed again
        async with pool.acquire() as conn, conn.transaction():
            if await inbox.claim(conn, "failing", env.event_id):
                handled.append(demand_id)

    async def healthy(env: codec.Envelope) -> None:
        demand_id = env.message.demand.demand_id  # type: ignore[attr-defined]
        async with pool.acquire() as conn, conn.transaction():
            if await inbox.claim(conn, "healthy", env.event_id):
                effects[demand_id] += 1
        deliveries[demand_id] += 1  # counted once its transaction is over

    names = [f"{marker}-1", f"{marker}-needs-fix", f"{marker}-2"]
    for name in names:
        await producer.send_and_wait(spec.name, value=accepted(name), key=name.encode(),
                                     headers=codec.make_headers(spec.event_type, "test", f"e-{name}"))
    consumers = [EventConsumer(spec=spec, group_id=f"failing-{marker}", bootstrap=bootstrap,
                               handler=failing_until_fixed, producer=producer, metrics=Metrics(), service="test",
                               attempts=2),
                 EventConsumer(spec=spec, group_id=f"healthy-{marker}", bootstrap=bootstrap, handler=healthy,
                               producer=producer, metrics=Metrics(), service="test")]
    tasks = [asyncio.create_task(c.run()) for c in consumers]
    try:
        await eventually(lambda: asyncio.sleep(0, sorted(handled)), lambda h: len(h) == 2, timeout=60)
        await eventually(lambda: asyncio.sleep(0, dict(effects)), lambda e: len(e) == 3, timeout=30)
        await eventually(lambda: pending(bootstrap, spec), lambda n: n == 1, timeout=30)
        [dead] = await deadletters.read(bootstrap, spec.dead_letter.name)
        assert dead.header(codec.DLQ_CONSUMER) == f"failing-{marker}"
        assert "KeyError('srdi_tier')" in (dead.header(codec.DLQ_REASON) or "")
        assert dead.refusal() is None

        rehearsal = await deadletters.replay(bootstrap, spec.dead_letter.name, dry_run=True)
        assert [d.offset for d in rehearsal.replayed] == [dead.offset]
        assert await pending(bootstrap, spec) == 1  # a dry run records nothing

        fixed.set()  # the defect is mended
        done = await deadletters.replay(bootstrap, spec.dead_letter.name)
        assert [d.offset for d in done.replayed] == [dead.offset] and not done.refused
        await eventually(lambda: asyncio.sleep(0, sorted(handled)), lambda h: len(h) == 3, timeout=30)
        assert sorted(handled) == sorted(names)
        # The healthy group is delivered the replayed record too, and its inbox skips it.
        await eventually(lambda: asyncio.sleep(0, deliveries[f"{marker}-needs-fix"]), lambda n: n == 2, timeout=30)
        assert effects == Counter(names)  # once each: the replay changed nothing where it had been handled
        assert await replayed_from(bootstrap, spec.name) == [f"{spec.dead_letter.name}/0@{dead.offset}"]

        again = await deadletters.replay(bootstrap, spec.dead_letter.name)
        assert again.replayed == [] and await pending(bootstrap, spec) == 0
    finally:
        for c in consumers:
            await c.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 15)
        await producer.stop()
        await pool.close()


async def test_replay_sends_each_origin_record_back_once_refuses_what_it_cannot_and_remembers_choices(
    bootstrap: str
) -> None:
    """``--consumer`` replays that group's records and the mark remembers them; a full replay then
    sends the rest, one per origin record (two groups dead-lettered copies of one), and refuses a
    truncated record, one from another topic and an unusable one, which ``--offset`` with
    ``--unusable-too`` can still send; the command says all this."""
    marker = uuid.uuid4().hex[:8]
    spec = scratch(f"refuse-{marker}")
    await ensure_topics(bootstrap, [spec])
    producer = make_producer(bootstrap, "test")
    await producer.start()
    kept_failing = (codec.DLQ_KIND, codec.KEPT_FAILING.encode())
    try:
        def dead_headers(event: str, consumer: str, origin: str, *extra: tuple[str, bytes]) -> list:
            return [*codec.make_headers(spec.event_type, "test", event), (codec.DLQ_REASON, b"failed"),
                    (codec.DLQ_ORIGIN, origin.encode()), (codec.DLQ_CONSUMER, consumer.encode()), *extra]

        dlt = spec.dead_letter.name
        for event, consumer, origin, extra in [
            ("e-a", "matcher", f"{spec.name}/1@7", (kept_failing,)),
            ("e-b", "notifier", f"{spec.name}/0@3", (kept_failing,)),
            ("e-b", "roadshow", f"{spec.name}/0@3", (kept_failing,)),  # another group's copy of the same record
            ("e-cut", "notifier", f"{spec.name}/0@4", (kept_failing, (deadletters.TRUNCATED, b"true"))),
            ("e-alien", "notifier", "some.other.topic/0@1", (kept_failing,)),
            ("e-bad", "notifier", f"{spec.name}/0@5", ((codec.DLQ_KIND, codec.UNUSABLE.encode()),)),
        ]:
            await producer.send_and_wait(dlt, value=accepted(event), key=event.encode(),
                                         headers=dead_headers(event, consumer, origin, *extra))
    finally:
        await producer.stop()

    chosen = await deadletters.replay(bootstrap, dlt, consumer_group="matcher")
    assert [d.header(codec.EVENT_ID) for d in chosen.replayed] == ["e-a"] and chosen.skipped == 5
    assert await pending(bootstrap, spec) == 5

    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap}

    def command(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "meshkit.deadletters", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=60)

    run = command("replay", dlt)
    assert run.returncode == 0, run.stderr
    assert f"replayed {dlt}/0@1 -> {spec.name}/0@3 (e-b)" in run.stdout
    assert f"copy {dlt}/0@2: the same origin record goes back once" in run.stdout
    assert f"refused {dlt}/0@3: its value was cut to fit the dead-letter topic" in run.stdout
    assert f"refused {dlt}/0@4: its origin 'some.other.topic' is not the topic {dlt!r} belongs to" in run.stdout
    assert f"refused {dlt}/0@5: the record itself was unusable" in run.stdout
    assert "1 replayed, 1 copies, 3 refused, 0 not chosen; the replay mark moved past them" in run.stdout
    assert sorted(await replayed_from(bootstrap, spec.name)) == [f"{dlt}/0@0", f"{dlt}/0@1"]  # e-a went back once
    assert command("list", dlt).stdout.strip() == f"{dlt}: 6 kept, 0 not replayed"

    forced = command("replay", dlt, "--offset", "0@5", "--unusable-too")
    assert forced.returncode == 0 and f"replayed {dlt}/0@5 -> {spec.name}/0@5 (e-bad)" in forced.stdout, forced
    assert sorted(await replayed_from(bootstrap, spec.name)) == [f"{dlt}/0@0", f"{dlt}/0@1", f"{dlt}/0@5"]

    shown = command("show", dlt)
    assert shown.returncode == 0 and "6 records" in shown.stdout, shown
    for text in ("0@3", f"{spec.name}/0@4", "notifier", "e-cut", "its value was cut to fit", "failed"):
        assert text in shown.stdout, (text, shown.stdout)
    missing = command("show", f"test.none-{marker}.dlq")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert command("list", f"test.none-{marker}.dlq", dlt).stdout.splitlines() == [
        f"test.none-{marker}.dlq: does not exist", f"{dlt}: 6 kept, 0 not replayed"]
