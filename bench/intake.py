"""Intake speed of the demand service, each against what the same machine does with no work.

On the embedded stack (Kafka + PostgreSQL), with only the demand service running:

1. gRPC ``SubmitDemand``: ``--concurrency`` calls in flight from ``--clients`` client processes
   for ``--seconds`` (after a warm-up), every call a new demand committed durably; then the
   same client against a do-nothing ``grpc.aio`` server of the same service (its handler
   returns an empty response). Ratio = demand service / do-nothing server, in calls per second.
2. Portal topic: ``--records`` valid ``PortalDemandSubmitted`` records of registered
   enterprises are produced while the demand service is stopped; a plain aiokafka consume
   loop (no processing) reads them all, then the demand service is started and drains them;
   its rate counts from the first demand stored to the last. Ratio = service / plain loop.

    python -m bench.intake                     # make bench runs this with the defaults
    python -m bench.intake --seconds 20 --records 50000 --concurrency 64 --clients 1
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
from aiokafka import AIOKafkaConsumer
from rich.console import Console

from bench import report
from deploy.demo import dataset as ds
from deploy.demo import runner
from deploy.embedded import ProcessGroup
from deploy.embedded.supervisor import REPO_ROOT, Mesh, Ports, ServiceProcess, ServiceSpec
from finmesh.demand.v1 import demand_pb2 as dem
from finmesh.demand.v1 import demand_pb2_grpc as dem_grpc
from finmesh.demand.v1 import events_pb2 as demand_events
from finmesh.enterprise.v1 import enterprise_pb2 as ent
from finmesh.enterprise.v1 import enterprise_pb2_grpc as ent_grpc
from meshkit import codec, topics
from meshkit.kafka import make_producer

SUBMIT = "/finmesh.demand.v1.DemandService/SubmitDemand"
GRPC_AIM = 0.60  # of the do-nothing server
TOPIC_AIM_PER_S = 10_000


# -- the gRPC client (run in client processes) ----------------------------------------------------------


@dataclass
class ClientResult:
    calls: int
    errors: int
    seconds: float
    latencies: list[float]


async def _load(addr: str, demands: list[bytes], prefix: str, concurrency: int, warmup: float,
                seconds: float) -> ClientResult:
    """``concurrency`` loops calling SubmitDemand back to back; counts the calls of the measured window."""
    async with grpc.aio.insecure_channel(addr) as channel:
        call = channel.unary_unary(SUBMIT)  # bytes in, bytes out: the client does the same work for both servers
        began = time.perf_counter()
        start, stop = began + warmup, began + warmup + seconds
        latencies: list[float] = []
        errors = 0
        n = 0

        async def worker() -> None:
            nonlocal errors, n
            while (t0 := time.perf_counter()) < stop:
                n += 1
                # Fields concatenate in the wire format: request_id + demand.
                request = dem.SubmitDemandRequest(request_id=f"{prefix}-{n}").SerializeToString() + \
                    demands[n % len(demands)]
                try:
                    await call(request, timeout=30)
                except grpc.aio.AioRpcError:
                    if t0 >= start:
                        errors += 1
                    continue
                t1 = time.perf_counter()
                if t0 >= start and t1 <= stop:
                    latencies.append(t1 - t0)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ClientResult(len(latencies), errors, seconds, latencies)


def _client_process(addr: str, demands: list[bytes], prefix: str, concurrency: int, warmup: float,
                    seconds: float) -> ClientResult:
    return asyncio.run(_load(addr, demands, prefix, concurrency, warmup, seconds))


def measure_grpc(addr: str, demands: list[bytes], *, clients: int, concurrency: int, warmup: float,
                 seconds: float) -> dict[str, float]:
    run = uuid.uuid4().hex[:8]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(clients, mp_context=ctx) as pool:
        futures = [pool.submit(_client_process, addr, demands, f"intake-{run}-{i}", concurrency // clients, warmup,
                               seconds) for i in range(clients)]
        results = [f.result() for f in futures]
    latencies = [x for r in results for x in r.latencies]
    return {
        "calls_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(report.percentile(latencies, 50) * 1000, 2),
        "p99_ms": round(report.percentile(latencies, 99) * 1000, 2),
        "errors": sum(r.errors for r in results),
    }


# -- the do-nothing server ------------------------------------------------------------------------------


class _NoopDemands(dem_grpc.DemandServiceServicer):
    async def SubmitDemand(self, request: dem.SubmitDemandRequest, context: grpc.aio.ServicerContext
                           ) -> dem.SubmitDemandResponse:
        return dem.SubmitDemandResponse()


async def _serve_noop(port: int) -> None:
    server = grpc.aio.server()
    dem_grpc.add_DemandServiceServicer_to_server(_NoopDemands(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def _wait_port(addr: str, timeout: float = 60) -> None:
    async with grpc.aio.insecure_channel(addr) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout)


# -- the portal topic -----------------------------------------------------------------------------------


async def produce_portal(bootstrap: str, generator: ds.DemandGenerator, count: int, run: str) -> float:
    spec = topics.PORTAL_DEMANDS
    producer = make_producer(bootstrap, "bench-intake", linger_ms=5)
    await producer.start()
    began = time.perf_counter()
    try:
        pending = []
        for n in range(count):
            request = generator.next()
            portal = runner.portal_for(request.enterprise_uscc)
            msg = demand_events.PortalDemandSubmitted(portal_id=portal, portal_demand_id=f"{run}-{n}", demand=request)
            pending.append(await producer.send(spec.name, value=msg.SerializeToString(), key=spec.key_of(msg),
                                               headers=codec.make_headers(spec.event_type, portal)))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - began


async def plain_consume(bootstrap: str, count: int) -> dict[str, float]:
    """Read ``count`` records of the portal topic with no processing: first record to last."""
    consumer = AIOKafkaConsumer(topics.PORTAL_DEMANDS.name, bootstrap_servers=bootstrap,
                                group_id=f"bench-plain-{uuid.uuid4().hex[:8]}", enable_auto_commit=False,
                                auto_offset_reset="earliest", max_poll_records=500, fetch_max_wait_ms=100,
                                max_partition_fetch_bytes=4 * 1024 * 1024)
    await consumer.start()
    seen = 0
    first = last = 0.0
    try:
        while seen < count:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                if records and not seen:
                    first = time.perf_counter()
                seen += len(records)
            if batch:
                last = time.perf_counter()
                await consumer.commit()  # as a consumer that commits after each fetch would
    finally:
        await consumer.stop()
    return {"records": seen, "seconds": round(last - first, 3), "per_s": round(seen / (last - first), 1)}


async def drain(database_url: str, count: int, timeout: float = 600) -> dict[str, float]:
    """Watch the demands table until ``count`` portal demands are stored: first stored to last."""
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + timeout
        first_at = first_n = 0.0
        while time.monotonic() < deadline:
            n = await conn.fetchval("SELECT count(*) FROM demand.demands WHERE channel = 1")
            now = time.perf_counter()
            if n and not first_at:
                first_at, first_n = now, n
            if n >= count:
                seconds = now - first_at
                return {"records": n, "seconds": round(seconds, 3),
                        "per_s": round((n - first_n) / seconds, 1) if seconds else 0.0}
            await asyncio.sleep(0.05)
        raise TimeoutError(f"only {n} of {count} portal demands stored after {timeout:.0f} s")
    finally:
        await conn.close()


# -- the run ----------------------------------------------------------------------------------------------


class Profile:
    """``py-spy record`` of a process while a phase runs (``--profile DIR``): collapsed stacks in DIR/<name>.txt."""

    def __init__(self, folder: Path | None, name: str, pid: int | None) -> None:
        self.folder, self.name, self.pid = folder, name, pid
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Profile:
        if self.folder is not None and self.pid:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._proc = subprocess.Popen(
                [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(self.pid), "--format", "raw",
                 "--rate", "250", "--nonblocking", "-o", str(self.folder / f"{self.name}.txt")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGINT)
            self._proc.wait(30)



def _demand_process(mesh: Mesh, grpc_port: int, metrics_port: int, data_dir: Path) -> ServiceProcess:
    spec = ServiceSpec("demand", grpc_port, metrics_port)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "KAFKA_BOOTSTRAP_SERVERS": mesh.info.kafka_bootstrap_servers,
           "DATABASE_URL": mesh.info.database_url, "GRPC_PORT": str(grpc_port), "METRICS_PORT": str(metrics_port),
           "SERVICE_NAME": "demand"}
    return ServiceProcess(spec, env, data_dir / "logs" / "demand.log", data_dir / "run" / "demand.pid")


async def _wait_serving(addr: str, timeout: float = 120) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError(f"demand service at {addr} not SERVING")


async def measure(console: Console, *, seconds: float = 15.0, warmup: float = 3.0, concurrency: int = 64,
                  clients: int = 1, records: int = 50_000, name: str = "intake", profile: Path | None = None
                  ) -> dict[str, object]:
    ports = Ports.free(services=2)
    grpc_port, noop_port, metrics_port = ports.grpc_base, ports.grpc_base + 1, ports.metrics_base
    data = ds.build(ds.DEFAULT_SEED)
    generator = ds.DemandGenerator(data, 11)
    demands = [dem.SubmitDemandRequest(demand=generator.next()).SerializeToString() for _ in range(2000)]
    figures: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="finmesh-intake-") as tmp:
        data_dir = Path(tmp)
        mesh = Mesh(data_dir, ports=ports, services=(), console=console)
        mesh.start()
        service = _demand_process(mesh, grpc_port, metrics_port, data_dir)
        noop = ProcessGroup("noop-server", data_dir / "logs" / "noop.log")
        try:
            info = mesh.info
            addr = f"127.0.0.1:{grpc_port}"
            service.start()
            await _wait_serving(addr)
            async with grpc.aio.insecure_channel(addr) as channel:
                stub = ent_grpc.EnterpriseServiceStub(channel)
                sem = asyncio.Semaphore(32)

                async def register(e: ent.Enterprise) -> None:
                    async with sem:
                        await stub.RegisterEnterprise(ent.RegisterEnterpriseRequest(enterprise=e), timeout=30)

                await asyncio.gather(*(register(e) for e in data.enterprises))
            console.print(f"{len(data.enterprises)} enterprises registered")

            # 1. gRPC: the do-nothing server, then the demand service, with the same client
            noop.start([sys.executable, "-m", "bench.intake", "--noop-server", str(noop_port)], cwd=REPO_ROOT)
            await _wait_port(f"127.0.0.1:{noop_port}")
            kw = dict(clients=clients, concurrency=concurrency, warmup=warmup, seconds=seconds)
            console.print(f"gRPC: do-nothing server, {concurrency} in flight from {clients} client process(es)")
            base = await asyncio.to_thread(measure_grpc, f"127.0.0.1:{noop_port}", demands, **kw)
            noop.stop()
            console.print(f"gRPC: demand service, {concurrency} in flight from {clients} client process(es)")
            with Profile(profile, "grpc_demand", service.pid):
                real = await asyncio.to_thread(measure_grpc, addr, demands, **kw)
            figures |= {f"grpc_noop_{k}": v for k, v in base.items()}
            figures |= {f"grpc_demand_{k}": v for k, v in real.items()}
            figures["grpc_ratio"] = round(real["calls_per_s"] / base["calls_per_s"], 3)

            # 2. the portal topic: pre-produce with the service stopped, read plainly, then drain
            service.stop()
            run = uuid.uuid4().hex[:8]
            produced_s = await produce_portal(info.kafka_bootstrap_servers, generator, records, run)
            console.print(f"{records:,} portal records produced in {produced_s:.1f} s")
            plain = await plain_consume(info.kafka_bootstrap_servers, records)
            console.print(f"plain consume loop: {plain}")
            already = await _portal_demands(info.database_url)
            service.start()
            await _wait_serving(addr)
            with Profile(profile, "topic_demand", service.pid):
                drained = await drain(info.database_url, already + records)
            console.print(f"demand service: {drained}")
            figures |= {"topic_records": records, "topic_plain_per_s": plain["per_s"],
                        "topic_demand_per_s": drained["per_s"], "topic_demand_seconds": drained["seconds"],
                        "topic_ratio": round(drained["per_s"] / plain["per_s"], 3)}
            figures["grpc_aim_met"] = figures["grpc_ratio"] >= GRPC_AIM
            figures["topic_aim_met"] = drained["per_s"] >= TOPIC_AIM_PER_S
        finally:
            noop.stop()
            service.stop()
            mesh.stop()
    settings = {
        "machine_note": "client processes, the server, Kafka and PostgreSQL share the machine's CPUs",
        "grpc": {"clients": clients, "in_flight": concurrency, "warmup_s": warmup, "measured_s": seconds,
                 "client": "grpc.aio, pre-serialized requests, responses not parsed",
                 "noop": "grpc.aio server, DemandService.SubmitDemand returns SubmitDemandResponse()",
                 "demand": "python -m services.demand, every call a new demand (synchronous_commit on)"},
        "topic": {"records": records, "partitions": topics.PORTAL_DEMANDS.partitions,
                  "plain": "aiokafka getmany, max_poll_records=500, commit per fetch, no decoding",
                  "demand": "rate from the first portal demand stored to the last (count polled every 50 ms)"},
        "aims": {"grpc_ratio": GRPC_AIM, "topic_per_s": TOPIC_AIM_PER_S},
    }
    report.write(name, figures, settings, console)
    return figures


async def _portal_demands(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval("SELECT count(*) FROM demand.demands WHERE channel = 1")
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per gRPC target")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=64, help="gRPC calls in flight, in all")
    parser.add_argument("--clients", type=int, default=1, help="gRPC client processes")
    parser.add_argument("--records", type=int, default=50_000, help="portal records to drain")
    parser.add_argument("--name", default="intake")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy the demand service into DIR")
    parser.add_argument("--noop-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.noop_server:
        asyncio.run(_serve_noop(args.noop_server))
        return
    asyncio.run(measure(Console(), seconds=args.seconds, warmup=args.warmup, concurrency=args.concurrency,
                        clients=args.clients, records=args.records, name=args.name, profile=args.profile))


if __name__ == "__main__":
    main()
