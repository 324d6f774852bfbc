"""Composition root of the matcher: a Faust worker with the shared runtime inside it.

The Faust app consumes ``DEMANDS_ACCEPTED`` in the consumer group ``finmesh-matcher`` (workers
share its partitions). Inside it, one :class:`RuntimeService` opens the shared runtime (metrics,
migrations, pool, producer, gRPC with health NOT_SERVING, outbox relay), loads the in-memory
catalog view and keeps it current, consumes ``PRODUCTS_PUBLISHED`` (with its dead-letter topic),
and reports SERVING once the view is verified against PostgreSQL and Faust has its partitions.
SIGTERM: Faust's worker stops the app; the runtime lets the demand in hand finish, then drains.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import faust
import mode
from pydantic import Field

from finmesh.catalog.v1 import product_pb2 as catalog_pb
from finmesh.catalog.v1 import product_pb2_grpc as catalog_grpc
from meshkit import log, topics
from meshkit.kafka import dead_letter
from meshkit.lifecycle import Runtime
from meshkit.metrics import Metrics
from meshkit.settings import ServiceSettings, load
from services.matcher.api import CatalogApi
from services.matcher.consumers import DemandAgent, ProductsPublished, StallWatch
from services.matcher.handlers import DemandMatcher
from services.matcher.view import LiveCatalog

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


def broker_urls(bootstrap: str) -> list[str]:
    """``kafka://host:port`` URLs for Faust from a comma-separated bootstrap list."""
    return [f"kafka://{h.strip().removeprefix('kafka://')}" for h in bootstrap.split(",") if h.strip()]


def plain_bootstrap(bootstrap: str) -> str:
    """``host:port,host:port`` for aiokafka, whichever form was given."""
    return ",".join(h.strip().removeprefix("kafka://") for h in bootstrap.split(",") if h.strip())


class Matcher:
    """Everything the matcher runs, wired once."""

    def __init__(self, settings: MatcherSettings) -> None:
        self.settings = settings.model_copy(
            update={"kafka_bootstrap_servers": plain_bootstrap(settings.kafka_bootstrap_servers)}
        )
        self.metrics = Metrics()
        self.rt: Runtime | None = None
        self.catalog: LiveCatalog | None = None
        self.demands: DemandMatcher | None = None
        self.ready = asyncio.Event()  # the catalog is loaded: the agent may match
        self.assigned = asyncio.Event()  # Faust's consumer has completed a rebalance
        self.agent = DemandAgent(matcher=lambda: self.demands, ready=self.ready, metrics=self.metrics,
                                 service=self.settings.service_name, dead_letter=self._dead_letter)
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

    # -- start and stop (called by RuntimeService) -------------------------------------------------
    async def open(self) -> None:
        rt = self.rt = Runtime(self.settings, schema=SCHEMA, migrations=MIGRATIONS, metrics=self.metrics)
        await rt.open()
        catalog = self.catalog = LiveCatalog(pool=rt.pool, bootstrap=self.settings.kafka_bootstrap_servers,
                                             metrics=rt.metrics, service=rt.service)
        await catalog.load()
        self.demands = DemandMatcher(pool=rt.pool, view=catalog.view, metrics=rt.metrics, schema=SCHEMA)
        rt.grpc.add(catalog_grpc.add_CatalogServiceServicer_to_server, CatalogApi(rt.pool, catalog, SCHEMA),
                    catalog_pb.DESCRIPTOR.services_by_name["CatalogService"])
        rt.consume(topics.PRODUCTS_PUBLISHED, ProductsPublished(rt.pool, catalog, SCHEMA))
        rt.task(catalog.follow)
        rt.task(catalog.verify)
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
