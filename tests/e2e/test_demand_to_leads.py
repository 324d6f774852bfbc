"""One demand end to end, by gRPC and by the portal topic, read the way a bank reads its
leads; and no demand lost or matched twice when the broker or the matcher is killed."""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid
from collections import defaultdict

import grpc
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from finmesh.common.v1 import finance_pb2 as fin
from finmesh.demand.v1 import demand_pb2 as dm
from finmesh.demand.v1 import demand_pb2_grpc as dm_grpc
from finmesh.demand.v1 import events_pb2 as dm_events
from finmesh.matching.v1 import events_pb2 as matching
from finmesh.notification.v1 import notification_pb2 as nt
from finmesh.notification.v1 import notification_pb2_grpc as nt_grpc
from finmesh.roadshow.v1 import roadshow_pb2 as rs
from finmesh.roadshow.v1 import roadshow_pb2_grpc as rs_grpc
from meshkit import ids, topics

from .conftest import YUAN, World

pytestmark = pytest.mark.e2e


def demand_request(world: World, amount_yuan: int = 2_000_000) -> dm.DemandRequest:
    return dm.DemandRequest(
        enterprise_uscc=world.enterprise_uscc, amount_fen=amount_yuan * YUAN,
        least_acceptable_amount_fen=amount_yuan * YUAN // 2, term_months=24, max_rate_bps=600,
        loan_category=fin.LOAN_CATEGORY_CREDIT, purpose=dm.PURPOSE_WORKING_CAPITAL,
        collateral_offered=[fin.COLLATERAL_NONE], consent_to_share=True,
    )


async def wait_catalog(world: World, at_least: int, timeout: float = 30) -> None:
    """Until the matcher's in-memory catalog (its metric) holds ``at_least`` products."""
    url = world.info.services["matcher"].metrics_url
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=2).read().decode())
        for line in text.splitlines():
            if line.startswith("finmesh_catalog_products ") and float(line.split()[1]) >= at_least:
                return
        await asyncio.sleep(0.2)
    raise TimeoutError("the matcher's catalog did not fill")


class Bank:
    """A bank system reading its lead topics with a plain aiokafka consumer."""

    def __init__(self, bootstrap: str, lead_topics: list[str]) -> None:
        self.consumer = AIOKafkaConsumer(
            *lead_topics, bootstrap_servers=bootstrap, group_id=f"bank-{uuid.uuid4().hex}",
            auto_offset_reset="earliest", enable_auto_commit=False,
        )
        self.records: dict[str, list[matching.LeadIssued]] = defaultdict(list)  # by demand id

    async def __aenter__(self) -> Bank:
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    async def poll(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            batch = await self.consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for r in records:
                    lead = matching.LeadIssued.FromString(r.value)
                    self.records[lead.lead.demand_id].append(lead)

    async def until_leads_for(self, demand_ids: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not demand_ids <= set(self.records):
            await self.poll(0.5)


async def get_demand(stub: dm_grpc.DemandServiceStub, demand_id: str) -> dm.Demand:
    return (await stub.GetDemand(dm.GetDemandRequest(demand_id=demand_id))).demand


async def test_a_demand_by_grpc_and_one_by_the_portal_topic_become_leads(world: World) -> None:
    await wait_catalog(world, len(world.products))
    info = world.info
    async with world.channel("demand") as ch, Bank(info.kafka_bootstrap_servers,
                                                    [i.lead_topic for i in world.institutions]) as bank:
        stub = dm_grpc.DemandServiceStub(ch)
        submitted = await stub.SubmitDemand(dm.SubmitDemandRequest(request_id=f"e2e-{uuid.uuid4()}",
                                                                  demand=demand_request(world)))
        by_grpc = submitted.demand.demand_id

        portal_demand_id = f"portal-{uuid.uuid4()}"
        producer = AIOKafkaProducer(bootstrap_servers=info.kafka_bootstrap_servers)
        await producer.start()
        try:
            event = dm_events.PortalDemandSubmitted(portal_id="national-web", portal_demand_id=portal_demand_id,
                                                    demand=demand_request(world, 3_000_000))
            await producer.send_and_wait(topics.PORTAL_DEMANDS.name, event.SerializeToString(),
                                         key=world.enterprise_uscc.encode())
        finally:
            await producer.stop()

        await bank.until_leads_for({by_grpc}, timeout=30)
        assert by_grpc in bank.records
        # the portal demand's id is the platform's; find it through the bank's view
        portal_ids = set(bank.records) - {by_grpc}
        deadline = time.monotonic() + 30
        while not portal_ids and time.monotonic() < deadline:
            await bank.poll(0.5)
            portal_ids = {d for d, leads in bank.records.items()
                          if d != by_grpc and leads[0].demand.amount_fen == 3_000_000 * YUAN}
        assert len(portal_ids) == 1
        by_portal = portal_ids.pop()

        for demand_id in (by_grpc, by_portal):
            leads = bank.records[demand_id]
            institutions = [lead.lead.institution_id for lead in leads]
            assert 1 <= len(leads) <= 3
            assert len(set(institutions)) == len(institutions), "one lead per institution"
            for lead in leads:
                assert lead.lead.lead_id == ids.lead_id(demand_id, lead.lead.product_id)
                assert lead.enterprise.uscc == world.enterprise_uscc
                assert 0 <= lead.lead.score <= 100
                assert lead.lead.contact_due_at.seconds > 0

        # the demand service shows each demand with its leads
        for demand_id in (by_grpc, by_portal):
            deadline = time.monotonic() + 15
            demand = await get_demand(stub, demand_id)
            while demand.status != dm.DEMAND_STATUS_LEADS_ISSUED and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                demand = await get_demand(stub, demand_id)
            assert demand.status == dm.DEMAND_STATUS_LEADS_ISSUED
            recorded = {lead.lead_id for lead in demand.leads}
            deadline = time.monotonic() + 15
            while recorded != {lead.lead.lead_id for lead in bank.records[demand_id]} and time.monotonic() < deadline:
                await bank.poll(0.5)  # the bank may not have read every lead of this demand yet
            assert recorded == {lead.lead.lead_id for lead in bank.records[demand_id]}

        # the same portal event again gives the same demand (no second set of leads)
        again = await stub.SubmitDemand(dm.SubmitDemandRequest(request_id=submitted.demand.idempotency_key,
                                                               demand=demand_request(world)))
        assert again.demand.demand_id == by_grpc and not again.created

    # the notifier recorded a notification for the enterprise and each institution
    async with world.channel("notifier") as ch:
        stub = nt_grpc.NotificationServiceStub(ch)
        deadline = time.monotonic() + 15
        while True:
            mine = await stub.ListNotifications(nt.ListNotificationsRequest(
                recipient_kind=nt.RECIPIENT_KIND_ENTERPRISE, recipient_id=world.enterprise_uscc, page_size=100))
            if {n.demand_id for n in mine.notifications} >= {by_grpc, by_portal} or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert {n.demand_id for n in mine.notifications} >= {by_grpc, by_portal}
        lead = bank.records[by_grpc][0].lead
        theirs = await stub.ListNotifications(nt.ListNotificationsRequest(
            recipient_kind=nt.RECIPIENT_KIND_INSTITUTION, recipient_id=lead.institution_id, page_size=100))
        assert lead.lead_id in {n.lead_id for n in theirs.notifications}

    # the roadshow service answers
    async with world.channel("roadshow") as ch:
        await rs_grpc.RoadshowServiceStub(ch).ListRoadshows(rs.ListRoadshowsRequest())


async def test_invalid_grpc_demand_is_refused_naming_the_fields(world: World) -> None:
    from meshkit.grpcserver import field_violations

    bad = demand_request(world)
    bad.term_months = 400
    bad.amount_fen = -5
    async with world.channel("demand") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await dm_grpc.DemandServiceStub(ch).SubmitDemand(dm.SubmitDemandRequest(request_id="bad-1", demand=bad))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = field_violations(err.value)
    assert "demand.term_months" in fields and "demand.amount_fen" in fields


async def _submit_stream(world: World, count: int, per_second: float, kill_after: int, kill) -> list[str]:
    """Submit ``count`` demands at ``per_second``; call ``kill()`` after ``kill_after`` of them."""
    accepted = []
    async with world.channel("demand") as ch:
        stub = dm_grpc.DemandServiceStub(ch)
        for i in range(count):
            if i == kill_after:
                kill()
            reply = await stub.SubmitDemand(
                dm.SubmitDemandRequest(request_id=f"stream-{uuid.uuid4()}", demand=demand_request(world)),
                timeout=30,
            )
            accepted.append(reply.demand.demand_id)
            await asyncio.sleep(1 / per_second)
    return accepted


@pytest.mark.parametrize("victim", ["kafka", "matcher"])
async def test_kill_9_loses_no_demand_and_matches_none_twice(world: World, mesh, victim: str) -> None:
    await wait_catalog(world, len(world.products))
    restarts_before = mesh.restarts(victim)
    async with Bank(world.info.kafka_bootstrap_servers, [i.lead_topic for i in world.institutions]) as bank:
        accepted = await _submit_stream(world, count=60, per_second=10, kill_after=20,
                                        kill=lambda: mesh.kill(victim))
        await bank.until_leads_for(set(accepted), timeout=120)
        await bank.poll(2)  # anything that would arrive twice arrives now
    assert mesh.restarts(victim) == restarts_before + 1
    missing = [d for d in accepted if d not in bank.records]
    assert not missing, f"{len(missing)} of {len(accepted)} demands got no leads"
    duplicates = 0
    async with world.channel("demand") as ch:
        stub = dm_grpc.DemandServiceStub(ch)
        for demand_id in accepted:
            seen = bank.records[demand_id]
            lead_ids = [lead.lead.lead_id for lead in seen]
            duplicates += len(lead_ids) - len(set(lead_ids))
            # one set of leads per demand: what the bank saw is exactly what the platform records
            # (the demand service stores them from the matcher's event, possibly after the bank has read them)
            deadline = time.monotonic() + 30
            demand = await get_demand(stub, demand_id)
            while {lead.lead_id for lead in demand.leads} != set(lead_ids) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                demand = await get_demand(stub, demand_id)
            assert {lead.lead_id for lead in demand.leads} == set(lead_ids)
            assert len(set(lead_ids)) <= 3
    print(f"\n{victim} kill -9: {len(accepted)} demands, all with leads; redelivered lead records: {duplicates}")
