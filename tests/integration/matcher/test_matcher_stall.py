"""The stall watch reads lag and committed offsets from the broker."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata

from services.matcher.consumers import StallWatch

pytestmark = pytest.mark.integration


async def test_stall_is_reported_only_while_lagging_without_commits(bootstrap: str) -> None:
    topic, group = f"test.stall-{uuid.uuid4().hex[:8]}", f"stall-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 1, 1)])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    for i in range(3):
        await producer.send_and_wait(topic, f"r{i}".encode())
    await producer.stop()
    tp = TopicPartition(topic, 0)
    committer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await committer.start()
    committer.assign([tp])
    await committer.commit({tp: OffsetAndMetadata(1, "")})

    stalls: list[str] = []
    watch = StallWatch(bootstrap=bootstrap, group_id=group, topic=topic, assignment=lambda: [(topic, 0)],
                       stall_seconds=0.5, on_stall=stalls.append)
    offsets = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await offsets.start()
    try:
        await watch.check(admin, offsets)
        await asyncio.sleep(0.7)
        await watch.check(admin, offsets)
        assert len(stalls) == 1 and "lag 2" in stalls[0]

        await committer.commit({tp: OffsetAndMetadata(3, "")})  # caught up: no lag, no stall
        await watch.check(admin, offsets)
        await asyncio.sleep(0.7)
        await watch.check(admin, offsets)
        assert len(stalls) == 1
    finally:
        await offsets.stop()
        await committer.stop()
        await admin.close()
