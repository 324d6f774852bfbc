"""Demand, matcher and notifier together on the real broker and PostgreSQL, one settable clock for
the demand service and the notifier: a lead whose institution never reports contact is reminded,
escalated, marked SLA_BREACHED by the demand service, re-routed by the matcher, and then EXPIRED."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest
from demand_support import WAN, registered, submit
from institution_keys import OperatorAuth, as_institution
from notifier_support import INSTITUTION, inbox
from waiting import eventually

from finmesh.catalog.v1 import product_pb2 as catalog
from finmesh.catalog.v1 import product_pb2_grpc as catalog_grpc
from finmesh.common.v1 import finance_pb2 as fin
from finmesh.demand.v1 import demand_pb2 as dm
from finmesh.demand.v1 import demand_pb2_grpc as dm_grpc
from finmesh.enterprise.v1 import enterprise_pb2_grpc as ent_grpc
from finmesh.institution.v1 import institution_pb2 as inst_pb
from finmesh.institution.v1 import institution_pb2_grpc as inst_grpc
from finmesh.lead.v1 import lead_pb2
from finmesh.lead.v1 import lead_pb2_grpc as lead_grpc
from finmesh.notification.v1 import clock_pb2 as cpb
from meshkit import apikeys
from meshkit.lifecycle import Runtime
from services.demand import app as demand_app
from tests.integration.matcher.matcher_support import MatcherProcess, matcher_env

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def demand_rt(database_url: str, bootstrap: str, service_runtime, clock) -> AsyncIterator[Runtime]:
    async with service_runtime("demand", demand_app, database_url, bootstrap, clock=clock) as rt:
        yield rt


@pytest.fixture(scope="module")
async def matcher(database_url: str, bootstrap: str, tmp_path_factory) -> AsyncIterator[MatcherProcess]:
    folder = tmp_path_factory.mktemp("matcher")
    env = matcher_env(database_url, bootstrap, f"finmesh-matcher-t{uuid.uuid4().hex[:8]}")
    proc = MatcherProcess(env, folder / "matcher.log")
    proc.start()
    try:
        await proc.wait_serving()
        yield proc
    finally:
        proc.stop()


def product(pid: str, inst: str, rate_min_bps: int) -> catalog.Product:
    return catalog.Product(
        product_id=pid, institution_id=inst, name=f"Equipment loan {pid}", product_type=catalog.PRODUCT_TYPE_LOAN,
        loan_category=fin.LOAN_CATEGORY_EQUIPMENT, amount_min_fen=10 * WAN, amount_max_fen=5_000 * WAN,
        term_min_months=6, term_max_months=60, rate_min_bps=rate_min_bps, rate_max_bps=440,
        status=catalog.PRODUCT_STATUS_ACTIVE,
    )


async def test_an_uncontacted_lead_is_reminded_escalated_and_rerouted(
        demand_rt: Runtime, matcher: MatcherProcess, notifier: Runtime, stub, clocks, clock) -> None:
    run = uuid.uuid4().hex[:6]
    banks = [f"rr{i}-{run}" for i in range(4)]  # ranked by rate: rr0, rr1, rr2, then rr3
    async with grpc.aio.insecure_channel(f"127.0.0.1:{demand_rt.grpc_port}", interceptors=[OperatorAuth()]) as ch, \
            grpc.aio.insecure_channel(matcher.address) as mch:
        institutions = inst_grpc.InstitutionServiceStub(ch)
        keys = {}
        for bank in banks:
            reply = await institutions.RegisterInstitution(inst_pb.RegisterInstitutionRequest(
                institution=inst_pb.Institution(institution_id=bank, name=bank, type=inst_pb.INSTITUTION_TYPE_BANK)))
            keys[bank] = reply.api_key
        for i, bank in enumerate(banks):  # each bank with its own key, once the matcher has its registration
            await as_institution(catalog_grpc.CatalogServiceStub(mch).UpsertProduct, catalog.UpsertProductRequest(
                product=product(f"{bank}-eq", bank, 300 + 20 * i)), ((apikeys.HEADER, keys[bank]),))

        class Stubs:  # what demand_support's helpers use
            enterprises = ent_grpc.EnterpriseServiceStub(ch)
            demands = dm_grpc.DemandServiceStub(ch)
        uscc = await registered(Stubs)
        demand = await submit(Stubs, uscc)

        async def get() -> dm.Demand:
            return (await Stubs.demands.GetDemand(dm.GetDemandRequest(demand_id=demand.demand_id))).demand
        first = await eventually(get, lambda d: len(d.leads) == 3, timeout=30)
        by_bank = {lead.institution_id: lead for lead in first.leads}
        assert set(by_bank) == set(banks[:3])
        late = by_bank[banks[0]]

        # rr1 and rr2 call the enterprise; rr0 never does.
        leads = lead_grpc.LeadServiceStub(ch)
        for bank in banks[1:3]:
            await leads.ReportLeadOutcome(lead_pb2.ReportLeadOutcomeRequest(
                lead_id=by_bank[bank].lead_id, outcome=lead_pb2.LeadOutcome(
                    status=lead_pb2.LEAD_STATUS_CONTACTED,
                    contact=lead_pb2.Contact(method=lead_pb2.CONTACT_METHOD_PHONE))),
                metadata=(("x-api-key", keys[bank]),))
        for bank in banks[1:3]:
            await _clock(clocks, by_bank[bank].lead_id, cpb.CLOCK_STATE_STOPPED)
        c = await _clock(clocks, late.lead_id, cpb.CLOCK_STATE_RUNNING)
        assert c.sla_hours == 72

        clock.advance(timedelta(hours=49))
        [reminder] = await inbox(stub, INSTITUTION, banks[0], kinds=["lead.reminder"])
        assert reminder.lead_id == late.lead_id
        clock.advance(timedelta(hours=24))
        [escalation] = await inbox(stub, INSTITUTION, banks[0], kinds=["lead.escalated"])
        assert escalation.lead_id == late.lead_id
        await _clock(clocks, late.lead_id, cpb.CLOCK_STATE_BREACHED)

        # The demand service records the breach; the matcher re-routes to rr3, whose clock starts, and
        # the breached lead expires (DOMAIN.md: SLA_BREACHED -> EXPIRED, a new lead goes to the next one).
        after = await eventually(get, lambda d: len(d.leads) == 4, timeout=30)
        states = {lead.institution_id: lead for lead in after.leads}
        assert [h.status for h in states[banks[0]].history][-2:] == [lead_pb2.LEAD_STATUS_SLA_BREACHED,
                                                                     lead_pb2.LEAD_STATUS_EXPIRED]
        assert states[banks[0]].history[-1].reason == f"re-routed: the demand went on to {banks[3]}"
        assert states[banks[3]].origin == lead_pb2.LEAD_ORIGIN_SLA_REROUTE
        c = await _clock(clocks, states[banks[3]].lead_id, cpb.CLOCK_STATE_RUNNING)
        rerouted = states[banks[3]].lead_id
        # Only this demand's: the matcher's fresh consumer group also re-matches the demands earlier test
        # modules left on the topic, and rr3's new product may join them too (the reverse join).
        assert [(n.kind, n.lead_id) for n in await inbox(stub, INSTITUTION, banks[3], demand_id=demand.demand_id)
                ] == [("lead.issued", rerouted)]
        assert notifier.metrics.clock_breaches.labels(banks[0])._value.get() == 1
        # The enterprise heard of the contacts, the breach and the re-match.
        kinds = [n.kind for n in await inbox(stub, 1, uscc, want=6, timeout=15)]
        assert {"demand.received", "demand.matched", "lead.outcome", "demand.rematched"} <= set(kinds)


async def _clock(clocks, lead_id: str, state: int) -> cpb.LeadClock:
    async def get() -> cpb.LeadClock | None:
        try:
            return (await clocks.GetLeadClock(cpb.GetLeadClockRequest(lead_id=lead_id))).clock
        except grpc.aio.AioRpcError:
            return None
    c = await eventually(get, lambda c: c is not None and c.state == state, timeout=20)
    assert c is not None and c.state == state, c
    return c
