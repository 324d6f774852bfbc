"""The outbox relay and the event consumer, on the real broker and database."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections import Counter
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from waiting import eventually

from finmesh.demand.v1 import demand_pb2, events_pb2
from meshkit import codec, db, inbox, outbox, topics
from meshkit.kafka import EventConsumer, ensure_topics, make_producer
from meshkit.metrics import Metrics
from meshkit.settings import ServiceSettings

pytestmark = pytest.mark.integration


async def read_all(bootstrap: str, topic: str, want: int, timeout: float = 20.0) -> list:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                group_id=f"t-{uuid.uuid4().hex}", enable_auto_commit=False)
    await consumer.start()
    out = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(out) < want and asyncio.get_running_loop().time() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                out.extend(records)
    finally:
        await consumer.stop()
    return out


def scratch_topic(name: str, partitions: int) -> topics.TopicSpec:
    """A topic of one test's own, carrying ``DemandAccepted``, with its dead-letter topic."""
    dead_letter = topics.TopicSpec(f"test.{name}.dlq", None, "", "test", (), 1, "Its dead letters.")
    return topics.TopicSpec(f"test.{name}", events_pb2.DemandAccepted, "demand.demand_id", "test", ("test",),
                            partitions, "A test's own.", dead_letter=dead_letter)


def accepted(demand_id: str) -> events_pb2.DemandAccepted:
    return events_pb2.DemandAccepted(demand=demand_pb2.Demand(demand_id=demand_id))


async def test_migrations_apply_once(database_url: str, tmp_path: Path) -> None:
    (tmp_path / "001_things.sql").write_text("CREATE TABLE things (id int PRIMARY KEY);")
    first = await db.migrate(database_url, "mig", tmp_path)
    again = await db.migrate(database_url, "mig", tmp_path)
    assert first == ["meshkit/001_outbox_inbox.sql", "meshkit/002_outbox_append.sql",
                     "meshkit/003_institution_keys.sql", "meshkit/004_outbox_inline.sql", "mig/001_things.sql"]
    assert again == []


async def test_outbox_publishes_committed_events_only(database_url: str, bootstrap: str, tmp_path: Path) -> None:
    await db.migrate(database_url, "obx", tmp_path)
    spec = topics.DEMANDS_ACCEPTED
    pool = await db.create_pool(database_url, schema="obx")
    relay = outbox.OutboxRelay(database_url=database_url, schema="obx", bootstrap=bootstrap,
                               service="test", metrics=Metrics())
    task = asyncio.create_task(relay.run())
    marker = uuid.uuid4().hex
    try:
        async with pool.acquire() as conn:
            async with conn.transaction():
                committed = await outbox.append(conn, spec, accepted(f"{marker}-kept"), schema="obx")
            with pytest.raises(RuntimeError):
                async with conn.transaction():
                    await outbox.append(conn, spec, accepted(f"{marker}-rolled-back"), schema="obx")
                    raise RuntimeError("the state change failed")
        records = [r for r in await read_all(bootstrap, spec.name, 10_000, timeout=5)
                   if marker.encode() in r.value]
        assert [r.key for r in records] == [f"{marker}-kept".encode()]
        headers = dict(records[0].headers)
        assert headers[codec.EVENT_ID].decode() == committed
        assert headers[codec.EVENT_TYPE] == b"finmesh.demand.v1.DemandAccepted"
        assert headers[codec.PRODUCER] == b"test"
        assert codec.header(records[0].headers, codec.OCCURRED_AT)
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
    finally:
        await relay.stop()
        await asyncio.wait_for(task, 10)
        await pool.close()


async def test_the_relay_reads_its_outbox_by_key_and_keeps_it_small(
    database_url: str, bootstrap: str, tmp_path: Path
) -> None:
    """A busy outbox churns: rows inserted and deleted by the thousand between two autovacuum runs.
    The relay must neither scan all of it on each pass (as the planner would, with statistics taken
    while it was empty) nor let it grow with every row it has ever held."""
    await db.migrate(database_url, "obxc", tmp_path)
    spec = topics.DEMANDS_ACCEPTED
    pool = await db.create_pool(database_url, schema="obxc")
    await pool.execute("ALTER TABLE outbox SET (autovacuum_enabled = false)")  # the relay's vacuum alone
    await pool.execute("ANALYZE outbox")  # empty: the statistics that invite a sequential scan

    async def table_stats() -> asyncpg.Record:
        return await pool.fetchrow("SELECT seq_scan, idx_scan, vacuum_count FROM pg_stat_user_tables"
                                   " WHERE schemaname = 'obxc' AND relname = 'outbox'")
    before = await table_stats()  # building the table's indexes read it: the migration's statistics
    marker = uuid.uuid4().hex

    async def burst(n: int) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await outbox.append_many(conn, [(spec, accepted(f"{marker}-{n}-{i}"), codec.new_event_id())
                                            for i in range(1_000)], schema="obxc")

    await burst(1)
    one_burst = await pool.fetchval("SELECT pg_relation_size('outbox')")  # before any row leaves
    relay = outbox.OutboxRelay(database_url=database_url, schema="obxc", bootstrap=bootstrap,
                               service="test", metrics=Metrics(), vacuum_every=1_000)
    task = asyncio.create_task(relay.run())
    sizes = []
    try:
        for n in range(1, 9):
            if n > 1:
                await burst(n)
            want = n * 1_000
            assert await eventually(lambda: asyncio.sleep(0, relay.published), lambda k, want=want: k >= want) >= want
            sizes.append(await pool.fetchval("SELECT pg_relation_size('outbox')"))

        # 8,000 rows have passed through; the table holds about what one burst needs.
        assert max(sizes) <= 3 * one_burst, (one_burst, sizes)
        stats = await eventually(table_stats, lambda r: r["idx_scan"] and r["vacuum_count"], timeout=30)
        assert stats["vacuum_count"] >= 1 and stats["idx_scan"] > 0  # the relay's statistics have arrived
        assert stats["seq_scan"] == before["seq_scan"]  # not one pass read the whole table
    finally:
        await relay.stop()
        await asyncio.wait_for(task, 10)
        await pool.close()


async def test_consumer_dead_letters_poison_retries_failures_and_skips_nothing(
    database_url: str, bootstrap: str, tmp_path: Path
) -> None:
    await db.migrate(database_url, "cons", tmp_path)
    pool = await db.create_pool(database_url, schema="cons")
    spec = topics.PORTAL_DEMANDS
    marker = uuid.uuid4().hex
    producer = make_producer(bootstrap, "test")
    await producer.start()
    handled: list[str] = []
    failures = {"left": 2}

    async def handler(env: codec.Envelope) -> None:
        key = env.message.portal_demand_id
        if not key.startswith(marker):
            return
        if key.endswith("invalid"):
            raise codec.PoisonMessage("demand.amount_fen: must be positive")
        if key.endswith("flaky") and failures["left"] > 0:
            failures["left"] -= 1
            raise ConnectionError("database restarting")
        async with pool.acquire() as conn, conn.transaction():
            if await inbox.claim(conn, "test", env.event_id):
                handled.append(key)

    def portal(key: str) -> bytes:
        return events_pb2.PortalDemandSubmitted(portal_demand_id=key).SerializeToString()

    sends = [
        (portal(f"{marker}-1"), "e1"),
        (b"\x0a\xff\xff", "bad-bytes"),
        (portal(f"{marker}-invalid"), "e2"),
        (b"\x00" * (topics.MAX_MESSAGE_BYTES + 10), "too-big"),
        (portal(f"{marker}-flaky"), "e3"),
        (portal(f"{marker}-1"), "e1"),  # the same event delivered again
        (portal(f"{marker}-2"), "e4"),
    ]
    for value, event in sends:
        await producer.send_and_wait(spec.name, value=value, key=marker.encode(),
                                     headers=codec.make_headers(spec.event_type, "portal", f"{marker}-{event}"))
    consumer = EventConsumer(spec=spec, group_id=f"g-{marker}", bootstrap=bootstrap, handler=handler,
                             producer=producer, metrics=Metrics(), service="test")
    task = asyncio.create_task(consumer.run())
    try:
        for _ in range(200):
            if len(handled) >= 3:
                break
            await asyncio.sleep(0.1)
        assert handled == [f"{marker}-1", f"{marker}-flaky", f"{marker}-2"]
        dead = [r for r in await read_all(bootstrap, spec.dead_letter.name, 10_000, timeout=5)
                if r.key == marker.encode()]
        reasons = [codec.header(r.headers, codec.DLQ_REASON) for r in dead]
        assert len(dead) == 3, reasons
        assert "not a valid" in reasons[0]
        assert "amount_fen" in reasons[1]
        assert "exceeds the limit" in reasons[2]
        for r in dead:
            assert codec.header(r.headers, codec.DLQ_ORIGIN).startswith(f"{spec.name}/")
            assert codec.header(r.headers, codec.EVENT_ID).startswith(marker)
    finally:
        await consumer.stop()
        await asyncio.wait_for(task, 15)
        await producer.stop()
        await pool.close()


async def test_a_record_that_keeps_failing_is_dead_lettered_with_its_error_and_the_topic_goes_on(
    bootstrap: str
) -> None:
    """A record whose handler keeps failing for a reason that does not pass by itself (a defect, or
    data it cannot take) is tried ``attempts`` times, then dead-lettered with the error; the records
    after it on its partition are handled, and the topic is caught up (what waits on it starts).
    A database that stays away for longer than those tries holds its record back, never dead-letters it."""
    marker = uuid.uuid4().hex[:8]
    spec = scratch_topic(f"failing-{marker}", 1)
    await ensure_topics(bootstrap, [spec])
    producer = make_producer(bootstrap, "test")
    await producer.start()
    tries: Counter[str] = Counter()
    handled: list[str] = []

    async def handler(env: codec.Envelope) -> None:
        demand_id = env.message.demand.demand_id  # type: ignore[attr-defined]
        tries[demand_id] += 1
        if demand_id.endswith("broken"):
            raise KeyError("srdi_tier")  # a defect: it fails so every time
        if demand_id.endswith("away") and tries[demand_id] <= 5:
            raise asyncpg.exceptions.CannotConnectNowError("the database system is starting up")
        handled.append(demand_id)

    names = [f"{marker}-{n}" for n in ("1", "broken", "away", "2")]
    for name in names:
        await producer.send_and_wait(spec.name, value=accepted(name).SerializeToString(), key=b"k",
                                     headers=codec.make_headers(spec.event_type, "test", f"e-{name}"))
    metrics = Metrics()
    consumer = EventConsumer(spec=spec, group_id=f"g-{marker}", bootstrap=bootstrap, handler=handler,
                             producer=producer, metrics=metrics, service="test", attempts=3)
    task = asyncio.create_task(consumer.run())
    try:
        assert await eventually(lambda: asyncio.sleep(0, handled), lambda h: len(h) >= 3, timeout=60) == [
            f"{marker}-1", f"{marker}-away", f"{marker}-2"]
        assert tries[f"{marker}-broken"] == 3
        assert tries[f"{marker}-away"] == 6  # past the 3 tries: the database's failures are waited out
        dead = await read_all(bootstrap, spec.dead_letter.name, 1, timeout=10)
        assert [accepted_id(r.value) for r in dead] == [f"{marker}-broken"]
        reason = codec.header(dead[0].headers, codec.DLQ_REASON)
        assert "failed 3 times" in reason and "KeyError('srdi_tier')" in reason, reason
        assert codec.header(dead[0].headers, codec.DLQ_ORIGIN) == f"{spec.name}/0@1"
        assert codec.header(dead[0].headers, codec.EVENT_ID) == f"e-{marker}-broken"
        assert await eventually(consumer.caught_up, bool, timeout=10)
        assert metrics.registry.get_sample_value("finmesh_messages_consumed_total", {
            "service": "test", "topic": spec.name, "outcome": "dead_lettered"}) == 1
    finally:
        await consumer.stop()
        await asyncio.wait_for(task, 15)
        await producer.stop()


def accepted_id(value: bytes) -> str:
    return events_pb2.DemandAccepted.FromString(value).demand.demand_id


async def test_a_member_with_no_partition_is_assigned_too(bootstrap: str) -> None:
    """More members than partitions: the one left without a partition has still joined its group
    (``assigned``, which readiness waits for), so a scaled-out replica reports SERVING."""
    marker = uuid.uuid4().hex[:8]
    spec = scratch_topic(f"one-partition-{marker}", 1)
    await ensure_topics(bootstrap, [spec])
    producer = make_producer(bootstrap, "test")
    await producer.start()
    shares: list[list[set[int]]] = [[], []]

    async def ignore(env: codec.Envelope) -> None:
        pass

    members = [EventConsumer(spec=spec, group_id=f"g-{marker}", bootstrap=bootstrap, handler=ignore, producer=producer,
                             metrics=Metrics(), service="test", on_assigned=lambda tps, n=n: shares[n].append(
                                 {tp.partition for tp in tps})) for n in range(2)]
    tasks = [asyncio.create_task(m.run()) for m in members]
    try:
        for _ in range(200):
            if all(m.assigned.is_set() for m in members) and sorted(len(s[-1]) for s in shares if s) == [0, 1]:
                break
            await asyncio.sleep(0.1)
        assert all(m.assigned.is_set() for m in members)
        assert sorted(len(s[-1]) for s in shares) == [0, 1]  # one has the partition, the other none
    finally:
        for m in members:
            await m.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 20)
        await producer.stop()


async def test_a_consumer_that_needs_what_another_learns_starts_once_that_one_has_caught_up(bootstrap: str) -> None:
    """The matcher dates leads by the SLAs it learns from another topic: a consumer given an
    ``after`` condition consumes nothing until it holds. ``caught_up`` holds once the group (two
    members here, each with part of the partitions) has handled and committed every record the
    topic held when first asked, and not before; records published later do not undo it."""
    marker = uuid.uuid4().hex[:8]
    learnt_spec, using_spec = scratch_topic(f"learnt-{marker}", 3), scratch_topic(f"using-{marker}", 1)
    await ensure_topics(bootstrap, [learnt_spec, using_spec])
    producer = make_producer(bootstrap, "test", linger_ms=5)
    await producer.start()
    backlog = 150
    for n in range(backlog):
        await producer.send(learnt_spec.name, value=accepted(f"{marker}-{n}").SerializeToString(),
                            key=f"{marker}-{n}".encode(), headers=codec.make_headers(learnt_spec.event_type, "test"))
    await producer.send_and_wait(using_spec.name, value=accepted(f"{marker}-use").SerializeToString(),
                                 key=b"use", headers=codec.make_headers(using_spec.event_type, "test"))
    learnt: list[str] = []
    learnt_when_used: list[int] = []

    async def learn(env: codec.Envelope) -> None:
        await asyncio.sleep(0.01)  # a backlog that takes a while
        learnt.append(env.message.demand.demand_id)  # type: ignore[attr-defined]

    async def use(env: codec.Envelope) -> None:
        learnt_when_used.append(len(learnt))

    learners = [EventConsumer(spec=learnt_spec, group_id=f"g-{marker}", bootstrap=bootstrap, handler=learn,
                              producer=producer, metrics=Metrics(), service="test") for _ in range(2)]
    user = EventConsumer(spec=using_spec, group_id=f"u-{marker}", bootstrap=bootstrap, handler=use, producer=producer,
                         metrics=Metrics(), service="test", after=[learners[0].caught_up])
    tasks = [asyncio.create_task(c.run()) for c in [*learners, user]]
    try:
        await asyncio.wait_for(learners[0].assigned.wait(), 60)
        answers: list[bool] = []  # asked while its group works through the backlog
        for _ in range(600):
            answers.append(await learners[0].caught_up())
            if answers[-1]:
                break
            await asyncio.sleep(0.05)
        assert answers[-1], "never caught up"
        assert not answers[0], "caught up before the backlog was handled"
        assert len(set(learnt)) == backlog  # every record, by one member or the other
        await producer.send_and_wait(learnt_spec.name, value=accepted(f"{marker}-late").SerializeToString(),
                                     key=b"late", headers=codec.make_headers(learnt_spec.event_type, "test"))
        assert await learners[0].caught_up()
        assert await eventually(lambda: asyncio.sleep(0, learnt_when_used), bool), "the dependent consumer never ran"
        assert learnt_when_used[0] >= backlog  # it started only after the backlog was learnt
    finally:
        for c in [*learners, user]:
            await c.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 20)
        await producer.stop()


async def test_a_topic_whose_records_are_past_their_retention_is_caught_up_at_once(bootstrap: str) -> None:
    """A new group on a partition whose records were all deleted (retention) has nothing to handle,
    and so nothing to commit: it is caught up as soon as it has joined."""
    marker = uuid.uuid4().hex[:8]
    spec = scratch_topic(f"expired-{marker}", 1)
    await ensure_topics(bootstrap, [spec])
    producer = make_producer(bootstrap, "test")
    await producer.start()
    handled: list[codec.Envelope] = []

    async def handle(env: codec.Envelope) -> None:
        handled.append(env)

    consumer = EventConsumer(spec=spec, group_id=f"g-{marker}", bootstrap=bootstrap, handler=handle,
                             producer=producer, metrics=Metrics(), service="test")
    try:
        for n in range(3):
            await producer.send_and_wait(spec.name, value=accepted(f"{marker}-{n}").SerializeToString(),
                                         key=b"k", headers=codec.make_headers(spec.event_type, "test"))
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.delete_records({TopicPartition(spec.name, 0): RecordsToDelete(before_offset=3)})
        finally:
            await admin.close()
        task = asyncio.create_task(consumer.run())
        try:
            await asyncio.wait_for(consumer.assigned.wait(), 60)
            assert await eventually(consumer.caught_up, bool, timeout=10)
            assert handled == []
        finally:
            await consumer.stop()
            await asyncio.wait_for(task, 20)
    finally:
        await producer.stop()


async def test_an_idle_consumer_stops_at_once(bootstrap: str) -> None:
    """A consumer with nothing to read stops within a few seconds, however its stop falls against
    its fetches (on Python 3.11 a fetch bounded by ``asyncio.wait_for`` could swallow the
    cancellation and keep the session alive for ever: a service's shutdown hung on it)."""
    marker = uuid.uuid4().hex[:8]
    spec = scratch_topic(f"idle-{marker}", 1)
    await ensure_topics(bootstrap, [spec])
    producer = make_producer(bootstrap, "test")
    await producer.start()
    await producer.send_and_wait(spec.name, value=accepted(marker).SerializeToString(), key=marker.encode(),
                                 headers=codec.make_headers(spec.event_type, "test"))
    handled = asyncio.Event()

    async def handle(env: codec.Envelope) -> None:
        handled.set()

    try:
        for idle in (0.0, 0.25, 0.5, 1.0):  # stops at different points of the fetch cycle
            consumer = EventConsumer(spec=spec, group_id=f"g-{marker}-{idle}", bootstrap=bootstrap, handler=handle,
                                     producer=producer, metrics=Metrics(), service="test")
            handled.clear()
            task = asyncio.create_task(consumer.run())
            await asyncio.wait_for(handled.wait(), 60)
            await asyncio.sleep(idle)
            await consumer.stop()
            done, _ = await asyncio.wait({task}, timeout=10)
            if not done:
                task.cancel()
            assert done, f"the consumer did not stop (idle {idle} s)"
    finally:
        await producer.stop()


async def test_inbox_claims_once_and_prunes_old_entries(database_url: str, tmp_path: Path) -> None:
    from datetime import timedelta

    await db.migrate(database_url, "inb", tmp_path)
    pool = await db.create_pool(database_url, schema="inb")
    try:
        async with pool.acquire() as conn:
            assert await inbox.claim(conn, "c", "e-1")
            assert not await inbox.claim(conn, "c", "e-1")
            assert await inbox.claim(conn, "other-consumer", "e-1")
            await conn.execute("UPDATE inbox SET handled_at = now() - interval '9 days' WHERE consumer = 'c'")
        assert await inbox.prune(pool, keep=timedelta(days=8)) == 1
        assert await pool.fetchval("SELECT count(*) FROM inbox") == 1
    finally:
        await pool.close()


async def test_a_relay_process_publishes_in_order_drains_on_stop_and_dies_with_its_service(
    database_url: str, bootstrap: str, tmp_path: Path
) -> None:
    await db.migrate(database_url, "obxp", tmp_path)
    spec = topics.DEMANDS_ACCEPTED
    pool = await db.create_pool(database_url, schema="obxp")
    settings = ServiceSettings(service_name="relay-test", kafka_bootstrap_servers=bootstrap, database_url=database_url,
                               grpc_port=0, metrics_port=0, outbox_relay="process")
    relay = outbox.RelayProcess(settings, schema="obxp", metrics_port=0)
    task = asyncio.create_task(relay.run())
    marker = uuid.uuid4().hex
    try:
        for n in range(3):  # 300 events of one demand (one key, so one partition), in three transactions
            async with pool.acquire() as conn, conn.transaction():
                await outbox.append_many(conn, [(spec, events_pb2.DemandAccepted(demand=demand_pb2.Demand(
                    demand_id=marker, request=demand_pb2.DemandRequest(amount_fen=100 * n + i))), str(uuid.uuid4()))
                    for i in range(100)], schema="obxp")
        records = [r for r in await read_all(bootstrap, spec.name, 10_000, timeout=20) if r.key == marker.encode()]
        amounts = [events_pb2.DemandAccepted.FromString(r.value).demand.request.amount_fen for r in records]
        assert amounts == list(range(300))  # all of them, once each, in the order they were appended
        # Stopping drains: what is committed before the stop is published before the process exits.
        async with pool.acquire() as conn, conn.transaction():
            await outbox.append(conn, spec, accepted(f"{marker}-last"), schema="obxp")
        await relay.stop()
        await asyncio.wait_for(task, 20)
        assert relay.proc is not None and relay.proc.returncode == 0
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
    finally:
        await relay.stop()
        await pool.close()

    # A service killed with kill -9 takes its relay process with it.
    script = ("import asyncio, os, sys\nfrom meshkit import outbox\nfrom meshkit.settings import ServiceSettings\n"
              "async def main():\n"
              f"    s = ServiceSettings(service_name='orphan-test', kafka_bootstrap_servers={bootstrap!r},"
              f" database_url={database_url!r}, grpc_port=0, metrics_port=0)\n"
              "    relay = outbox.RelayProcess(s, schema='obxp', metrics_port=0)\n"
              "    task = asyncio.create_task(relay.run())\n"
              "    while relay.proc is None:\n        await asyncio.sleep(0.05)\n"
              "    print(relay.proc.pid, flush=True)\n    await task\n"
              "asyncio.run(main())\n")
    parent = await asyncio.create_subprocess_exec(sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE)
    assert parent.stdout is not None
    child = int((await asyncio.wait_for(parent.stdout.readline(), 30)).decode())
    assert Path(f"/proc/{child}").exists()
    parent.kill()
    await parent.wait()
    for _ in range(100):
        if not Path(f"/proc/{child}").exists() or "State:\tZ" in Path(f"/proc/{child}/status").read_text():
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"the relay process {child} outlived its service")
