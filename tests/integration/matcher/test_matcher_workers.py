"""Two matcher workers share the demand topic's partitions; each holds the whole catalog view."""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path

import asyncpg
import grpc
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from institution_keys import publish_institution, until_known
from matcher_support import MatcherProcess, free_port, matcher_env, publish, read_until
from waiting import eventually

from finmesh.catalog.v1 import product_pb2 as catalog
from finmesh.catalog.v1 import product_pb2_grpc as catalog_grpc
from finmesh.common.v1 import finance_pb2 as finance
from finmesh.demand.v1 import demand_pb2
from finmesh.demand.v1 import events_pb2 as demand_events
from finmesh.institution.v1 import events_pb2 as inst_events
from finmesh.institution.v1 import institution_pb2 as inst_pb
from finmesh.matching.v1 import events_pb2 as matching_events
from meshkit import codec, topics
from meshkit.kafka import make_producer

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


async def test_a_worker_dates_its_first_leads_by_the_slas_announced_before_it_started(
        bootstrap: str, database_url: str, tmp_path: Path) -> None:
    """A worker starting on a database without the institutions' latest SLAs (a new mesh, or the
    first start of the release that keeps them) with a demand already waiting: the demand is matched
    only once the SLAs announced before the start are learnt, so its lead is due by its institution's
    24 h, not by the 72 h default, although a backlog of other institutions comes before it."""
    run = uuid.uuid4().hex[:8]
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'CREATE DATABASE "sla_{run}"')
    finally:
        await conn.close()
    env = {**matcher_env(re.sub(r"/[^/?]+(\?|$)", rf"/sla_{run}\1", database_url, count=1), bootstrap,
                         f"g-{run}"), "SERVICE_NAME": f"matcher-{run}"}  # groups of its own: reads every topic
    worker = MatcherProcess(env, tmp_path / "matcher.log")
    bank = f"sla-{run}"
    try:
        worker.start()
        await worker.wait_serving()
        key = await publish_institution(bootstrap, bank)  # registered without an SLA of its own
        async with grpc.aio.insecure_channel(worker.address) as channel:
            stub = catalog_grpc.CatalogServiceStub(channel)
            await until_known(lambda: stub.UpsertProduct(catalog.UpsertProductRequest(
                product=product(f"{run}-p", bank, loan_category=finance.LOAN_CATEGORY_CREDIT)), metadata=key))
        assert worker.stop() == 0, worker.logs()

        # While it is stopped: other institutions change, then this one sets 24 h; and a demand comes.
        producer = make_producer(bootstrap, "test", linger_ms=5)
        await producer.start()
        try:
            for i in range(1500):
                changed = inst_events.InstitutionChanged(institution=inst_pb.Institution(
                    institution_id=f"other-{run}-{i}", contact_sla_hours=48, version=1))
                await producer.send(topics.INSTITUTIONS_CHANGED.name, value=changed.SerializeToString(),
                                    key=changed.institution.institution_id.encode(),
                                    headers=codec.make_headers(topics.INSTITUTIONS_CHANGED.event_type, "test"))
            await producer.flush()
        finally:
            await producer.stop()
        await publish_institution(bootstrap, bank, sla_hours=24, version=2)
        demand_id = f"d-{run}"
        await publish(bootstrap, topics.DEMANDS_ACCEPTED, demand_events.DemandAccepted(demand=demand_pb2.Demand(
            demand_id=demand_id, request=demand_pb2.DemandRequest(
                enterprise_uscc="91350200MA2XYZ1234", amount_fen=1_000_000, term_months=12, max_rate_bps=500,
                loan_category=finance.LOAN_CATEGORY_CREDIT))))

        worker.start()
        await worker.wait_serving()
        conn = await asyncpg.connect(env["DATABASE_URL"])  # its own leads (other workers match the demand too)
        try:
            async def due() -> list[float]:
                return [r["sla"].total_seconds() // 3600 for r in await conn.fetch(
                    "SELECT contact_due_at - created_at AS sla FROM matcher.leads"
                    " WHERE demand_id = $1 AND institution_id = $2", demand_id, bank)]
            assert await eventually(due, bool, timeout=60) == [24]
        finally:
            await conn.close()
        assert worker.stop() == 0, worker.logs()
    finally:
        if worker.proc is not None and worker.proc.poll() is None:
            worker.stop()
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "sla_{run}" WITH (FORCE)')
        finally:
            await conn.close()
