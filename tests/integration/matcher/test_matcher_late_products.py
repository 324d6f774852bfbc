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


def product(pid: str, institution: str, version: int = 1) -> domain.Product:
    return mapping.product_from_proto(catalog.Product(
        product_id=pid, institution_id=institution, name=f"Equipment loan {pid}", version=version,
        product_type=catalog.PRODUCT_TYPE_LOAN, loan_category=fin.LOAN_CATEGORY_EQUIPMENT,
        amount_min_fen=10 * WAN, amount_max_fen=5_000 * WAN, term_min_months=6, term_max_months=60,
        rate_min_bps=350, rate_max_bps=440, status=catalog.PRODUCT_STATUS_ACTIVE))


def accepted(partition: int) -> codec.Envelope:
    uscc = new_uscc()
    demand = dm.Demand(demand_id=str(uuid.uuid4()), request=demand_request(uscc), enterprise=enterprise(uscc),
                       status=dm.DEMAND_STATUS_MATCHING)
    return codec.Envelope(event_id=str(uuid.uuid4()), event_type="DemandAccepted", occurred_at=codec.now(),
                          producer="test", message=demand_events.DemandAccepted(demand=demand), partition=partition)


async def test_a_product_changed_while_a_batch_is_stored_reaches_its_demands(pool: asyncpg.Pool) -> None:
    view = domain.CatalogView()
    metrics = Metrics()
    standing = handlers.Standing(pool)
    held = OpenDemandsView()
    held.load(0, [])
    reverse = handlers.ReverseJoin(pool=pool, view=view, schema=app.SCHEMA, standing=standing,
                                   open_demands=held, metrics=metrics)
    matcher = handlers.DemandMatcher(pool=pool, view=view, metrics=metrics, schema=app.SCHEMA, standing=standing,
                                     open_demands=held, rejoin=reverse.join)
    envelope = accepted(partition=0)
    demand_id = envelope.message.demand.demand_id
    bank = f"late-{uuid.uuid4().hex[:6]}"

    async with pool.acquire() as blocker, blocker.transaction():
        await blocker.execute("LOCK TABLE matches IN EXCLUSIVE MODE")  # the batch's store must wait
        handling = asyncio.create_task(matcher([envelope]))
        await asyncio.sleep(0.5)  # planned against the empty catalog, now waiting on the lock
        assert not handling.done()
        late = product(f"{bank}-eq", bank)
        assert view.apply(late)
        assert await reverse.join(late) == 0  # the demand is not held yet: the product's own join misses it
    await asyncio.wait_for(handling, 30)

    rows = await pool.fetch("SELECT lead_id, product_id FROM leads WHERE demand_id = $1", demand_id)
    assert [(r["lead_id"], r["product_id"]) for r in rows] == [(ids.lead_id(demand_id, late.product_id),
                                                                late.product_id)]
    assert held.get(demand_id).active_leads == 1
    # Handled again (a redelivery), the batch stores nothing and joins nothing twice.
    await matcher([envelope])
    assert await pool.fetchval("SELECT count(*) FROM leads WHERE demand_id = $1", demand_id) == 1


def test_the_view_names_the_products_changed_since_a_mark() -> None:
    view = domain.CatalogView()
    view.apply(product("a", "bank-a"))
    mark = view.applied
    assert view.applied_since(mark) == []
    b1, b2, c = product("b", "bank-b"), product("b", "bank-b", version=2), product("c", "bank-c")
    for p in (b1, c, b2):
        assert view.apply(p)
    assert not view.apply(product("c", "bank-c"))  # not newer: not a change
    assert [(p.product_id, p.version) for p in view.applied_since(mark)] == [("b", 2), ("c", 1)]
    many = view.applied
    for n in range(domain.RECENT_CHANGES + 1):
        view.apply(product(f"m{n}", "bank-m"))
    assert len(view.applied_since(many)) == len(view)  # more than it remembers: every product
