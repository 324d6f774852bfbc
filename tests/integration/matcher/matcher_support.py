"""Helpers of the matcher's integration tests: the worker process, publishing, reading."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from meshkit import codec
from meshkit.topics import TopicSpec

REPO_ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]




class MatcherProcess:
    """One matcher worker process; ``address`` is its gRPC server."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.address = f"127.0.0.1:{env['GRPC_PORT']}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen([sys.executable, "-m", "services.matcher"], cwd=REPO_ROOT, env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    async def wait_serving(self, timeout: float = 60.0) -> float:
        began = time.monotonic()
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() - began < timeout:
                assert self.proc is not None and self.proc.poll() is None, self.logs()
                try:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return time.monotonic() - began
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.2)
        raise AssertionError(f"matcher not SERVING after {timeout} s\n{self.logs()}")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"matcher ignored SIGTERM for {timeout} s\n{self.logs()}") from None
        return self.proc.returncode

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]


def matcher_env(database_url: str, bootstrap: str, group: str) -> dict[str, str]:
    return {
        **os.environ, "PYTHONUNBUFFERED": "1", "SERVICE_NAME": "matcher",
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "DATABASE_URL": database_url,
        "GRPC_PORT": str(free_port()), "METRICS_PORT": "0",
        "DEMAND_GROUP": group, "SHUTDOWN_GRACE_SECONDS": "3", "LOG_LEVEL": "info",
    }


async def publish(bootstrap: str, spec: TopicSpec, message: Message, *, event_id: str | None = None,
                  value: bytes | None = None) -> str:
    """Publish ``message`` (or raw ``value``) on ``spec`` with the mesh's headers; returns the event id."""
    event_id = event_id or codec.new_event_id()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(
            spec.name, value=message.SerializeToString() if value is None else value,
            key=spec.key_of(message), headers=codec.make_headers(spec.event_type, "tests", event_id),
        )
    finally:
        await producer.stop()
    return event_id


async def topic_partitions(bootstrap: str, topic: str) -> list[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return [p["partition"] for t in described if t["topic"] == topic and t["error_code"] == 0
            for p in t["partitions"]]


async def read_until(bootstrap: str, topic: str, done: Callable[[list[ConsumerRecord]], bool],
                     keep: Callable[[ConsumerRecord], bool], timeout: float = 20.0) -> list[ConsumerRecord]:
    """Records of ``topic`` (all partitions, from the beginning) that ``keep`` accepts, read until
    ``done`` says so or the time runs out. The topic may not exist yet."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=100)
    await consumer.start()
    kept: list[ConsumerRecord] = []
    deadline = time.monotonic() + timeout
    try:
        while not (parts := await topic_partitions(bootstrap, topic)):
            if time.monotonic() > deadline:
                return kept
            await asyncio.sleep(0.2)
        consumer.assign([TopicPartition(topic, p) for p in parts])
        await consumer.seek_to_beginning()
        while not done(kept) and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            kept += [r for records in batch.values() for r in records if keep(r)]
    finally:
        await consumer.stop()
    return kept
