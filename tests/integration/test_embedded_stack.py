"""The embedded stack on real processes: Kafka durability, PostgreSQL restarts, the supervisor."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid

import asyncpg
import psutil
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from rich.console import Console

from deploy.embedded.kafka import KafkaBroker
from deploy.embedded.postgres import EmbeddedPostgres
from deploy.embedded.supervisor import Mesh, ServiceSpec

pytestmark = pytest.mark.integration


async def create_topic(bootstrap: str) -> str:
    name = f"test.{uuid.uuid4().hex[:12]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    return name


async def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    """Send every value with acks=all and wait for every acknowledgement."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        pending = [await producer.send(topic, value) for value in values]
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def consume_all(bootstrap: str, topic: str, count: int, timeout: float = 20.0) -> list[bytes]:
    """Read ``count`` records from the beginning of partition 0 (no consumer group)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    got: list[bytes] = []
    try:
        consumer.assign([TopicPartition(topic, 0)])
        await consumer.seek_to_beginning()
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            got += [rec.value for recs in batches.values() for rec in recs]
    finally:
        await consumer.stop()
    return got


async def test_kafka_produces_and_consumes(kafka_broker: KafkaBroker) -> None:
    topic = await create_topic(kafka_broker.bootstrap_servers)
    values = [f"record-{i}".encode() for i in range(100)]
    await produce(kafka_broker.bootstrap_servers, topic, values)
    assert await consume_all(kafka_broker.bootstrap_servers, topic, len(values)) == values


async def test_kafka_accepts_a_payload_over_one_mib(kafka_broker: KafkaBroker) -> None:
    """message.max.bytes is ~2 MiB, so an oversized payload reaches dead-letter logic."""
    topic = await create_topic(kafka_broker.bootstrap_servers)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap_servers, max_request_size=2 * 1024 * 1024)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"x" * (1024 * 1024 + 1000))
    finally:
        await producer.stop()


async def test_kafka_kill_9_loses_no_acknowledged_record(kafka_broker: KafkaBroker) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await create_topic(bootstrap)
    values = [f"{i}:{uuid.uuid4()}".encode() for i in range(5000)]
    await produce(bootstrap, topic, values)

    old_pid = kafka_broker.pid
    kafka_broker.kill()
    assert not kafka_broker.alive() and kafka_broker.returncode == -9
    kafka_broker.start()
    waited = kafka_broker.wait_ready(timeout=60)
    print(f"kafka answered {waited:.1f} s after restart")

    assert kafka_broker.pid != old_pid
    assert await consume_all(bootstrap, topic, len(values)) == values


async def _count(uri: str) -> int:
    conn = await asyncpg.connect(uri)
    try:
        return await conn.fetchval("SELECT count(*) FROM survival")
    finally:
        await conn.close()


async def _insert(uri: str, rows: int) -> None:
    conn = await asyncpg.connect(uri)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS survival (id serial PRIMARY KEY, note text)")
        await conn.executemany("INSERT INTO survival (note) VALUES ($1)", [(f"n{i}",) for i in range(rows)])
    finally:
        await conn.close()


async def test_postgres_data_survives_stop_and_start(embedded_postgres: EmbeddedPostgres) -> None:
    uri = embedded_postgres.uri
    await _insert(uri, 10)
    before = await _count(uri)
    embedded_postgres.stop()
    assert not embedded_postgres.alive()
    assert embedded_postgres.start() == uri
    assert await _count(uri) == before


async def test_postgres_restarts_after_kill_9(embedded_postgres: EmbeddedPostgres) -> None:
    uri = embedded_postgres.uri
    await _insert(uri, 5)
    before = await _count(uri)
    old_pid = embedded_postgres.pid
    embedded_postgres.kill()
    assert not embedded_postgres.alive()
    embedded_postgres.start()
    assert embedded_postgres.pid != old_pid
    assert await _count(uri) == before


# A stand-in service: a gRPC health server on GRPC_PORT that exits on SIGTERM.
FAKE_SERVICE = """
import os, signal, threading
from concurrent import futures
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
server = grpc.server(futures.ThreadPoolExecutor(2))
servicer = health.HealthServicer()
servicer.set("", health_pb2.HealthCheckResponse.SERVING)
health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
server.add_insecure_port("127.0.0.1:" + os.environ["GRPC_PORT"])
server.start()
done = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: done.set())
done.wait()
server.stop(1).wait()
"""


def test_mesh_restarts_a_killed_service_and_stops_cleanly(
    tmp_path, kafka_broker: KafkaBroker, postgres_uri: str, free_port
) -> None:
    specs = [
        ServiceSpec(name, free_port(), free_port(), (sys.executable, "-c", FAKE_SERVICE)) for name in ("alpha", "beta")
    ]
    mesh = Mesh(
        tmp_path,
        services=specs,
        kafka_bootstrap_servers=kafka_broker.bootstrap_servers,
        database_url=postgres_uri,
        topics_command=None,
        check_interval=0.1,
        console=Console(quiet=True),
    )
    mesh.start()
    try:
        mesh.wait_healthy(timeout=20)
        assert mesh.info.grpc_address("beta") == f"127.0.0.1:{specs[1].grpc_port}"
        with pytest.raises(KeyError):
            mesh.kill("kafka")  # an external broker is not ours to kill

        killed = mesh.kill("beta")
        deadline = time.monotonic() + 10
        while mesh.restarts("beta") == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert mesh.restarts("beta") == 1 and mesh.pid("beta") != killed
        mesh.wait_healthy(timeout=20)
        pids = [mesh.pid(name) for name in ("alpha", "beta")]
    finally:
        mesh.stop()
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids)
    assert kafka_broker.alive()  # external services are left alone
