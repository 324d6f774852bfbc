"""A demand service running in-process on the real broker and a fresh database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from institution_keys import OperatorAuth

from finmesh.demand.v1 import demand_pb2_grpc as dm_grpc
from finmesh.enterprise.v1 import enterprise_pb2_grpc as ent_grpc
from finmesh.institution.v1 import institution_pb2_grpc as inst_grpc
from finmesh.lead.v1 import lead_pb2_grpc as lead_grpc
from meshkit.lifecycle import Runtime
from services.demand import app


@pytest.fixture(scope="module")
async def demand_rt(database_url: str, bootstrap: str, service_runtime) -> AsyncIterator[Runtime]:
    """The demand service, SERVING (its consumers have their partitions), in its own consumer groups."""
    async with service_runtime("demand", app, database_url, bootstrap) as rt:
        yield rt


@dataclass
class Stubs:
    demands: dm_grpc.DemandServiceStub
    enterprises: ent_grpc.EnterpriseServiceStub
    institutions: inst_grpc.InstitutionServiceStub
    leads: lead_grpc.LeadServiceStub


@pytest.fixture(scope="module")
async def stubs(demand_rt: Runtime) -> AsyncIterator[Stubs]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{demand_rt.grpc_port}", interceptors=[OperatorAuth()]) as channel:
        yield Stubs(dm_grpc.DemandServiceStub(channel), ent_grpc.EnterpriseServiceStub(channel),
                    inst_grpc.InstitutionServiceStub(channel), lead_grpc.LeadServiceStub(channel))
