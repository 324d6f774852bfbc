"""The notifier's speed on the embedded stack (Kafka 4, PostgreSQL 18, the notifier in-process).

1. throughput: a burst of ``DemandMatched`` events (one lead each: a notification for the
   enterprise and one for the institution, and a webhook delivery) — notifications recorded per
   second, first event published to the last notification stored;
2. delivery latency: events at a steady rate; latency = the webhook request's arrival at a
   loopback HTTP server − the moment the event was handed to the producer (Kafka, the notifier's
   consumer, PostgreSQL, the delivery worker, HTTP), and the notifier's own creation → 2xx time.

    python -m bench.notifier                  # figures in bench/results/notifier.json
    python -m bench.notifier --burst 1000 --rate 50 --seconds 10   # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
from aiohttp import web
from rich.console import Console

from bench import report
from deploy.embedded.kafka import KafkaBroker
from deploy.embedded.postgres import EmbeddedPostgres
from finmesh.institution.v1.events_pb2 import InstitutionChanged
from finmesh.institution.v1.institution_pb2 import Institution
from finmesh.lead.v1 import lead_pb2
from finmesh.matching.v1 import events_pb2 as matching
from meshkit import apikeys, codec, ids, topics
from meshkit.kafka import ensure_topics, make_producer
from meshkit.lifecycle import Runtime
from meshkit.settings import ServiceSettings
from services.notifier import app
from services.notifier.service import Caller, Notifier

INSTITUTION = "bench-bank"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def matched(demand_id: str) -> matching.DemandMatched:
    msg = matching.DemandMatched(demand_id=demand_id, enterprise_uscc=f"E-{demand_id}", candidates_considered=1)
    pid = f"{INSTITUTION}-p1"
    msg.leads.add(lead_id=ids.lead_id(demand_id, pid), demand_id=demand_id, institution_id=INSTITUTION,
                  product_id=pid, score=80, rank=1, status=lead_pb2.LEAD_STATUS_CREATED)
    return msg


class Receiver:
    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}  # demand id -> arrival

    async def handle(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        self.arrived.setdefault(body["demand_id"], time.time())
        return web.Response(status=204)


async def _publish(producer, demand_ids: list[str], sent: dict[str, float], rate: float | None) -> None:
    spec = topics.DEMANDS_MATCHED
    began = time.monotonic()
    for i, demand_id in enumerate(demand_ids):
        if rate:
            delay = began + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        msg = matched(demand_id)
        sent[demand_id] = time.time()
        await producer.send(spec.name, value=msg.SerializeToString(), key=spec.key_of(msg),
                            headers=codec.make_headers(spec.event_type, "bench", codec.new_event_id()))
    await producer.flush()


async def _until(check, timeout: float) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError("the notifier did not catch up")
        await asyncio.sleep(0.05)


async def measure(console: Console, *, burst: int = 5000, rate: float = 50.0, seconds: float = 20.0) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="finmesh-bench-notifier-"))
    broker = KafkaBroker(folder / "kafka", _free_port(), _free_port())
    pg = EmbeddedPostgres(folder / "pgdata")
    broker.start()
    pg.start()
    receiver = Receiver()
    web_app = web.Application()
    web_app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(web_app, access_log=None)
    try:
        broker.wait_ready(timeout=90)
        await ensure_topics(broker.bootstrap_servers, topics.concrete())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        settings = ServiceSettings(service_name="notifier", kafka_bootstrap_servers=broker.bootstrap_servers,
                                   database_url=pg.uri, grpc_port=0, metrics_port=0)
        rt = Runtime(settings, schema=app.SCHEMA, migrations=app.MIGRATIONS)
        await rt.open()
        await app.build(rt)
        await rt.start()
        conn = await asyncpg.connect(pg.uri)
        producer = make_producer(broker.bootstrap_servers, "bench-matcher")
        await producer.start()
        try:
            notifier = Notifier(rt.pool, rt.metrics, codec.now, schema=app.SCHEMA)
            key = apikeys.new()
            await notifier.on_institution(InstitutionChanged(  # as its registration would
                institution=Institution(institution_id=INSTITUTION, version=1), api_key_sha256=apikeys.digest(key)))
            await notifier.register_webhook(INSTITUTION, f"http://127.0.0.1:{port}/hook", Caller(api_key=key))

            async def stored() -> int:
                return await conn.fetchval("SELECT count(*) FROM notifier.notifications")

            # 1. burst
            sent: dict[str, float] = {}
            run = uuid.uuid4().hex[:6]
            burst_ids = [f"b-{run}-{i}" for i in range(burst)]
            t0 = time.monotonic()
            await _publish(producer, burst_ids, sent, None)
            await _until(lambda: _ge(stored, 2 * burst), timeout=600)
            burst_s = time.monotonic() - t0
            await _until(lambda: _ready(lambda: len(receiver.arrived) >= burst), timeout=600)
            burst_delivered_s = time.monotonic() - t0

            # 2. steady rate
            paced_ids = [f"p-{run}-{i}" for i in range(int(rate * seconds))]
            await _publish(producer, paced_ids, sent, rate)
            await _until(lambda: _ready(lambda: all(d in receiver.arrived for d in paced_ids)), timeout=300)
            lat = [1000 * (receiver.arrived[d] - sent[d]) for d in paced_ids]
            hist = rt.metrics.delivery_latency
            figures = {
                "burst_events": burst,
                "burst_notifications_per_s": round(2 * burst / burst_s, 1),
                "burst_events_per_s": round(burst / burst_s, 1),
                "burst_webhook_deliveries_per_s": round(burst / burst_delivered_s, 1),
                "paced_rate_per_s": rate,
                "paced_events": len(paced_ids),
                "event_to_webhook_p50_ms": round(report.percentile(lat, 50), 1),
                "event_to_webhook_p90_ms": round(report.percentile(lat, 90), 1),
                "event_to_webhook_p99_ms": round(report.percentile(lat, 99), 1),
                "notifier_delivery_latency_avg_ms": round(1000 * hist._sum.get() / max(1, len(receiver.arrived)), 1),
            }
        finally:
            await producer.stop()
            await conn.close()
            await rt.stop()
        return report.write("notifier", figures, {"burst": burst, "rate": rate, "seconds": seconds,
                                                  "stack": "embedded Kafka 4.4 + PostgreSQL 18, notifier in-process",
                                                  "webhook": "aiohttp server on loopback answering 204"}, console)
    finally:
        await runner.cleanup()
        pg.stop()
        broker.stop()
        shutil.rmtree(folder, ignore_errors=True)


async def _ge(fn, n: int) -> bool:  # noqa: ANN001
    return await fn() >= n


async def _ready(fn) -> bool:  # noqa: ANN001
    return fn()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    asyncio.run(measure(Console(), burst=args.burst, rate=args.rate, seconds=args.seconds))


if __name__ == "__main__":
    main()
