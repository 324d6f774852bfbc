"""The in-memory views of a matcher worker: the catalog (every worker holds all of it: the join
side of the demand stream) and the open demands of the partitions it is assigned (the other
side, for the reverse join).

Loaded from PostgreSQL at start, then kept current from the compacted ``CATALOG_CHANGED`` topic
by a plain consumer without a group (every worker reads every partition). The end offsets are
recorded *before* the PostgreSQL snapshot is read and the consumer starts from them, so no change
committed between the snapshot and the topic is missed; a change applies only if its version is
newer. :meth:`LiveCatalog.verify` compares the view's count and checksum with PostgreSQL's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from finmesh.catalog.v1 import product_pb2 as catalog
from meshkit import codec, log, topics
from meshkit.metrics import Metrics
from services.matcher import domain, mapping, store

logger = log.get(__name__)


async def topic_partitions(bootstrap: str, topic: str) -> list[int]:
    """The partition numbers of ``topic`` as the broker has them ([] if it does not exist)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return sorted(p["partition"] for t in described if t["topic"] == topic and t["error_code"] == 0
                  for p in t["partitions"])


class LiveCatalog:
    def __init__(self, *, pool: asyncpg.Pool, bootstrap: str, metrics: Metrics, service: str) -> None:
        self.pool = pool
        self.bootstrap = bootstrap
        self.metrics = metrics
        self.service = service
        self.view = domain.CatalogView()
        self.loaded = asyncio.Event()
        self.verified = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._stopping = asyncio.Event()
        self.load_seconds = 0.0
        self.on_change: Callable[[domain.Product], None] | None = None  # the reverse join, once loaded

    def apply(self, product: catalog.Product) -> bool:
        """Apply one stored product (from the snapshot, the topic or this worker's own write)."""
        p = mapping.product_from_proto(product)
        changed = self.view.apply(p)
        if changed:
            self.metrics.catalog_products.set(self.view.active_count)
            if self.on_change is not None and self.loaded.is_set():
                self.on_change(p)
        return changed

    async def load(self, timeout: float = 60.0) -> None:
        """Record the topic's end offsets, read the snapshot, and position the follower after it."""
        spec = topics.CATALOG_CHANGED
        began = asyncio.get_running_loop().time()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", client_id=f"{self.service}-catalog-view", fetch_max_wait_ms=100,
        )
        await asyncio.wait_for(consumer.start(), timeout)
        self._consumer = consumer
        deadline = asyncio.get_running_loop().time() + timeout
        while not (partitions := await topic_partitions(self.bootstrap, spec.name)):
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"topic {spec.name} does not exist; run `python -m meshkit.topics create`")
            logger.warning("waiting for the catalog topic", topic=spec.name)
            await asyncio.sleep(1.0)
        tps = [TopicPartition(spec.name, p) for p in sorted(partitions)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        rows = await store.all_products(self.pool)
        for raw in rows:
            self.apply(catalog.Product.FromString(raw))
        for tp in tps:
            consumer.seek(tp, ends[tp])
        self.metrics.catalog_products.set(self.view.active_count)
        self.loaded.set()
        self.load_seconds = asyncio.get_running_loop().time() - began
        logger.info("catalog loaded", products=len(self.view), active=self.view.active_count,
                    seconds=round(self.load_seconds, 3))

    async def follow(self) -> None:
        """Apply every change published after the snapshot, until stopped."""
        await self.loaded.wait()
        consumer = self._consumer
        assert consumer is not None
        while not self._stopping.is_set():
            try:
                batch = await consumer.getmany(timeout_ms=500)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - aiokafka reconnects; keep following
                logger.warning("catalog follower failed; retrying", error=repr(err))
                await asyncio.sleep(1.0)
                continue
            for records in batch.values():
                for record in records:
                    try:
                        env = codec.decode(topics.CATALOG_CHANGED, record.value, record.headers)
                    except codec.PoisonMessage as poison:
                        logger.warning("undecodable catalog change skipped", offset=record.offset, reason=str(poison))
                        continue
                    self.apply(env.message.product)  # type: ignore[attr-defined]

    async def verify(self, poll: float = 0.2, warn_every: float = 10.0) -> None:
        """Return once the view has PostgreSQL's count and checksum (sets ``verified``)."""
        await self.loaded.wait()
        loop = asyncio.get_running_loop()
        warned = warned_from = loop.time()
        while True:
            count, checksum = await store.count_and_checksum(self.pool)
            if count == len(self.view) and checksum == self.view.checksum:
                self.verified.set()
                logger.info("catalog verified", products=count,
                            seconds_since_load_began=round(self.load_seconds + loop.time() - warned_from, 3))
                return
            if loop.time() - warned > warn_every:
                warned = loop.time()
                logger.warning("catalog view differs from PostgreSQL; waiting for the topic",
                               view=len(self.view), stored=count)
            await asyncio.sleep(poll)

    async def stop(self) -> None:
        self._stopping.set()
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                await asyncio.wait_for(consumer.stop(), 10)
            except Exception:  # noqa: BLE001
                logger.warning("catalog follower did not close cleanly")


class OpenDemandsView:
    """The open demands of the demand-topic partitions this worker is assigned, by id. A hint for
    the reverse join: every lead added re-checks the demand's row in PostgreSQL."""

    def __init__(self) -> None:
        self._demands: dict[str, domain.OpenDemand] = {}
        self._part: dict[str, int] = {}
        self.parts: set[int] = set()

    def put(self, part: int, od: domain.OpenDemand) -> None:
        if part in self.parts:
            self._demands[od.demand.demand_id] = od
            self._part[od.demand.demand_id] = part

    def load(self, part: int, demands: Iterable[domain.OpenDemand]) -> None:
        self.parts.add(part)
        for od in demands:
            self.put(part, od)

    def drop(self, parts: Iterable[int]) -> None:
        gone = set(parts)
        self.parts -= gone
        for demand_id in [d for d, p in self._part.items() if p in gone]:
            self.remove(demand_id)

    def remove(self, demand_id: str) -> None:
        self._demands.pop(demand_id, None)
        self._part.pop(demand_id, None)

    def lead_added(self, demand_id: str, institution_id: str) -> None:
        od = self._demands.get(demand_id)
        if od is not None:
            self._demands[demand_id] = replace(od, active_leads=od.active_leads + 1, tried=od.tried | {institution_id})

    def lead_dropped(self, demand_id: str) -> None:
        od = self._demands.get(demand_id)
        if od is not None:
            self._demands[demand_id] = replace(od, active_leads=max(0, od.active_leads - 1))

    def get(self, demand_id: str) -> domain.OpenDemand | None:
        return self._demands.get(demand_id)

    def values(self) -> list[domain.OpenDemand]:
        return list(self._demands.values())

    def __iter__(self) -> Iterator[domain.OpenDemand]:
        return iter(list(self._demands.values()))

    def __len__(self) -> int:
        return len(self._demands)
