"""Composition root of the demand service."""

from __future__ import annotations

from pathlib import Path

from finmesh.demand.v1 import demand_pb2 as dpb
from finmesh.demand.v1 import demand_pb2_grpc as dpb_grpc
from finmesh.enterprise.v1 import enterprise_pb2 as epb
from finmesh.enterprise.v1 import enterprise_pb2_grpc as epb_grpc
from finmesh.institution.v1 import institution_pb2 as ipb
from finmesh.institution.v1 import institution_pb2_grpc as ipb_grpc
from finmesh.lead.v1 import lead_pb2 as lpb
from finmesh.lead.v1 import lead_pb2_grpc as lpb_grpc
from finmesh.receivable.v1 import receivable_pb2 as rpb
from finmesh.receivable.v1 import receivable_pb2_grpc as rpb_grpc
from finmesh.subsidy.v1 import subsidy_pb2 as spb
from finmesh.subsidy.v1 import subsidy_pb2_grpc as spb_grpc
from meshkit import codec, topics
from meshkit.clock import Clock
from meshkit.kafka import ensure_topics
from meshkit.lifecycle import Runtime
from services.demand import consumers, reference, stats_api
from services.demand.api import DemandApi, EnterpriseApi, InstitutionApi, LeadApi
from services.demand.loans.service import Loans
from services.demand.receivables.api import ReceivableApi
from services.demand.receivables.service import Receivables
from services.demand.service import Demands, Enterprises, Institutions
from services.demand.subsidies.api import SubsidyApi
from services.demand.subsidies.service import Subsidies

SCHEMA = "demand"
PORTAL_BATCH = 1000  # portal records stored per transaction (bench/intake.py)
MIGRATIONS = Path(__file__).parent / "migrations"
# The topics this service reads or writes (created if missing, with their dead-letter topics, so it can
# start on a bare broker).
TOPICS = (topics.PORTAL_DEMANDS, topics.DEMANDS_ACCEPTED, topics.DEMANDS_MATCHED, topics.ENTERPRISES_CHANGED,
          topics.INSTITUTIONS_CHANGED, topics.DEMAND_STATUS_CHANGED, topics.LEAD_STATUS_CHANGED,
          topics.LEAD_OUTCOMES, topics.LEAD_SLA_BREACHED, topics.ROADSHOW_INTENTS, topics.CONTACT_POLICIES_CHANGED,
          topics.RECEIVABLES_CHANGED, topics.SUBSIDY_GRANTS_CHANGED, topics.LOAN_RENEWALS_DUE)
EXPIRY_INTERVAL_SECONDS = 30.0
MATURITY_INTERVAL_SECONDS = 300.0  # receivables' payment prompts and loans' renewal warnings are by the day


async def build(rt: Runtime, *, clock: Clock = codec.now) -> None:
    """``clock`` is injectable (tests move time for every service at once)."""
    bootstrap = rt.settings.kafka_bootstrap_servers
    await ensure_topics(bootstrap, TOPICS)
    ref = reference.load()
    demands = Demands(rt.pool, rt.metrics, schema=SCHEMA, clock=clock)
    institutions = Institutions(rt.pool, bootstrap, ref, schema=SCHEMA)
    rt.grpc.add(epb_grpc.add_EnterpriseServiceServicer_to_server,
                EnterpriseApi(Enterprises(rt.pool, ref, schema=SCHEMA, clock=clock), institutions),
                epb.DESCRIPTOR.services_by_name["EnterpriseService"])
    rt.grpc.add(ipb_grpc.add_InstitutionServiceServicer_to_server, InstitutionApi(institutions, rt.operators),
                ipb.DESCRIPTOR.services_by_name["InstitutionService"])
    rt.grpc.add(dpb_grpc.add_DemandServiceServicer_to_server, DemandApi(demands, rt.operators),
                dpb.DESCRIPTOR.services_by_name["DemandService"])
    rt.grpc.add(lpb_grpc.add_LeadServiceServicer_to_server, LeadApi(demands, institutions),
                lpb.DESCRIPTOR.services_by_name["LeadService"])
    receivables = Receivables(rt.pool, rt.metrics, schema=SCHEMA, clock=clock)
    rt.grpc.add(rpb_grpc.add_ReceivableServiceServicer_to_server, ReceivableApi(receivables, institutions),
                rpb.DESCRIPTOR.services_by_name["ReceivableService"])
    subsidies = Subsidies(rt.pool, rt.metrics, schema=SCHEMA, clock=clock)
    loans = Loans(rt.pool, subsidies, schema=SCHEMA, clock=clock)
    rt.grpc.add(spb_grpc.add_SubsidyServiceServicer_to_server, SubsidyApi(subsidies, loans, institutions, rt.operators),
                spb.DESCRIPTOR.services_by_name["SubsidyService"])
    rt.consume(topics.PORTAL_DEMANDS, consumers.portal_intake(demands),
               batch_handler=consumers.portal_intake_batch(demands), max_records=PORTAL_BATCH)
    rt.consume(topics.DEMANDS_MATCHED, consumers.demand_matched(demands))
    rt.consume(topics.LEAD_OUTCOMES, consumers.lead_outcome_reported(demands))
    rt.consume(topics.LEAD_SLA_BREACHED, consumers.lead_sla_breached(demands))
    # Interest subsidies and the loan book follow the leads' outcomes, from this service's own events.
    rt.consume(topics.LEAD_STATUS_CHANGED, consumers.lead_status_changed(loans), group=f"{rt.service}.loans")
    policies = rt.consume(topics.CONTACT_POLICIES_CHANGED, consumers.contact_policy_changed(demands))
    # An intent's lead is dated by its institution's policy: the ones announced before start come first.
    rt.consume(topics.ROADSHOW_INTENTS, consumers.roadshow_intent(demands), after=[policies.caught_up],
               serves_at_once=True)
    rt.task(lambda: demands.run_expiry(EXPIRY_INTERVAL_SECONDS))
    rt.task(lambda: receivables.run_maturity(MATURITY_INTERVAL_SECONDS))
    rt.task(lambda: loans.run_warnings(MATURITY_INTERVAL_SECONDS))
    rt.task(lambda: subsidies.run_lapses(MATURITY_INTERVAL_SECONDS))
    stats_api.register(rt)
