"""Topic configs on the real broker: `python -m meshkit.topics create` gives topics an older release
created (here: a lead topic and a registry topic made with the broker's defaults) their declared
configs, and leaves alone topics that are not ours."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from meshkit import topics
from meshkit.kafka import align_topic_configs


async def configs_of(bootstrap: str, names: list[str]) -> dict[str, dict[str, str]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
        return {name: {e[0]: e[1] for e in entries}
                for response in described for _, _, _, name, entries, *_ in response.resources}
    finally:
        await admin.close()


async def create_with_defaults(bootstrap: str, *names: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, 1, 1) for n in names])
    finally:
        await admin.close()


async def create_cli(bootstrap: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshkit.topics", "create", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap})
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_create_gives_existing_topics_their_declared_configs(bootstrap: str) -> None:
    marker = uuid.uuid4().hex[:8]
    lead = topics.lead_topic(f"bank-{marker}").name
    foreign = f"someone-else.{marker}"
    await create_with_defaults(bootstrap, lead, foreign)
    before = await configs_of(bootstrap, [lead, foreign])
    assert before[lead]["index.interval.bytes"] == "4096"  # the broker's default, as an old release left it

    out = await create_cli(bootstrap)

    after = await configs_of(bootstrap, [lead, foreign, topics.DEMANDS_ACCEPTED.name])
    for name in (lead, topics.DEMANDS_ACCEPTED.name):
        spec = topics.spec_for(name)
        assert {k: after[name][k] for k in spec.configs()} == spec.configs(), name
    assert after[lead]["index.interval.bytes"] == str(topics.INDEX_INTERVAL_BYTES)
    assert after[foreign] == before[foreign]  # not ours: untouched
    assert "0 created" in out and "given their declared configs" in out

    again = await align_topic_configs(bootstrap, [topics.spec_for(lead), topics.DEMANDS_ACCEPTED])
    assert again == []  # nothing differs any more
