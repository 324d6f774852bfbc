"""The service life cycle: one composition root per service, started and stopped in order.

A service describes itself with a ``build`` coroutine that receives a :class:`Runtime`
(settings, metrics, database pool, producer, gRPC server) and registers its servicers,
consumers and background tasks. :func:`main` then runs it:

start: metrics endpoint → migrations → pool → producer → gRPC (NOT_SERVING) → outbox relay
→ consumers and tasks → readiness checks → SERVING.

SIGTERM / SIGINT: NOT_SERVING → gRPC stops taking calls and drains in-flight ones (stop
intake) → consumers finish the record in hand and commit → the relay publishes what is
committed (drain) → producer, pool and metrics close.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer

from meshkit import db, inbox, log
from meshkit.grpcserver import GrpcServer
from meshkit.kafka import EventConsumer, Handler, make_producer
from meshkit.metrics import Metrics
from meshkit.metrics import serve as serve_metrics
from meshkit.operators import Operators
from meshkit.outbox import OutboxRelay, RelayProcess
from meshkit.settings import ServiceSettings
from meshkit.topics import TopicSpec

logger = log.get(__name__)

ReadinessCheck = Callable[[], Awaitable[bool]]


async def every(interval_seconds: float, step: Callable[[], Awaitable[object]], what: str) -> None:
    """A background pass: run ``step`` every ``interval_seconds`` until cancelled. A failure (a
    database restart) is logged and the pass runs again next round."""
    while True:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a database restart: try again next round
            logger.exception(f"{what} failed; retrying")
        await asyncio.sleep(interval_seconds)


async def drain(batch: Callable[[], Awaitable[int]]) -> None:
    """Run ``batch`` (which handles what is due, a batch at a time, and says how many) until nothing is left."""
    while await batch() > 0:
        pass


class Runtime:
    """Everything a running service holds, in the order it is started and stopped."""

    def __init__(self, settings: ServiceSettings, *, schema: str, migrations: Path,
                 metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.schema = schema
        self.migrations = migrations
        self.metrics = metrics or Metrics()
        self.service = settings.service_name
        self.operators = Operators(settings.operator_keys)
        self.grpc = GrpcServer(service=self.service, host=settings.grpc_host, port=settings.grpc_port,
                               metrics=self.metrics)
        self.pool: asyncpg.Pool = None  # type: ignore[assignment]
        self.producer: AIOKafkaProducer = None  # type: ignore[assignment]
        self.relay: OutboxRelay | RelayProcess = (
            RelayProcess(settings, schema=schema, metrics_port=settings.outbox_relay_metrics_port)
            if settings.outbox_relay == "process" else
            OutboxRelay(database_url=settings.database_url, schema=schema, bootstrap=settings.kafka_bootstrap_servers,
                        service=self.service, metrics=self.metrics))
        self.consumers: list[EventConsumer] = []
        self._tasks: list[Callable[[], Awaitable[Any]]] = []
        self._readiness: list[ReadinessCheck] = []
        self._on_stop: list[Callable[[], Awaitable[None]]] = []
        self._running: list[asyncio.Task] = []
        self._metrics_server: Any = None
        self.grpc_port = 0
        self.metrics_port = 0

    # -- registration (from a service's build) -----------------------------------------
    def consume(self, spec: TopicSpec, handler: Handler, *, group: str | None = None, serves_at_once: bool = False,
                **kw: Any) -> EventConsumer:
        """A consumer started with the service; the service reports SERVING once it has joined its
        group, unless ``serves_at_once`` (one that waits on ``after`` conditions the service need
        not wait for)."""
        consumer = EventConsumer(
            spec=spec, group_id=group or f"{self.service}.{spec.name}", bootstrap=self.settings.kafka_bootstrap_servers,
            handler=handler, producer=self.producer, metrics=self.metrics, service=self.service,
            stall_seconds=self.settings.consumer_stall_seconds, attempts=self.settings.consumer_attempts, **kw,
        )
        self.consumers.append(consumer)
        if not serves_at_once:
            self._readiness.append(self._assigned(consumer))
        return consumer

    def task(self, factory: Callable[[], Awaitable[Any]]) -> None:
        """A background coroutine started with the service and cancelled at shutdown."""
        self._tasks.append(factory)

    def readiness(self, check: ReadinessCheck) -> None:
        """A condition that must hold before health reports SERVING."""
        self._readiness.append(check)

    def on_stop(self, fn: Callable[[], Awaitable[None]]) -> None:
        self._on_stop.append(fn)

    # -- start and stop -----------------------------------------------------------------
    async def open(self) -> None:
        """Metrics, migrations, pool, producer, gRPC server (NOT_SERVING)."""
        s = self.settings
        self.metrics_port, self._metrics_server = serve_metrics(self.metrics, s.metrics_port)
        await db.migrate(s.database_url, self.schema, self.migrations)
        self.pool = await db.create_pool(s.database_url, schema=self.schema, max_size=s.db_pool_max)
        self.producer = make_producer(s.kafka_bootstrap_servers, self.service)
        await asyncio.wait_for(self.producer.start(), 60)

    async def _prune_inbox(self, every_seconds: float = 600.0) -> None:
        while True:
            try:
                await inbox.prune(self.pool)
            except Exception as err:  # noqa: BLE001 - try again next time
                logger.warning("inbox pruning failed", error=repr(err))
            await asyncio.sleep(every_seconds)

    async def start(self) -> None:
        self.grpc_port = await self.grpc.start()
        self._running.append(asyncio.create_task(self.relay.run(), name="outbox-relay"))
        self._running.append(asyncio.create_task(self._prune_inbox(), name="inbox-pruning"))
        for c in self.consumers:
            self._running.append(asyncio.create_task(c.run(), name=f"consumer:{c.spec.name}"))
        for factory in self._tasks:
            self._running.append(asyncio.create_task(factory()))
        await self._wait_ready()
        await self.grpc.set_serving(True)
        logger.info("serving", grpc_port=self.grpc_port, metrics_port=self.metrics_port)

    async def _wait_ready(self) -> None:
        """Until every readiness check holds; one that raises is asked again, and what is still
        awaited is logged every 10 s."""
        checks = [(_name(check), check) for check in self._readiness]
        logged = time.monotonic()
        while True:
            pending = []
            for name, check in checks:
                try:
                    if not await check():
                        pending.append(name)
                except Exception as err:  # noqa: BLE001 - not ready yet (the broker or database may be back)
                    pending.append(f"{name} ({err!r})")
            if not pending:
                return
            if time.monotonic() - logged > 10:
                logger.warning("not ready yet", waiting_for=pending)
                logged = time.monotonic()
            await asyncio.sleep(0.1)

    @staticmethod
    def _assigned(consumer: EventConsumer) -> ReadinessCheck:
        async def check() -> bool:
            return consumer.assigned.is_set()
        check.__qualname__ = f"consumer of {consumer.spec.name} assigned"
        return check

    async def stop(self) -> None:
        grace = self.settings.shutdown_grace_seconds
        await self.grpc.stop(grace)  # stop intake, finish calls in flight
        for c in self.consumers:
            await c.stop()
        await self.relay.stop()
        for fn in self._on_stop:
            await fn()
        done, pending = await asyncio.wait(self._running, timeout=grace) if self._running else (set(), set())
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if self.producer is not None:
            await asyncio.wait_for(self.producer.stop(), grace)
        if self.pool is not None:
            await self.pool.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        logger.info("stopped")


def _name(check: ReadinessCheck) -> str:
    return getattr(check, "__qualname__", None) or type(check).__name__


def main(settings: ServiceSettings, *, schema: str, migrations: Path,
         build: Callable[[Runtime], Awaitable[None]]) -> None:
    """Run a service until SIGTERM or SIGINT, then shut it down gracefully."""
    log.configure(settings.service_name, settings.log_level)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        rt = Runtime(settings, schema=schema, migrations=migrations)
        await rt.open()
        await build(rt)
        starting = asyncio.create_task(rt.start())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()
            await stopped
        else:
            starting.cancel()
        await rt.stop()

    asyncio.run(run())
