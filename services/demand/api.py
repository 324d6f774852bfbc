"""gRPC: EnterpriseService, InstitutionService, DemandService and LeadService (translate and delegate)."""

from __future__ import annotations

import grpc

from finmesh.demand.v1 import demand_pb2 as dpb
from finmesh.demand.v1 import demand_pb2_grpc as dpb_grpc
from finmesh.enterprise.v1 import enterprise_pb2 as epb
from finmesh.enterprise.v1 import enterprise_pb2_grpc as epb_grpc
from finmesh.institution.v1 import institution_pb2 as ipb
from finmesh.institution.v1 import institution_pb2_grpc as ipb_grpc
from finmesh.lead.v1 import lead_pb2 as lpb
from finmesh.lead.v1 import lead_pb2_grpc as lpb_grpc
from meshkit import apikeys
from meshkit.operators import Operators
from meshkit.paging import Page
from services.demand import domain as d
from services.demand import mapping, store
from services.demand.service import Demands, Enterprises, Institutions, Intake


class EnterpriseApi(epb_grpc.EnterpriseServiceServicer):
    def __init__(self, enterprises: Enterprises, institutions: Institutions) -> None:
        self.enterprises = enterprises
        self.institutions = institutions

    async def RegisterEnterprise(self, request: epb.RegisterEnterpriseRequest, context: grpc.aio.ServicerContext
                                 ) -> epb.RegisterEnterpriseResponse:
        e, created = await self.enterprises.register(mapping.enterprise_from_pb(request.enterprise))
        return epb.RegisterEnterpriseResponse(enterprise=mapping.enterprise_to_pb(e), created=created)

    async def UpdateEnterprise(self, request: epb.UpdateEnterpriseRequest, context: grpc.aio.ServicerContext
                               ) -> epb.UpdateEnterpriseResponse:
        e, changed = await self.enterprises.update(mapping.enterprise_from_pb(request.enterprise),
                                                   tuple(request.update_mask.paths), request.expected_version)
        return epb.UpdateEnterpriseResponse(enterprise=mapping.enterprise_to_pb(e), changed=changed)

    async def GetEnterprise(self, request: epb.GetEnterpriseRequest, context: grpc.aio.ServicerContext
                            ) -> epb.GetEnterpriseResponse:
        return epb.GetEnterpriseResponse(enterprise=mapping.enterprise_to_pb(await self.enterprises.get(request.uscc)))

    async def ListEnterprises(self, request: epb.ListEnterprisesRequest, context: grpc.aio.ServicerContext
                              ) -> epb.ListEnterprisesResponse:
        page = Page.of(request.page_size, request.page_token)
        found = await self.enterprises.list(
            region_code=request.region_code, city=request.city, key_industry=int(request.key_industry),
            srdi_tier=int(request.srdi_tier), size=int(request.size), special_zone=request.special_zone,
            limit=page.size + 1, offset=page.offset,
        )
        return epb.ListEnterprisesResponse(enterprises=[mapping.enterprise_to_pb(e) for e in found[: page.size]],
                                           next_page_token=page.next_token(len(found)))

    async def EvaluateEnterprise(self, request: epb.EvaluateEnterpriseRequest, context: grpc.aio.ServicerContext
                                 ) -> epb.EvaluateEnterpriseResponse:
        institution_id = await self.institutions.authenticate(apikeys.from_context(context))
        x = await self.enterprises.evaluate(request.uscc.strip().upper(), institution_id)
        out = epb.Evaluation(uscc=x.uscc, score=x.score, grade=x.grade, rules_version=x.rules_version, factors=[
            epb.EvaluationFactor(factor=f.factor, value=f.value, points=f.points, max_points=f.max_points)
            for f in x.factors])
        out.evaluated_at.FromDatetime(self.enterprises.clock())
        return epb.EvaluateEnterpriseResponse(evaluation=out)


class InstitutionApi(ipb_grpc.InstitutionServiceServicer):
    """An operator registers an institution (``x-operator-key``); the institution changes its own
    details and rotates its key with its API key (``x-api-key``)."""

    def __init__(self, institutions: Institutions, operators: Operators) -> None:
        self.institutions = institutions
        self.operators = operators

    async def RegisterInstitution(self, request: ipb.RegisterInstitutionRequest, context: grpc.aio.ServicerContext
                                  ) -> ipb.RegisterInstitutionResponse:
        i, created, key = await self.institutions.register(mapping.institution_from_pb(request.institution),
                                                           apikeys.from_context(context),
                                                           operator=self.operators.optional(context))
        return ipb.RegisterInstitutionResponse(institution=mapping.institution_to_pb(i), created=created, api_key=key)

    async def RotateApiKey(self, request: ipb.RotateApiKeyRequest, context: grpc.aio.ServicerContext
                           ) -> ipb.RotateApiKeyResponse:
        key = await self.institutions.rotate_key(request.institution_id.strip(), apikeys.from_context(context))
        return ipb.RotateApiKeyResponse(api_key=key)

    async def GetInstitution(self, request: ipb.GetInstitutionRequest, context: grpc.aio.ServicerContext
                             ) -> ipb.GetInstitutionResponse:
        i = await self.institutions.get(request.institution_id)
        return ipb.GetInstitutionResponse(institution=mapping.institution_to_pb(i))

    async def ListInstitutions(self, request: ipb.ListInstitutionsRequest, context: grpc.aio.ServicerContext
                               ) -> ipb.ListInstitutionsResponse:
        page = Page.of(request.page_size, request.page_token)
        found = await self.institutions.list(page.size + 1, page.offset, type_=int(request.type),
                                             region_code=request.region_code)
        return ipb.ListInstitutionsResponse(
            institutions=[mapping.institution_to_pb(i) for i in found[: page.size]],
            next_page_token=page.next_token(len(found)),
        )


class DemandApi(dpb_grpc.DemandServiceServicer):
    """Portals submit demands; a window's operator files one with its key (``x-operator-key``)."""

    def __init__(self, demands: Demands, operators: Operators) -> None:
        self.demands = demands
        self.operators = operators

    async def SubmitDemand(self, request: dpb.SubmitDemandRequest, context: grpc.aio.ServicerContext
                           ) -> dpb.SubmitDemandResponse:
        intake = Intake(channel=d.Channel.API, key=request.request_id, actor="api",
                        key_fields=(("request_id", request.request_id),))
        demand, created = await self.demands.submit(intake, mapping.request_from_pb(request.demand))
        return dpb.SubmitDemandResponse(demand=mapping.demand_to_pb(demand), created=created)

    async def FileWindowDemand(self, request: dpb.FileWindowDemandRequest, context: grpc.aio.ServicerContext
                               ) -> dpb.FileWindowDemandResponse:
        operator_id = self.operators.authenticate(context, request.operator_id.strip())
        intake = Intake(
            channel=d.Channel.OFFLINE_WINDOW, key=f"{request.window_id}:{request.filing_id}",
            actor=f"window:{request.window_id}/operator:{operator_id}",
            key_fields=(("window_id", request.window_id), ("filing_id", request.filing_id)),
            operator_id=operator_id,
        )
        demand, created = await self.demands.submit(intake, mapping.request_from_pb(request.demand))
        return dpb.FileWindowDemandResponse(demand=mapping.demand_to_pb(demand), created=created)

    async def ConfirmDemand(self, request: dpb.ConfirmDemandRequest, context: grpc.aio.ServicerContext
                            ) -> dpb.ConfirmDemandResponse:
        demand = await self.demands.confirm(request.demand_id, request.enterprise_uscc)
        return dpb.ConfirmDemandResponse(demand=mapping.demand_to_pb(demand))

    async def WithdrawDemand(self, request: dpb.WithdrawDemandRequest, context: grpc.aio.ServicerContext
                             ) -> dpb.WithdrawDemandResponse:
        demand = await self.demands.withdraw(request.demand_id, request.enterprise_uscc, request.reason)
        return dpb.WithdrawDemandResponse(demand=mapping.demand_to_pb(demand))

    async def GetDemand(self, request: dpb.GetDemandRequest, context: grpc.aio.ServicerContext
                        ) -> dpb.GetDemandResponse:
        return dpb.GetDemandResponse(demand=mapping.demand_to_pb(await self.demands.get(request.demand_id)))

    async def ListDemands(self, request: dpb.ListDemandsRequest, context: grpc.aio.ServicerContext
                          ) -> dpb.ListDemandsResponse:
        page = Page.of(request.page_size, request.page_token)
        f = store.DemandFilter(
            enterprise_uscc=request.enterprise_uscc, statuses=tuple(int(s) for s in request.statuses),
            channel=int(request.channel), institution_id=request.institution_id,
            submitted_from=mapping.ts_to_dt(request.submitted_from),
            submitted_to=mapping.ts_to_dt(request.submitted_to),
        )
        found = await self.demands.list(f, page.size + 1, page.offset)
        return dpb.ListDemandsResponse(demands=[mapping.demand_to_pb(x) for x in found[: page.size]],
                                       next_page_token=page.next_token(len(found)))


class LeadApi(lpb_grpc.LeadServiceServicer):
    """For institutions: every call is authenticated by the institution's API key (``x-api-key``)."""

    def __init__(self, demands: Demands, institutions: Institutions) -> None:
        self.demands = demands
        self.institutions = institutions

    async def ReportLeadOutcome(self, request: lpb.ReportLeadOutcomeRequest, context: grpc.aio.ServicerContext
                                ) -> lpb.ReportLeadOutcomeResponse:
        institution_id = await self.institutions.authenticate(apikeys.from_context(context))
        lead, changed = await self.demands.report_outcome(institution_id, request.lead_id,
                                                          mapping.outcome_from_pb(request.outcome))
        return lpb.ReportLeadOutcomeResponse(lead=mapping.lead_to_pb(lead), changed=changed)

    async def ListLeads(self, request: lpb.ListLeadsRequest, context: grpc.aio.ServicerContext
                        ) -> lpb.ListLeadsResponse:
        institution_id = await self.institutions.authenticate(apikeys.from_context(context))
        page = Page.of(request.page_size, request.page_token)
        found = await self.demands.list_leads(institution_id, int(request.status), request.demand_id,
                                              page.size + 1, page.offset)
        return lpb.ListLeadsResponse(leads=[mapping.lead_to_pb(x) for x in found[: page.size]],
                                     next_page_token=page.next_token(len(found)))
