"""Demand → lead latency on the embedded stack, the way a bank sees it.

A fresh mesh (Kafka, PostgreSQL, the four services as processes, as `make run` starts them)
is loaded with the demo data set; demands are then submitted at a steady rate, half by gRPC
``SubmitDemand`` and half as ``PortalDemandSubmitted`` events on the portal topic, and a
plain aiokafka consumer subscribed to every lead topic records when each demand's first lead
arrives. Latency = first lead on the lead topic − the moment the demand was handed over.

    python -m bench.pipeline --demands 1200 --rate 20          # latency at one rate
    python -m bench.pipeline --minutes 30 --rate 20 --name soak  # flat over 30 minutes?
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from rich.console import Console

from bench import report
from deploy.demo import dataset as ds
from deploy.demo import runner
from deploy.embedded.kafka import RETENTION_SETTINGS
from deploy.embedded.supervisor import Mesh, Ports
from finmesh.demand.v1 import demand_pb2 as dem
from finmesh.demand.v1 import demand_pb2_grpc as dem_grpc
from finmesh.demand.v1 import events_pb2 as demand_events
from finmesh.matching.v1 import events_pb2 as matching
from meshkit import codec, ids, topics
from meshkit.kafka import make_producer


@dataclass
class Timings:
    sent: dict[str, float] = field(default_factory=dict)  # demand id -> monotonic send time
    sent_wall: dict[str, float] = field(default_factory=dict)  # demand id -> seconds since start
    first_lead: dict[str, float] = field(default_factory=dict)
    failures: int = 0

    def latencies(self, since: float = 0.0, until: float = float("inf")) -> list[float]:
        return [self.first_lead[d] - self.sent[d] for d in self.first_lead
                if d in self.sent and since <= self.sent_wall[d] < until]


async def watch(bootstrap: str, timings: Timings, ready: asyncio.Event) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=f"bench-bank-{uuid.uuid4().hex[:8]}",
                                enable_auto_commit=False, auto_offset_reset="latest", fetch_max_wait_ms=100)
    consumer.subscribe(pattern=runner.lead_topic_pattern())
    await consumer.start()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=100)
            if consumer.assignment():
                ready.set()
            now = time.monotonic()
            for records in batch.values():
                for r in records:
                    demand_id = matching.LeadIssued.FromString(r.value).lead.demand_id
                    timings.first_lead.setdefault(demand_id, now)
    finally:
        await consumer.stop()


async def feed(target: runner.Target, generator: ds.DemandGenerator, producer: AIOKafkaProducer, timings: Timings,
               rate: float, count: int | None, seconds: float | None) -> None:
    run = uuid.uuid4().hex[:8]
    began = time.monotonic()
    interval = 1.0 / rate
    pending: set[asyncio.Task] = set()
    spec = topics.PORTAL_DEMANDS
    async with grpc.aio.insecure_channel(target.demand_addr) as channel:
        stub = dem_grpc.DemandServiceStub(channel)

        async def by_grpc(key: str, request: dem.DemandRequest) -> None:
            demand_id = ids.demand_id("api", key)
            timings.sent[demand_id] = time.monotonic()
            timings.sent_wall[demand_id] = timings.sent[demand_id] - began
            try:
                await stub.SubmitDemand(dem.SubmitDemandRequest(request_id=key, demand=request), timeout=30)
            except grpc.aio.AioRpcError:
                timings.failures += 1

        async def by_portal(key: str, request: dem.DemandRequest) -> None:
            portal = runner.portal_for(request.enterprise_uscc)
            msg = demand_events.PortalDemandSubmitted(portal_id=portal, portal_demand_id=key, demand=request)
            demand_id = ids.demand_id("online_portal", f"{portal}:{key}")
            timings.sent[demand_id] = time.monotonic()
            timings.sent_wall[demand_id] = timings.sent[demand_id] - began
            await producer.send(spec.name, value=msg.SerializeToString(), key=spec.key_of(msg),
                                headers=codec.make_headers(spec.event_type, portal))

        n = 0
        due = time.monotonic()
        while (count is None or n < count) and (seconds is None or time.monotonic() - began < seconds):
            n += 1
            key = f"bench-{run}-{n}"
            request = generator.next()
            task = asyncio.create_task(by_grpc(key, request) if n % 2 else by_portal(key, request))
            pending.add(task)
            task.add_done_callback(pending.discard)
            due += interval
            await asyncio.sleep(max(0.0, due - time.monotonic()))
        await asyncio.gather(*pending)


async def wait_catalog(metrics_url: str, at_least: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(metrics_url, timeout=2).read().decode())
        for line in text.splitlines():
            if line.startswith("finmesh_catalog_products ") and float(line.split()[1]) >= at_least:
                return
        await asyncio.sleep(0.5)
    raise TimeoutError("the matcher's catalog did not fill")


def window_figures(timings: Timings, start: float, end: float) -> dict[str, float]:
    lat = timings.latencies(start, end)
    return {"demands": len(lat), "p50_ms": report.percentile(lat, 50) * 1000,
            "p99_ms": report.percentile(lat, 99) * 1000}


@dataclass(frozen=True)
class Phase:
    """Demands at ``rate`` per second, ``demands`` of them or for ``minutes``."""

    rate: float
    demands: int | None = None
    minutes: float | None = None

    @property
    def label(self) -> str:
        return f"{self.rate:g}/s"


def phase_figures(phase: Phase, timings: Timings, feed_s: float) -> dict[str, object]:
    lat = timings.latencies()
    figures: dict[str, object] = {
        "demands_sent": len(timings.sent),
        "demands_with_leads": len(timings.first_lead),
        "failed_calls": timings.failures,
        "achieved_rate_per_s": round(len(timings.sent) / feed_s, 1),
        "latency_p50_ms": round(report.percentile(lat, 50) * 1000, 1),
        "latency_p90_ms": round(report.percentile(lat, 90) * 1000, 1),
        "latency_p99_ms": round(report.percentile(lat, 99) * 1000, 1),
        "latency_max_ms": round(max(lat, default=0) * 1000, 1),
    }
    if phase.minutes:
        total = phase.minutes * 60
        first, last = window_figures(timings, 0, 300), window_figures(timings, total - 300, total)
        figures |= {"first_5min_p99_ms": round(first["p99_ms"], 1), "last_5min_p99_ms": round(last["p99_ms"], 1),
                    "last_over_first_p99": round(last["p99_ms"] / first["p99_ms"], 2) if first["p99_ms"] else 0}
        figures["p99_ms_by_5min"] = [round(window_figures(timings, s, s + 300)["p99_ms"], 1)
                                     for s in range(0, int(total), 300)]
    return figures


async def measure(console: Console, phases: list[Phase], name: str) -> None:
    """Start a mesh, load the demo data, run each phase in turn, write the figures."""
    figures: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="finmesh-bench-") as tmp:
        mesh = Mesh(Path(tmp), ports=Ports.free(), console=console)
        began = time.monotonic()
        mesh.start()
        try:
            mesh.wait_healthy(timeout=180)
            figures["mesh_healthy_s"] = round(time.monotonic() - began, 1)
            info = mesh.info
            target = runner.Target.of(info)
            data = ds.build(ds.DEFAULT_SEED)
            producer = make_producer(info.kafka_bootstrap_servers, "bench-portal", linger_ms=0)
            await producer.start()
            try:
                await runner.load(target, data, producer)
                await wait_catalog(info.services["matcher"].metrics_url, len(data.products))
                generator = ds.DemandGenerator(data, 7)
                for phase in phases:
                    console.print(f"phase {phase.label}: {phase.demands or ''} demands {phase.minutes or ''} min")
                    timings = Timings()
                    ready = asyncio.Event()
                    watcher = asyncio.create_task(watch(info.kafka_bootstrap_servers, timings, ready))
                    await asyncio.wait_for(ready.wait(), 60)
                    fed = time.monotonic()
                    await feed(target, generator, producer, timings, phase.rate, phase.demands,
                               phase.minutes * 60 if phase.minutes else None)
                    feed_s = time.monotonic() - fed
                    settle = time.monotonic() + 30
                    while time.monotonic() < settle and len(timings.first_lead) < 0.8 * len(timings.sent):
                        await asyncio.sleep(0.5)
                    await asyncio.sleep(3)  # the last leads of demands that have more than one
                    watcher.cancel()
                    await asyncio.gather(watcher, return_exceptions=True)
                    for key, value in phase_figures(phase, timings, feed_s).items():
                        figures[f"{phase.label} {key}"] = value
            finally:
                await producer.stop()
        finally:
            mesh.stop()
    settings = {
        "phases": [vars(p) for p in phases],
        "channels": "half gRPC SubmitDemand, half portal topic; latency = first lead on the lead topic - hand-over",
        "dataset": "deploy/demo/dataset.py (default seed): 52 institutions, 203 products, 1,000 enterprises",
        "kafka": {"version": "4.4.0 (KRaft, one node)", **RETENTION_SETTINGS,
                  "producers": "acks=all, idempotent, linger 0-1 ms"},
        "consumers": "aiokafka fetch_max_wait_ms=100, manual commit after handling (the matcher's demand "
                     "consumer too: batches of up to 200)",
    }
    report.write(name, figures, settings, console)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demands", type=int, default=None, help="how many demands (default 1200)")
    parser.add_argument("--minutes", type=float, default=None, help="run for this long instead")
    parser.add_argument("--rate", type=float, default=20.0, help="demands per second")
    parser.add_argument("--name", default="demand_to_lead_latency")
    args = parser.parse_args()
    demands = args.demands if args.demands or args.minutes else 1200
    asyncio.run(measure(Console(), [Phase(args.rate, demands, args.minutes)], args.name))


if __name__ == "__main__":
    main()
