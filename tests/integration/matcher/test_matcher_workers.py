"""Two matcher workers share the demand topic's partitions; each holds the whole catalog view."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from matcher_support import MatcherProcess, free_port, publish, read_until

from finmesh.catalog.v1 import product_pb2 as catalog
from finmesh.common.v1 import finance_pb2 as finance
from finmesh.demand.v1 import demand_pb2
from finmesh.demand.v1 import events_pb2 as demand_events
from finmesh.matching.v1 import events_pb2 as matching_events
from meshkit import topics

pytestmark = pytest.mark.integration


def product(pid: str, inst: str, **kw: object) -> catalog.Product:
    fields: dict[str, object] = dict(
        product_id=pid, institution_id=inst, name=f"Loan {pid}", product_type=catalog.PRODUCT_TYPE_LOAN,
        loan_category=finance.LOAN_CATEGORY_CREDIT, amount_min_fen=1_000, amount_max_fen=10**10,
        term_min_months=1, term_max_months=120, rate_min_bps=300, rate_max_bps=600,
        status=catalog.PRODUCT_STATUS_ACTIVE,
    )
    fields.update(kw)
    return catalog.Product(**fields)


async def test_two_workers_share_partitions_and_see_every_catalog_change(
        matcher: MatcherProcess, catalog_stub, bootstrap: str, demand_group: str) -> None:
    run = uuid.uuid4().hex[:8]
    for i in range(5):
        await catalog_stub.UpsertProduct(catalog.UpsertProductRequest(product=product(f"{run}-{i}", f"bank-{run}")))
    await catalog_stub.UpsertProduct(catalog.UpsertProductRequest(
        product=product(f"{run}-0", f"bank-{run}", status=catalog.PRODUCT_STATUS_RETIRED)))

    # The second worker loads a non-empty catalog and verifies count and checksum before SERVING.
    env = {**matcher.env, "GRPC_PORT": str(free_port())}
    second = MatcherProcess(env, matcher.log_path.with_name("matcher-2.log"))
    second.start()
    try:
        print(f"\nsecond SERVING in {await second.wait_serving():.1f} s")
        # A product written through the first worker only: the second learns it from the topic.
        pilot_bank = f"pilot-{run}"
        await catalog_stub.UpsertProduct(catalog.UpsertProductRequest(product=product(
            f"{run}-pilot", pilot_bank, loan_category=finance.LOAN_CATEGORY_PILOT_STAGE)))
        await asyncio.sleep(1.0)
        demand_ids = [f"d-{run}-{i}" for i in range(12)]
        for demand_id in demand_ids:
            await publish(bootstrap, topics.DEMANDS_ACCEPTED, demand_events.DemandAccepted(demand=demand_pb2.Demand(
                demand_id=demand_id, request=demand_pb2.DemandRequest(
                    enterprise_uscc="91350200MA2XYZ1234", amount_fen=1_000_000, term_months=12, max_rate_bps=500,
                    loan_category=finance.LOAN_CATEGORY_PILOT_STAGE))))
        wanted = {d.encode() for d in demand_ids}
        matched = await read_until(bootstrap, topics.DEMANDS_MATCHED.name, lambda recs: len(recs) >= 12,
                                   keep=lambda r: r.key in wanted, timeout=30)
        outcomes = {m.demand_id: m for m in (matching_events.DemandMatched.FromString(r.value) for r in matched)}
        assert set(outcomes) == set(demand_ids)
        for outcome in outcomes.values():
            assert [lead.institution_id for lead in outcome.leads] == [pilot_bank], outcome

        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            groups = await admin.describe_consumer_groups([demand_group])
        finally:
            await admin.close()
        members = groups[0].to_object()["groups"][0]["members"]
        assert len(members) == 2
        assert second.stop() == 0, second.logs()
    finally:
        if second.proc is not None and second.proc.poll() is None:
            second.stop()


async def test_no_duplicate_and_no_missed_demand_while_a_worker_stops_and_starts(
        matcher: MatcherProcess, catalog_stub, bootstrap: str, database_url: str) -> None:
    """Demands keep coming while the second worker is stopped and started again: every demand is
    matched, once, whichever worker held its partition at the time."""
    run = uuid.uuid4().hex[:8]
    banks = [f"scale-{run}-{i}" for i in range(4)]
    for i, bank in enumerate(banks):
        await catalog_stub.UpsertProduct(catalog.UpsertProductRequest(product=product(
            f"{run}-s{i}", bank, loan_category=finance.LOAN_CATEGORY_RENEWAL, rate_min_bps=300 + i)))
    env = {**matcher.env, "GRPC_PORT": str(free_port())}
    second = MatcherProcess(env, matcher.log_path.with_name("matcher-scale.log"))
    demand_ids = [f"s-{run}-{i}" for i in range(90)]

    async def feed(ids: list[str]) -> None:
        for demand_id in ids:
            await publish(bootstrap, topics.DEMANDS_ACCEPTED, demand_events.DemandAccepted(demand=demand_pb2.Demand(
                demand_id=demand_id, request=demand_pb2.DemandRequest(
                    enterprise_uscc="91350200MA2XYZ1234", amount_fen=1_000_000, term_months=12, max_rate_bps=500,
                    loan_category=finance.LOAN_CATEGORY_RENEWAL))))
            await asyncio.sleep(0.02)

    second.start()
    try:
        await second.wait_serving()
        await feed(demand_ids[:30])
        assert second.stop() == 0, second.logs()  # its partitions move to the first worker
        await feed(demand_ids[30:60])
        second.start()  # and back again
        await second.wait_serving()
        await feed(demand_ids[60:])
        wanted = {d.encode() for d in demand_ids}
        records = await read_until(bootstrap, topics.DEMANDS_MATCHED.name,
                                   lambda recs: len({r.key for r in recs}) >= len(demand_ids),
                                   keep=lambda r: r.key in wanted, timeout=60)
    finally:
        if second.proc is not None and second.proc.poll() is None:
            second.stop()
    by_demand: dict[str, list[matching_events.DemandMatched]] = {}
    for r in records:
        m = matching_events.DemandMatched.FromString(r.value)
        by_demand.setdefault(m.demand_id, []).append(m)
    assert set(by_demand) == set(demand_ids), f"missed: {sorted(set(demand_ids) - set(by_demand))}"
    for demand_id, outcomes in by_demand.items():
        assert len(outcomes) == 1, (demand_id, outcomes)  # no demand matched twice
        assert [lead.institution_id for lead in outcomes[0].leads] == banks[:3]
    conn = await asyncpg.connect(database_url)
    try:
        leads = await conn.fetchval("SELECT count(*) FROM matcher.leads WHERE demand_id = ANY($1::text[])",
                                    demand_ids)
    finally:
        await conn.close()
    assert leads == 3 * len(demand_ids)
