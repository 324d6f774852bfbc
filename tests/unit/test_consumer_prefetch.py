"""The consumer's fetch buffer (``meshkit.kafka._Prefetch``): what it hands over, in which order,
and how much it holds. Its fetches come from a scripted stand-in here; the buffer on the real
broker is tested in tests/integration/test_batch_consumer.py."""

from __future__ import annotations

import asyncio

from aiokafka import ConsumerRecord, TopicPartition

from meshkit.kafka import _Prefetch

A = TopicPartition("t", 0)
B = TopicPartition("t", 1)


def records(tp: TopicPartition, first: int, n: int) -> list[ConsumerRecord]:
    return [ConsumerRecord(tp.topic, tp.partition, o, 0, 0, None, b"", None, 0, 0, []) for o in range(first, first + n)]


class Fetches:
    """Hands out the scripted fetches (each trimmed to the ``max_records`` asked for), then nothing."""

    def __init__(self, *fetches: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        self.fetches = list(fetches)
        self.asked: list[int] = []

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[ConsumerRecord]]:
        self.asked.append(max_records)
        if not self.fetches:
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        fetch, out = self.fetches.pop(0), {}
        for tp, recs in fetch.items():
            out[tp], rest = recs[:max_records], recs[max_records:]
            max_records -= len(out[tp])
            if rest:
                self.fetches.insert(0, {tp: rest})
        return {tp: recs for tp, recs in out.items() if recs}


def offsets(batch: dict[TopicPartition, list[ConsumerRecord]]) -> dict[int, list[int]]:
    return {tp.partition: [r.offset for r in recs] for tp, recs in batch.items()}


async def test_batches_keep_each_partitions_order_and_take_turns() -> None:
    fetches = Fetches({A: records(A, 0, 5), B: records(B, 0, 2)})
    prefetch = _Prefetch(fetches, limit=100)  # type: ignore[arg-type]
    filling = asyncio.create_task(prefetch.fill())
    try:
        assert offsets(await prefetch.take(3, 1.0, filling)) == {0: [0, 1, 2]}
        assert offsets(await prefetch.take(3, 1.0, filling)) == {1: [0, 1], 0: [3]}  # B first: A went last
        assert offsets(await prefetch.take(3, 1.0, filling)) == {0: [4]}
        assert await prefetch.take(3, 0.05, filling) == {}  # nothing more: empty after the timeout
        assert prefetch.held == 0
    finally:
        filling.cancel()


async def test_holds_at_most_its_limit_and_drops_revoked_partitions() -> None:
    fetches = Fetches({A: records(A, 0, 30), B: records(B, 0, 30)})
    prefetch = _Prefetch(fetches, limit=40)  # type: ignore[arg-type]
    filling = asyncio.create_task(prefetch.fill())
    try:
        for _ in range(20):
            await asyncio.sleep(0)
        assert prefetch.held == 40 and fetches.asked == [40]  # full: it asks for no more
        prefetch.forget({B})
        assert B not in prefetch.records and prefetch.held == 30
        for _ in range(20):
            await asyncio.sleep(0)
        assert fetches.asked[1] == 10  # room again, for exactly what is missing
        taken = await prefetch.take(100, 1.0, filling)
        assert [r.offset for r in taken[A]] == list(range(30))
        assert [r.offset for r in taken.get(B, [])] == list(range(10, 20))  # not the dropped 0-9
    finally:
        filling.cancel()


async def test_a_failed_fetch_ends_the_take() -> None:
    class Broken:
        async def getmany(self, **_: int) -> dict[TopicPartition, list[ConsumerRecord]]:
            raise ConnectionError("broker gone")

    prefetch = _Prefetch(Broken(), limit=10)  # type: ignore[arg-type]
    filling = asyncio.create_task(prefetch.fill())
    try:
        await prefetch.take(5, 5.0, filling)
    except ConnectionError as err:
        assert "broker gone" in str(err)
    else:
        raise AssertionError("the fetch's failure must reach the consumer")
