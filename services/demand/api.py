"""gRPC: EnterpriseService, InstitutionService and DemandService (translate and delegate)."""

from __future__ import annotations

import grpc

from finmesh.demand.v1 import demand_pb2 as dpb
from finmesh.demand.v1 import demand_pb2_grpc as dpb_grpc
from finmesh.enterprise.v1 import enterprise_pb2 as epb
from finmesh.enterprise.v1 import enterprise_pb2_grpc as epb_grpc
from finmesh.institution.v1 import institution_pb2 as ipb
from finmesh.institution.v1 import institution_pb2_grpc as ipb_grpc
from meshkit.paging import Page
from services.demand import domain as d
from services.demand import mapping
from services.demand.service import Demands, Enterprises, Institutions, Intake


class EnterpriseApi(epb_grpc.EnterpriseServiceServicer):
    def __init__(self, enterprises: Enterprises) -> None:
        self.enterprises = enterprises

    async def RegisterEnterprise(self, request: epb.RegisterEnterpriseRequest, context: grpc.aio.ServicerContext
                                 ) -> epb.RegisterEnterpriseResponse:
        e, created = await self.enterprises.register(mapping.enterprise_from_pb(request.enterprise))
        return epb.RegisterEnterpriseResponse(enterprise=mapping.enterprise_to_pb(e), created=created)

    async def GetEnterprise(self, request: epb.GetEnterpriseRequest, context: grpc.aio.ServicerContext
                            ) -> epb.GetEnterpriseResponse:
        return epb.GetEnterpriseResponse(enterprise=mapping.enterprise_to_pb(await self.enterprises.get(request.uscc)))


class InstitutionApi(ipb_grpc.InstitutionServiceServicer):
    def __init__(self, institutions: Institutions) -> None:
        self.institutions = institutions

    async def RegisterInstitution(self, request: ipb.RegisterInstitutionRequest, context: grpc.aio.ServicerContext
                                  ) -> ipb.RegisterInstitutionResponse:
        i, created = await self.institutions.register(mapping.institution_from_pb(request.institution))
        return ipb.RegisterInstitutionResponse(institution=mapping.institution_to_pb(i), created=created)

    async def GetInstitution(self, request: ipb.GetInstitutionRequest, context: grpc.aio.ServicerContext
                             ) -> ipb.GetInstitutionResponse:
        i = await self.institutions.get(request.institution_id)
        return ipb.GetInstitutionResponse(institution=mapping.institution_to_pb(i))

    async def ListInstitutions(self, request: ipb.ListInstitutionsRequest, context: grpc.aio.ServicerContext
                               ) -> ipb.ListInstitutionsResponse:
        page = Page.of(request.page_size, request.page_token)
        found = await self.institutions.list(page.size + 1, page.offset)
        return ipb.ListInstitutionsResponse(
            institutions=[mapping.institution_to_pb(i) for i in found[: page.size]],
            next_page_token=page.next_token(len(found)),
        )


class DemandApi(dpb_grpc.DemandServiceServicer):
    def __init__(self, demands: Demands) -> None:
        self.demands = demands

    async def SubmitDemand(self, request: dpb.SubmitDemandRequest, context: grpc.aio.ServicerContext
                           ) -> dpb.SubmitDemandResponse:
        intake = Intake(channel=d.Channel.API, key=request.request_id, actor="api",
                        key_fields=(("request_id", request.request_id),))
        demand, created = await self.demands.submit(intake, mapping.request_from_pb(request.demand))
        return dpb.SubmitDemandResponse(demand=mapping.demand_to_pb(demand), created=created)

    async def GetDemand(self, request: dpb.GetDemandRequest, context: grpc.aio.ServicerContext
                        ) -> dpb.GetDemandResponse:
        return dpb.GetDemandResponse(demand=mapping.demand_to_pb(await self.demands.get(request.demand_id)))
