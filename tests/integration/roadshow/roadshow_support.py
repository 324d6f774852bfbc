"""Helpers of the roadshow's integration tests (the demand tests' helpers are reused)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import grpc
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from demand_support import (  # noqa: F401, I001 - the demand helpers the roadshow tests use too
    WAN,
    enterprise,
    headers,
    new_uscc,
    read_topic,
    registered,
    rpc_error,
    submit,
)
from google.protobuf.timestamp_pb2 import Timestamp
from waiting import eventually

from finmesh.common.v1 import finance_pb2 as fin
from finmesh.demand.v1 import demand_pb2 as dm
from finmesh.institution.v1 import institution_pb2 as inst
from finmesh.roadshow.v1 import events_pb2 as ev
from finmesh.roadshow.v1 import roadshow_pb2 as rs
from meshkit import topics
from meshkit.lifecycle import Runtime

START = datetime(2030, 3, 3, tzinfo=UTC)  # where the module's clock starts


def ts(at: datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(at)
    return t


async def create(stub, now: datetime, *, held_in: timedelta = timedelta(days=10),  # noqa: ANN001
                 close_in: timedelta = timedelta(days=5), capacity: int = 2,
                 industry: int = fin.KEY_INDUSTRY_INTELLIGENT_EQUIPMENT) -> rs.Roadshow:
    reply = await stub.CreateRoadshow(rs.CreateRoadshowRequest(request_id=f"req-{uuid.uuid4()}", roadshow=rs.Roadshow(
        theme="Intelligent manufacturing equipment", theme_kind=rs.THEME_KIND_KEY_INDUSTRY, theme_industry=industry,
        city="Xiamen", held_at=ts(now + held_in), applications_close_at=ts(now + close_in), capacity=capacity)))
    assert reply.created
    return reply.roadshow


async def until_status(stub, roadshow_id: str, status: int) -> rs.Roadshow:  # noqa: ANN001
    x = await eventually(lambda: stub.GetRoadshow(rs.GetRoadshowRequest(roadshow_id=roadshow_id)),
                         lambda reply: reply.roadshow.status == status, timeout=20)
    assert x.roadshow.status == status, x
    return x.roadshow


async def when_known(call, timeout: float = 20.0):  # noqa: ANN001, ANN201
    """``call()`` retried while the roadshow does not know the enterprise or institution yet."""
    async def attempt():  # noqa: ANN202
        try:
            return await call()
        except grpc.aio.AioRpcError as err:
            if "registered on the platform" in (err.details() or "") or err.code() == grpc.StatusCode.UNAVAILABLE:
                return None  # its registration (or its API key) has not arrived yet
            return err

    result = await eventually(attempt, lambda x: x is not None, timeout=timeout)
    assert result is not None, "never known to the roadshow service"
    return result


async def apply(stub, roadshow_id: str, uscc: str, amount_fen: int = 500 * WAN):  # noqa: ANN001, ANN201
    return await when_known(lambda: stub.Apply(rs.ApplyRequest(
        roadshow_id=roadshow_id, enterprise_uscc=uscc, amount_sought_fen=amount_fen,
        purpose=dm.PURPOSE_TECHNOLOGY_UPGRADE, pitch="precision spindles")))


async def register_institution(stubs, name: str, type_: int = inst.INSTITUTION_TYPE_FUND) -> tuple[str, str]:
    institution_id = f"{name}-{uuid.uuid4().hex[:6]}"
    reply = await stubs.institutions.RegisterInstitution(inst.RegisterInstitutionRequest(institution=inst.Institution(
        institution_id=institution_id, name=name.upper(), type=type_, regions_served=["35"])))
    return institution_id, reply.api_key


async def read_to_end(bootstrap: str, spec: topics.TopicSpec, keep: Callable[[ConsumerRecord], bool],
                      timeout: float = 20.0) -> list[ConsumerRecord]:
    """The records of ``spec``'s topic for which ``keep`` holds, from the beginning to the end
    offsets as they are when called: everything published so far, and nothing left to wait for."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                                max_partition_fetch_bytes=4 * 1024 * 1024)
    await consumer.start()
    try:
        parts = [TopicPartition(spec.name, p) for p in range(spec.partitions)]
        consumer.assign(parts)
        end = await consumer.end_offsets(parts)
        found: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout
        while [tp for tp in parts if await consumer.position(tp) < end[tp]]:
            assert time.monotonic() < deadline, f"{spec.name} not read to its end offsets {end}"
            batch = await consumer.getmany(*parts, timeout_ms=200)
            found += [r for tp, records in batch.items() for r in records if r.offset < end[tp] and keep(r)]
        return found
    finally:
        await consumer.stop()


async def outbox_drained(runtimes: list[Runtime]) -> None:
    """Wait until the roadshow's outbox is empty: every event committed so far is on its topic."""
    pool = runtimes[0].pool
    left = await eventually(lambda: pool.fetchval("SELECT count(*) FROM outbox"), lambda n: n == 0, timeout=20)
    assert left == 0, f"{left} events still in the outbox"


def _passes(runtimes: list[Runtime]) -> list[float]:
    return [rt.metrics.registry.get_sample_value("finmesh_roadshow_schedule_passes_total") or 0.0 for rt in runtimes]


async def schedule_passes(runtimes: list[Runtime], n: int = 2) -> None:
    """Wait until every replica has completed ``n`` more passes of its schedule (so at least one
    whole pass of each began after the call)."""
    start = _passes(runtimes)
    done = await eventually(lambda: asyncio.sleep(0, _passes(runtimes)),
                            lambda now: all(b >= a + n for a, b in zip(start, now, strict=True)), timeout=20)
    assert all(b >= a + n for a, b in zip(start, done, strict=True)), (start, done)


async def notices(bootstrap: str, runtimes: list[Runtime], roadshow_id: str, recipients: set[str]
                  ) -> list[ev.RoadshowNotice]:
    """Every notice of one roadshow to ``recipients`` (the broker is shared with other tests'
    enterprises) that the roadshow has issued so far: once its outbox is drained, the notice topic
    read to its end."""
    def mine(rec: ConsumerRecord) -> bool:
        notice = ev.RoadshowNotice.FromString(rec.value)
        return notice.roadshow_id == roadshow_id and notice.recipient_id in recipients

    await outbox_drained(runtimes)
    return [ev.RoadshowNotice.FromString(x.value) for x in await read_to_end(bootstrap, topics.ROADSHOW_NOTICES, mine)]
