"""A product that changes while a batch of demands is between planning and storing still meets
them: the matcher's demand handler and reverse join on the real PostgreSQL, the change placed
in that window deterministically (another transaction holds the store up with a table lock)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from demand_support import WAN, demand_request, enterprise, new_uscc

from finmesh.catalog.v1 import product_pb2 as catalog
from finmesh.common.v1 import finance_pb2 as fin
from finmesh.demand.v1 import demand_pb2 as dm
from finmesh.demand.v1 import events_pb2 as demand_events
from meshkit import codec, db, ids
from meshkit.metrics import Metrics
from services.matcher import app, domain, handlers, mapping
from services.matcher.view import OpenDemandsView

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    await db.migrate(database_url, app.SCHEMA, app.MIGRATIONS)
    pool = await db.create_pool(database_url, schema=app.SCHEMA)
    try:
        yield pool
    finally:
        await pool.close()


def product(pid: str, institution: str) -> domain.Product:
    return mapping.product_from_proto(catalog.Product(
        product_id=pid, institution_id=institution, name=f"Equipment loan {pid}", version=1,
        product_type=catalog.PRODUCT_TYPE_LOAN, loan_category=fin.LOAN_CATEGORY_EQUIPMENT,
        amount_min_fen=10 * WAN, amount_max_fen=5_000 * WAN, term_min_months=6, term_max_months=60,
        rate_min_bps=350, rate_max_bps=440, status=catalog.PRODUCT_STATUS_ACTIVE))


def accepted(partition: int) -> codec.Envelope:
    uscc = new_uscc()
    demand = dm.Demand(demand_id=str(uuid.uuid4()), request=demand_request(uscc), enterprise=enterprise(uscc),
                       status=dm.DEMAND_STATUS_MATCHING)
    return codec.Envelope(event_id=str(uuid.uuid4()), event_type="DemandAccepted", occurred_at=codec.now(),
                          producer="test", message=demand_events.DemandAccepted(demand=demand), partition=partition)


class FlakyReverseJoin(handlers.ReverseJoin):
    """The real reverse join, whose first ``failures`` calls fail as a lost database would."""

    failures: int = 0

    async def join(self, product: domain.Product, demands=None) -> int:  # noqa: ANN001
        if self.failures:
            self.failures -= 1
            raise ConnectionError("database gone")
        return await super().join(product, demands)


async def handle(matcher: handlers.DemandMatcher, batch: list[codec.Envelope]) -> None:
    """As the consumer does: plan the batch, then run the rest (its store)."""
    finish = await matcher(batch)
    if finish is not None:
        await finish()


async def store_while_a_product_changes(pool: asyncpg.Pool, reverse_failures: int = 0
                                        ) -> tuple[handlers.ReverseJoin, str, domain.Product]:
    """A demand planned against an empty catalog, a product applied (and its own join run) while
    the demand's store waits on a lock another transaction holds, then the store let through.
    Returns the reverse join, the demand id and the product."""
    view, metrics, standing, held = domain.CatalogView(), Metrics(), handlers.Standing(pool), OpenDemandsView()
    held.load(0, [])
    reverse = FlakyReverseJoin(pool=pool, view=view, schema=app.SCHEMA, standing=standing, open_demands=held,
                               metrics=metrics)
    matcher = handlers.DemandMatcher(pool=pool, view=view, metrics=metrics, schema=app.SCHEMA, standing=standing,
                                     open_demands=held, reverse=reverse)
    envelope = accepted(partition=0)
    bank = f"late-{uuid.uuid4().hex[:6]}"
    async with pool.acquire() as blocker, blocker.transaction():
        await blocker.execute("LOCK TABLE matches IN EXCLUSIVE MODE")  # the batch's store must wait
        handling = asyncio.create_task(handle(matcher, [envelope]))
        await asyncio.sleep(0.5)  # planned against the empty catalog, now waiting on the lock
        assert not handling.done()
        late = product(f"{bank}-eq", bank)
        assert view.apply(late)
        assert await reverse.join(late) == 0  # the demand is not held yet: the product's own join misses it
        reverse.failures = reverse_failures
    await asyncio.wait_for(handling, 30)
    # Handled again (a redelivery), the batch stores nothing and joins nothing again.
    await handle(matcher, [envelope])
    return reverse, envelope.message.demand.demand_id, late


async def leads_of(pool: asyncpg.Pool, demand_id: str) -> list[tuple[str, str]]:
    rows = await pool.fetch("SELECT lead_id, product_id FROM leads WHERE demand_id = $1", demand_id)
    return [(r["lead_id"], r["product_id"]) for r in rows]


async def test_a_product_changed_while_a_batch_is_stored_reaches_its_demands(pool: asyncpg.Pool) -> None:
    reverse, demand_id, late = await store_while_a_product_changes(pool)
    assert await leads_of(pool, demand_id) == [(ids.lead_id(demand_id, late.product_id), late.product_id)]
    assert reverse.open_demands.get(demand_id).active_leads == 1
    assert reverse.queue.empty()


async def test_a_late_join_that_fails_is_queued_for_the_reverse_join(pool: asyncpg.Pool) -> None:
    reverse, demand_id, late = await store_while_a_product_changes(pool, reverse_failures=1)
    assert await leads_of(pool, demand_id) == []  # the late join failed
    queued = reverse.queue.get_nowait()
    assert queued is late
    assert await reverse.join(queued) == 1  # as the reverse join's own loop does, with every held demand
    assert await leads_of(pool, demand_id) == [(ids.lead_id(demand_id, late.product_id), late.product_id)]
