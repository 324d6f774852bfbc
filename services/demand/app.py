"""Composition root of the demand service."""

from __future__ import annotations

from pathlib import Path

from finmesh.demand.v1 import demand_pb2 as dpb
from finmesh.demand.v1 import demand_pb2_grpc as dpb_grpc
from finmesh.enterprise.v1 import enterprise_pb2 as epb
from finmesh.enterprise.v1 import enterprise_pb2_grpc as epb_grpc
from finmesh.institution.v1 import institution_pb2 as ipb
from finmesh.institution.v1 import institution_pb2_grpc as ipb_grpc
from meshkit import topics
from meshkit.kafka import ensure_topics
from meshkit.lifecycle import Runtime
from services.demand import consumers
from services.demand.api import DemandApi, EnterpriseApi, InstitutionApi
from services.demand.service import Demands, Enterprises, Institutions

SCHEMA = "demand"
MIGRATIONS = Path(__file__).parent / "migrations"
# The topics this service reads or writes (created if missing, so it can start on a bare broker).
TOPICS = (topics.PORTAL_DEMANDS, topics.PORTAL_DEMANDS_DLQ, topics.DEMANDS_ACCEPTED, topics.DEMANDS_MATCHED)


async def build(rt: Runtime) -> None:
    bootstrap = rt.settings.kafka_bootstrap_servers
    await ensure_topics(bootstrap, TOPICS)
    demands = Demands(rt.pool, rt.metrics, schema=SCHEMA)
    rt.grpc.add(epb_grpc.add_EnterpriseServiceServicer_to_server, EnterpriseApi(Enterprises(rt.pool)),
                epb.DESCRIPTOR.services_by_name["EnterpriseService"])
    rt.grpc.add(ipb_grpc.add_InstitutionServiceServicer_to_server, InstitutionApi(Institutions(rt.pool, bootstrap)),
                ipb.DESCRIPTOR.services_by_name["InstitutionService"])
    rt.grpc.add(dpb_grpc.add_DemandServiceServicer_to_server, DemandApi(demands),
                dpb.DESCRIPTOR.services_by_name["DemandService"])
    rt.consume(topics.PORTAL_DEMANDS, consumers.portal_intake(demands))
    rt.consume(topics.DEMANDS_MATCHED, consumers.demand_matched(demands))
