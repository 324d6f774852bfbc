"""Composition root of the matcher.

The matcher consumes ``DEMANDS_ACCEPTED`` in the consumer group ``finmesh-matcher`` (workers share
its partitions) with a batching consumer: each batch, up to ``match_batch_size`` demands fetched while
the batch before was handled, is matched and stored in one transaction (one round trip, run while
the next batch is planned), and its offsets are committed only after that. Beside it, the matcher loads the
in-memory catalog view and keeps it current, holds the open demands of its assigned partitions (the
reverse join matches every new or changed product against them), consumes ``PRODUCTS_PUBLISHED``,
the demand service's lead and demand status changes and the notifier's missed contact clocks
(re-matching), serves the catalog, subscription and pool APIs, and reports SERVING once the view is
verified against PostgreSQL and the demand partitions are assigned. Its outbox is relayed by a
process of its own. SIGTERM: the batch in hand commits, then the outbox drains.

Demands used to be consumed by a Faust agent. On this project's benchmark (``bench/matcher.py``)
Faust's stream delivered them 1.6 s late (p50) at 300 demands/s, where a plain batching consumer
delivers them in about 90 ms, and it matched fewer per second, so the matcher no longer runs Faust.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from aiokafka import TopicPartition
from pydantic import Field

from finmesh.catalog.v1 import product_pb2 as catalog_pb
from finmesh.catalog.v1 import product_pb2_grpc as catalog_grpc
from finmesh.matching.v1 import docking_pb2 as docking_pb
from finmesh.matching.v1 import docking_pb2_grpc as docking_grpc
from meshkit import institutions, log, topics
from meshkit.kafka import EventConsumer
from meshkit.lifecycle import ReadinessCheck, Runtime
from meshkit.settings import ServiceSettings
from services.matcher import handlers, store
from services.matcher.api import CatalogApi, DemandPoolApi, SubscriptionApi
from services.matcher.consumers import DemandStatusChanges, LeadSlaBreaches, LeadStatusChanges, ProductsPublished
from services.matcher.view import LiveCatalog, OpenDemandsView

SCHEMA = "matcher"
MIGRATIONS = Path(__file__).parent / "migrations"
DEMAND_GROUP = "finmesh-matcher"

logger = log.get(__name__)


class MatcherSettings(ServiceSettings):
    service_name: str = Field(default="matcher")
    demand_group: str = Field(default=DEMAND_GROUP,
                              description="The consumer group of the demand topic: the matcher workers share it.")
    match_batch_size: int = Field(default=200, ge=1, description="Demands matched in one transaction at most.")
    # Matching keeps the service's event loop busy; its leads are published from a process beside it.
    outbox_relay: Literal["task", "process"] = Field(default="process", description=ServiceSettings.model_fields[
        "outbox_relay"].description)


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


async def keep_collections_short(period: float = 1.0, sweep_every: float = 3600.0) -> None:
    """Keep the cyclic garbage collector's full collections short: every ``period`` seconds, collect
    the young generations and exempt their survivors (open demands held, mostly) from later ones.

    The collector's full collection walks every object that is not exempt, and runs whenever a
    quarter more objects have survived into the oldest generation: with tens of thousands of open
    demands held, the matcher stopped for 130-380 ms every 2-3 s (measured). Exempted objects are
    still freed by reference counting (what holds the matcher's data: it makes no cycles). A cycle
    that becomes garbage after its exemption (measured: 0-200 objects in 30 s, from the libraries)
    is collected by a sweep of everything every ``sweep_every`` seconds (0.3-0.7 s with 10,000
    to 40,000 open demands held).
    """
    swept = time.monotonic()
    while True:
        await asyncio.sleep(period)
        sweep = time.monotonic() - swept >= sweep_every
        if sweep:
            gc.unfreeze()
            swept = time.monotonic()
        gc.collect(2 if sweep else 1)
        gc.freeze()


class OpenDemandHolder:
    """Holds in memory the open demands of the demand partitions assigned to this worker (after
    each rebalance) and joins against them the products changed while no worker held them.

    Readiness does not wait for this: new demands are matched meanwhile, and a product changed while
    the open demands load is joined against them by the catch-up once they are in."""

    def __init__(self, rt: Runtime, reverse: handlers.ReverseJoin, open_demands: OpenDemandsView) -> None:
        self.rt = rt
        self.reverse = reverse
        self.open_demands = open_demands
        self.wanted: set[int] = set()
        self.rebalanced = asyncio.Event()

    def assigned(self, partitions: set[TopicPartition]) -> None:
        self.wanted = {tp.partition for tp in partitions}
        self.rebalanced.set()

    async def run(self) -> None:
        while True:
            await self.rebalanced.wait()
            self.rebalanced.clear()
            wanted = set(self.wanted)
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
                for n, row in enumerate(rows, 1):
                    if row.part in self.open_demands.parts and self.open_demands.get(row.demand_id) is None:
                        _, od = handlers.from_row(row)
                        self.open_demands.put(row.part, od)
                        loaded.append(od)
                    if n % 5_000 == 0:
                        await asyncio.sleep(0)  # health checks and new demands go on meanwhile
            try:
                issued = await self.reverse.catch_up(loaded)
            except Exception as err:  # noqa: BLE001 - a missed catch-up costs a lead, not correctness
                logger.warning("reverse-join catch-up failed", error=repr(err))
                issued = 0
            logger.info("open demands held", partitions=sorted(self.open_demands.parts), loaded=len(loaded),
                        held=len(self.open_demands), caught_up=issued)


async def build(rt: Runtime) -> None:
    """Wire the matcher into ``rt`` (opened, not started): the catalog is loaded here."""
    settings = rt.settings
    assert isinstance(settings, MatcherSettings)
    catalog = LiveCatalog(pool=rt.pool, bootstrap=settings.kafka_bootstrap_servers, metrics=rt.metrics,
                          service=rt.service)
    with bulk_load():
        await catalog.load()
    standing = handlers.Standing(rt.pool)  # read by standing.follow, and by _Learnt before any lead is made
    # Their keys authenticate their calls; their SLAs date the leads. A group of its own: the one that
    # learnt only keys (the release before) is past institutions that may not change again for long.
    learnt = _Learnt(standing, [
        rt.consume(topics.INSTITUTIONS_CHANGED, institutions.learner(rt.pool, then=standing.learnt),
                   group=f"{rt.service}.institutions"),
        rt.consume(topics.CONTACT_POLICIES_CHANGED, standing.policy_changed)])
    open_demands = OpenDemandsView()
    reverse = handlers.ReverseJoin(pool=rt.pool, view=catalog.view, schema=SCHEMA, standing=standing,
                                   open_demands=open_demands, metrics=rt.metrics)
    demands = handlers.DemandMatcher(pool=rt.pool, view=catalog.view, metrics=rt.metrics, schema=SCHEMA,
                                     standing=standing, open_demands=open_demands, reverse=reverse)
    catalog.on_change = reverse.notify
    holder = OpenDemandHolder(rt, reverse, open_demands)
    outcomes = handlers.LeadOutcomes(pool=rt.pool, view=catalog.view, standing=standing, open_demands=open_demands,
                                     schema=SCHEMA, metrics=rt.metrics)
    docking = handlers.Docking(pool=rt.pool, view=catalog.view, standing=standing, open_demands=open_demands,
                               schema=SCHEMA, ready=learnt.done)
    rt.grpc.add(catalog_grpc.add_CatalogServiceServicer_to_server, CatalogApi(rt.pool, catalog, SCHEMA),
                catalog_pb.DESCRIPTOR.services_by_name["CatalogService"])
    rt.grpc.add(docking_grpc.add_SubscriptionServiceServicer_to_server, SubscriptionApi(docking),
                docking_pb.DESCRIPTOR.services_by_name["SubscriptionService"])
    rt.grpc.add(docking_grpc.add_DemandPoolServiceServicer_to_server, DemandPoolApi(docking),
                docking_pb.DESCRIPTOR.services_by_name["DemandPoolService"])
    # Whatever makes leads waits for the SLAs and policies announced before this worker started.
    rt.consume(topics.DEMANDS_ACCEPTED, None, group=settings.demand_group, batch_handler=demands,
               max_records=settings.match_batch_size, on_assigned=holder.assigned, after=[learnt])
    rt.consume(topics.PRODUCTS_PUBLISHED, ProductsPublished(rt.pool, catalog, SCHEMA), after=[learnt])
    rt.consume(topics.LEAD_STATUS_CHANGED, LeadStatusChanges(outcomes), after=[learnt])
    rt.consume(topics.DEMAND_STATUS_CHANGED, DemandStatusChanges(outcomes), after=[learnt])
    rt.consume(topics.LEAD_SLA_BREACHED, LeadSlaBreaches(outcomes), after=[learnt])
    rt.task(catalog.follow)
    rt.task(catalog.verify)
    rt.task(standing.follow)
    rt.task(learnt.run)
    rt.task(lambda: learnt.then(reverse.run))
    rt.task(holder.run)
    rt.task(keep_collections_short)
    rt.readiness(_verified(catalog))
    rt.readiness(learnt)
    rt.on_stop(catalog.stop)


class _Learnt:
    """A condition: the contact SLAs and policies announced before this worker started are stored (by
    it or by the others of its group) and in its memory, so no lead is dated by the default for want
    of them (as on the first start of the release that keeps them, or on a new mesh)."""

    def __init__(self, standing: handlers.Standing, consumers: list[EventConsumer]) -> None:
        self.standing = standing
        self.consumers = consumers
        self.done = asyncio.Event()

    async def __call__(self) -> bool:
        return self.done.is_set()

    async def run(self, every: float = 0.2) -> None:
        while True:
            try:
                if all([await c.caught_up() for c in self.consumers]) and await self.standing.refresh():
                    self.done.set()  # with what the group's other workers stored
                    return
            except Exception as err:  # noqa: BLE001 - asked again (the broker or database may be back)
                logger.warning("contact SLAs not learnt yet", error=repr(err))
            await asyncio.sleep(every)

    async def then(self, work: Callable[[], Awaitable[None]]) -> None:
        await self.done.wait()
        await work()


def _verified(catalog: LiveCatalog) -> ReadinessCheck:
    async def check() -> bool:
        return catalog.verified.is_set()
    return check
