"""``python -m services.demand`` starts, reports SERVING, answers, and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from finmesh.demand.v1 import demand_pb2 as dm
from finmesh.demand.v1 import demand_pb2_grpc as dm_grpc

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_the_service_runs_as_a_process(database_url: str, bootstrap: str) -> None:
    port = free_port()
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "DATABASE_URL": database_url,
           "GRPC_PORT": str(port), "METRICS_PORT": "0", "SHUTDOWN_GRACE_SECONDS": "2"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.demand", env=env,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 30
            status = None
            while time.monotonic() < deadline and proc.returncode is None:
                try:
                    status = (await health.Check(health_pb2.HealthCheckRequest(), timeout=1)).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.2)
            assert status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await dm_grpc.DemandServiceStub(channel).GetDemand(dm.GetDemandRequest(demand_id="nope"))
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
