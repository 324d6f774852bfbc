"""The in-memory catalog view every matcher worker holds: the join side of the demand stream.

Loaded from PostgreSQL at start, then kept current from the compacted ``CATALOG_CHANGED`` topic
by a plain consumer without a group (every worker reads every partition). The end offsets are
recorded *before* the PostgreSQL snapshot is read and the consumer starts from them, so no change
committed between the snapshot and the topic is missed; a change applies only if its version is
newer. :meth:`LiveCatalog.verify` compares the view's count and checksum with PostgreSQL's.
"""

from __future__ import annotations

import asyncio

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

    def apply(self, product: catalog.Product) -> bool:
        """Apply one stored product (from the snapshot, the topic or this worker's own write)."""
        changed = self.view.apply(mapping.product_from_proto(product))
        if changed:
            self.metrics.catalog_products.set(len(self.view.active()))
        return changed

    async def load(self, timeout: float = 60.0) -> None:
        """Record the topic's end offsets, read the snapshot, and position the follower after it."""
        spec = topics.CATALOG_CHANGED
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
        self.metrics.catalog_products.set(len(self.view.active()))
        self.loaded.set()
        logger.info("catalog loaded", products=len(self.view), active=len(self.view.active()))

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
        warned = loop.time()
        while True:
            count, checksum = await store.count_and_checksum(self.pool)
            if count == len(self.view) and checksum == self.view.checksum:
                self.verified.set()
                logger.info("catalog verified", products=count)
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
