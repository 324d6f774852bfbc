"""The consumer's offset commits (``meshkit.kafka.EventConsumer._commit``): the periodic commit and
the one made for revoked partitions during a rebalance must land in the order their offsets were
taken, or a partition's committed offset moves back. The commits go to a scripted stand-in here;
committing on the real broker is tested in tests/integration/test_batch_consumer.py."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError

from meshkit import topics
from meshkit.kafka import EventConsumer

A = TopicPartition(topics.DEMANDS_ACCEPTED.name, 0)


class Group:
    """A consumer stand-in: ``A`` assigned; a commit takes ``delays`` seconds in turn (the first slow),
    and records what lands, in order, and how many were in flight at once."""

    def __init__(self, *delays: float) -> None:
        self.delays = list(delays)
        self.landed: list[int] = []
        self.in_flight = 0
        self.most_in_flight = 0

    def assignment(self) -> set[TopicPartition]:
        return {A}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delays.pop(0))
            self.landed.append(offsets[A])
        finally:
            self.in_flight -= 1


def consumer(group: Group) -> EventConsumer:
    c = EventConsumer(spec=topics.DEMANDS_ACCEPTED, group_id="g", bootstrap="unused:9092", handler=None,
                      batch_handler=lambda envs: asyncio.sleep(0), producer=None,  # type: ignore[arg-type]
                      metrics=None, service="test")  # type: ignore[arg-type]
    c._consumer = group  # type: ignore[assignment]
    return c


async def test_a_revoked_partitions_commit_lands_after_the_periodic_one_in_flight() -> None:
    group = Group(0.1, 0.0)  # the periodic commit is slow; the revoked partition's would be quick
    c = consumer(group)
    c._to_commit = {A: 10}
    periodic = asyncio.create_task(c._commit_handled(group))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)  # it has taken {A: 10} and is committing
    c._to_commit[A] = 20  # handled since
    await c._on_revoked({A})  # the group moves A: its handled offsets are committed first
    await periodic
    assert group.landed == [10, 20]  # A's committed offset ends at 20, never back at 10
    assert group.most_in_flight == 1
    assert c._to_commit == {}


async def test_an_idle_consumer_ends_its_session_when_its_last_commit_failed() -> None:
    """With nothing more to handle, no later commit would report a failed one: the consumer ends its
    session itself, so the next one handles the records after the last commit again and commits
    them (else its group's committed offsets, which ``caught_up`` and a matcher's readiness wait
    for, would stay behind for ever)."""
    c = consumer(Group())

    async def failing() -> None:
        raise KafkaTimeoutError("commit timed out")

    c._committing = asyncio.create_task(failing())
    await asyncio.sleep(0)

    class Idle:  # a prefetch with nothing to hand over
        async def take(self, *args: object) -> dict:
            await asyncio.sleep(0.01)
            return {}

    filling = asyncio.create_task(asyncio.sleep(60))
    try:
        with pytest.raises(KafkaTimeoutError):
            await asyncio.wait_for(c._handle_fetched(c._consumer, Idle(), filling), 5)  # type: ignore[arg-type]
    finally:
        filling.cancel()
