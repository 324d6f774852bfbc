"""Composition root of the matcher: a Faust worker with the shared runtime inside it.

The Faust app consumes ``DEMANDS_ACCEPTED`` in the consumer group ``finmesh-matcher`` (workers
share its partitions), in batches. Inside it, one :class:`RuntimeService` opens the shared runtime
(metrics, migrations, pool, producer, gRPC with health NOT_SERVING, outbox relay), loads the
in-memory catalog view and keeps it current, holds the open demands of its assigned partitions
(the reverse join matches every new or changed product against them), consumes
``PRODUCTS_PUBLISHED``, the demand service's lead and demand status changes and the notifier's
missed contact clocks (re-matching), serves the catalog, subscription and pool APIs, and reports
SERVING once the view is verified against PostgreSQL and Faust has its partitions.
SIGTERM: Faust's worker stops the app; the runtime lets the batch in hand finish, then drains.
"""

from __future__ import annotations

import asyncio
import gc
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import faust
import mode
from pydantic import Field

from finmesh.catalog.v1 import product_pb2 as catalog_pb
from finmesh.catalog.v1 import product_pb2_grpc as catalog_grpc
from finmesh.matching.v1 import docking_pb2 as docking_pb
from finmesh.matching.v1 import docking_pb2_grpc as docking_grpc
from meshkit import log, topics
from meshkit.kafka import dead_letter
from meshkit.lifecycle import Runtime
from meshkit.metrics import Metrics
from meshkit.settings import ServiceSettings, load
from services.matcher import handlers, store
from services.matcher.api import CatalogApi, DemandPoolApi, SubscriptionApi
from services.matcher.consumers import (
    DemandAgent,
    DemandStatusChanges,
    LeadSlaBreaches,
    LeadStatusChanges,
    ProductsPublished,
    StallWatch,
)
from services.matcher.view import LiveCatalog, OpenDemandsView

SCHEMA = "matcher"
MIGRATIONS = Path(__file__).parent / "migrations"
APP_ID = "finmesh-matcher"

logger = log.get(__name__)


class MatcherSettings(ServiceSettings):
    service_name: str = Field(default="matcher")
    faust_datadir: str = Field(
        default=str(Path(tempfile.gettempdir()) / APP_ID),
        description="Faust's data folder (tables are in memory; Faust still wants the folder).",
    )
    faust_app_id: str = Field(default=APP_ID, description="Faust app id: the demand consumer group's name.")
    faust_replication_factor: int = Field(default=1, ge=1, description="Replicas of Faust's internal topics.")
    match_batch_size: int = Field(default=200, ge=1, description="Demands matched in one transaction at most.")
    match_batch_ms: float = Field(default=5.0, ge=0, description="How long a batch waits to fill (milliseconds).")
    # Matching keeps the service's event loop busy; its leads are published from a process beside it.
    outbox_relay: Literal["task", "process"] = Field(default="process", description=ServiceSettings.model_fields[
        "outbox_relay"].description)


def broker_urls(bootstrap: str) -> list[str]:
    """``kafka://host:port`` URLs for Faust from a comma-separated bootstrap list."""
    return [f"kafka://{h.strip().removeprefix('kafka://')}" for h in bootstrap.split(",") if h.strip()]


def plain_bootstrap(bootstrap: str) -> str:
    """``host:port,host:port`` for aiokafka, whichever form was given."""
    return ",".join(h.strip().removeprefix("kafka://") for h in bootstrap.split(",") if h.strip())


@contextmanager
def bulk_load() -> Iterator[None]:
    """Load many long-lived objects (the catalog, the open demands) without the cyclic garbage
    collector, then exempt them from it.

    They hold no reference cycles (reference counting frees them); without this, collections during
    the load walk the growing heap again and again, and every later full collection walks hundreds of
    thousands of them (which doubled the reverse join's time).
    """
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()
        gc.freeze()


class Matcher:
    """Everything the matcher runs, wired once."""

    def __init__(self, settings: MatcherSettings) -> None:
        self.settings = settings.model_copy(
            update={"kafka_bootstrap_servers": plain_bootstrap(settings.kafka_bootstrap_servers)}
        )
        self.metrics = Metrics()
        self.rt: Runtime | None = None
        self.catalog: LiveCatalog | None = None
        self.demands: handlers.DemandMatcher | None = None
        self.reverse: handlers.ReverseJoin | None = None
        self.open_demands = OpenDemandsView()
        self.ready = asyncio.Event()  # the catalog is loaded: the agent may match
        self.assigned = asyncio.Event()  # Faust's consumer has completed a rebalance
        self.rebalanced = asyncio.Event()  # the open demands to hold may have changed
        self.agent = DemandAgent(matcher=lambda: self.demands, ready=self.ready, metrics=self.metrics,
                                 service=self.settings.service_name, dead_letter=self._dead_letter,
                                 batch_size=self.settings.match_batch_size,
                                 within=self.settings.match_batch_ms / 1000)
        self.app = faust.App(
            self.settings.faust_app_id,
            broker=broker_urls(settings.kafka_bootstrap_servers),
            store="memory://",
            datadir=self.settings.faust_datadir,
            autodiscover=False,
            web_enabled=False,
            # Small timeouts: a worker joins the group in about a second instead of ~30 s.
            broker_session_timeout=6,
            broker_heartbeat_interval=1,
            broker_rebalance_timeout=10,
            broker_commit_interval=1.0,
            consumer_auto_offset_reset="earliest",
            producer_acks=-1,
            # Only Faust's own internal topics (its leader topic) are declared; ours are not
            # internal, so they are never created here (`python -m meshkit.topics create` does).
            topic_allow_declare=True,
            topic_replication_factor=self.settings.faust_replication_factor,
        )
        demands_topic = self.app.topic(
            topics.DEMANDS_ACCEPTED.name, key_serializer="raw", value_serializer="raw", internal=False,
        )

        async def match_demands(stream: Any) -> None:
            await self.agent.run(stream)

        self.app.agent(demands_topic, name="match-demands")(match_demands)
        self.app.on_partitions_assigned.connect(self._on_assigned)
        self.app.service(RuntimeService(self))

    async def _dead_letter(self, record: Any, reason: str) -> None:
        assert self.rt is not None
        await dead_letter(self.rt.producer, topics.DEMANDS_ACCEPTED, record, reason, self.settings.faust_app_id)

    async def _on_assigned(self, sender: Any, assigned: Any, **kwargs: Any) -> None:
        self.assigned.set()
        self.rebalanced.set()

    def _demand_partitions(self) -> set[int]:
        try:
            assignment = self.app.consumer.assignment()
        except Exception:  # noqa: BLE001 - no consumer yet
            return set()
        return {tp.partition for tp in assignment if tp.topic == topics.DEMANDS_ACCEPTED.name}

    async def _hold_open_demands(self) -> None:
        """Hold in memory the open demands of the partitions assigned (after each rebalance), and
        join the products changed while no worker held them.

        Readiness does not wait for this (ready is: catalog loaded and verified, partitions
        assigned): new demands are matched meanwhile, and a product changed while the open demands
        load is joined against them by the catch-up once they are in."""
        assert self.rt is not None and self.reverse is not None
        while True:
            await self.rebalanced.wait()
            self.rebalanced.clear()
            wanted = self._demand_partitions()
            self.open_demands.drop(self.open_demands.parts - wanted)
            added = sorted(wanted - self.open_demands.parts)
            if not added:
                continue
            for part in added:
                self.open_demands.parts.add(part)  # new demands of these partitions are kept from now on
            try:
                rows = await store.open_demands_of(self.rt.pool, added)
            except Exception as err:  # noqa: BLE001 - the database may be restarting: try again
                logger.warning("could not load the open demands; retrying", error=repr(err))
                self.open_demands.drop(added)
                self.rebalanced.set()
                await asyncio.sleep(1.0)
                continue
            loaded = []
            with bulk_load():
                for row in rows:
                    if self.open_demands.get(row.demand_id) is None:
                        _, od = handlers.from_row(row)
                        self.open_demands.put(row.part, od)
                        loaded.append(od)
            try:
                issued = await self.reverse.catch_up(loaded)
            except Exception as err:  # noqa: BLE001 - a missed catch-up costs a lead, not correctness
                logger.warning("reverse-join catch-up failed", error=repr(err))
                issued = 0
            logger.info("open demands held", partitions=sorted(self.open_demands.parts), loaded=len(loaded),
                        held=len(self.open_demands), caught_up=issued)

    # -- start and stop (called by RuntimeService) -------------------------------------------------
    async def open(self) -> None:
        rt = self.rt = Runtime(self.settings, schema=SCHEMA, migrations=MIGRATIONS, metrics=self.metrics)
        await rt.open()
        catalog = self.catalog = LiveCatalog(pool=rt.pool, bootstrap=self.settings.kafka_bootstrap_servers,
                                             metrics=rt.metrics, service=rt.service)
        with bulk_load():
            await catalog.load()
        standing = handlers.Standing(rt.pool)
        await standing.refresh()
        self.demands = handlers.DemandMatcher(pool=rt.pool, view=catalog.view, metrics=rt.metrics, schema=SCHEMA,
                                              standing=standing, open_demands=self.open_demands)
        reverse = self.reverse = handlers.ReverseJoin(pool=rt.pool, view=catalog.view, schema=SCHEMA,
                                                      standing=standing, open_demands=self.open_demands,
                                                      metrics=rt.metrics)
        catalog.on_change = reverse.notify
        outcomes = handlers.LeadOutcomes(pool=rt.pool, view=catalog.view, standing=standing,
                                         open_demands=self.open_demands, schema=SCHEMA, metrics=rt.metrics)
        docking = handlers.Docking(pool=rt.pool, view=catalog.view, standing=standing,
                                   open_demands=self.open_demands, schema=SCHEMA)
        rt.grpc.add(catalog_grpc.add_CatalogServiceServicer_to_server, CatalogApi(rt.pool, catalog, SCHEMA),
                    catalog_pb.DESCRIPTOR.services_by_name["CatalogService"])
        rt.grpc.add(docking_grpc.add_SubscriptionServiceServicer_to_server, SubscriptionApi(docking),
                    docking_pb.DESCRIPTOR.services_by_name["SubscriptionService"])
        rt.grpc.add(docking_grpc.add_DemandPoolServiceServicer_to_server, DemandPoolApi(docking),
                    docking_pb.DESCRIPTOR.services_by_name["DemandPoolService"])
        rt.consume(topics.PRODUCTS_PUBLISHED, ProductsPublished(rt.pool, catalog, SCHEMA))
        rt.consume(topics.LEAD_STATUS_CHANGED, LeadStatusChanges(outcomes))
        rt.consume(topics.DEMAND_STATUS_CHANGED, DemandStatusChanges(outcomes))
        rt.consume(topics.LEAD_SLA_BREACHED, LeadSlaBreaches(outcomes))
        rt.task(catalog.follow)
        rt.task(catalog.verify)
        rt.task(standing.follow)
        rt.task(reverse.run)
        rt.task(self._hold_open_demands)
        rt.readiness(self._catalog_verified)
        rt.readiness(self._partitions_assigned)
        rt.on_stop(catalog.stop)
        self.ready.set()

    async def _catalog_verified(self) -> bool:
        return self.catalog is not None and self.catalog.verified.is_set()

    async def _partitions_assigned(self) -> bool:
        return self.assigned.is_set()

    async def serve(self) -> None:
        """Report SERVING once ready, then watch the demand agent for stalls."""
        assert self.rt is not None
        await self.rt.start()
        watch = StallWatch(
            bootstrap=self.settings.kafka_bootstrap_servers, group_id=self.settings.faust_app_id,
            topic=topics.DEMANDS_ACCEPTED.name,
            assignment=lambda: [(tp.topic, tp.partition) for tp in self.app.consumer.assignment()],
            stall_seconds=self.settings.consumer_stall_seconds,
        )
        await watch.run()

    async def close(self) -> None:
        self.agent.stopping.set()
        try:  # let the demand in hand commit before the pool closes
            await asyncio.wait_for(self.agent.idle.wait(), self.settings.shutdown_grace_seconds)
        except TimeoutError:
            logger.warning("a demand was still being matched at shutdown; it will be redelivered")
        if self.rt is not None:
            await self.rt.stop()


class RuntimeService(mode.Service):
    """The shared runtime as a service of the Faust app (started and stopped with it)."""

    def __init__(self, matcher: Matcher, **kwargs: Any) -> None:
        self.matcher = matcher
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        await self.matcher.open()
        self.add_future(self.matcher.serve())

    async def on_stop(self) -> None:
        await self.matcher.close()


def main() -> None:
    settings = load(MatcherSettings)
    log.configure(settings.service_name, settings.log_level)
    Path(settings.faust_datadir).mkdir(parents=True, exist_ok=True)
    matcher = Matcher(settings)
    worker = faust.Worker(matcher.app, loglevel="warn", redirect_stdouts=False, quiet=True)
    worker.spinner = None  # a terminal spinner has no place in a service's log
    worker.execute_from_commandline()
