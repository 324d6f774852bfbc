"""gRPC: RoadshowService (translate and delegate)."""

from __future__ import annotations

import grpc

from finmesh.roadshow.v1 import roadshow_pb2 as pb
from finmesh.roadshow.v1 import roadshow_pb2_grpc as pb_grpc
from meshkit import apikeys
from meshkit.operators import Operators
from meshkit.paging import Page
from services.roadshow import mapping
from services.roadshow.service import Roadshows

Ctx = grpc.aio.ServicerContext


class RoadshowApi(pb_grpc.RoadshowServiceServicer):
    """Operators create and change roadshows and override selections (``x-operator-key``);
    investors register and record intents with their API key (``x-api-key``)."""

    def __init__(self, roadshows: Roadshows, operators: Operators) -> None:
        self.roadshows = roadshows
        self.operators = operators

    async def CreateRoadshow(self, request: pb.CreateRoadshowRequest, context: Ctx) -> pb.CreateRoadshowResponse:
        self.operators.authenticate(context)
        x, created = await self.roadshows.create(request.request_id, mapping.roadshow_from_pb(request.roadshow))
        return pb.CreateRoadshowResponse(roadshow=mapping.roadshow_to_pb(x), created=created)

    async def UpdateRoadshow(self, request: pb.UpdateRoadshowRequest, context: Ctx) -> pb.UpdateRoadshowResponse:
        self.operators.authenticate(context, request.operator_id.strip())
        x = await self.roadshows.update(mapping.roadshow_from_pb(request.roadshow), list(request.update_mask.paths))
        return pb.UpdateRoadshowResponse(roadshow=mapping.roadshow_to_pb(x))

    async def GetRoadshow(self, request: pb.GetRoadshowRequest, context: Ctx) -> pb.GetRoadshowResponse:
        return pb.GetRoadshowResponse(roadshow=mapping.roadshow_to_pb(await self.roadshows.get(request.roadshow_id)))

    async def ListRoadshows(self, request: pb.ListRoadshowsRequest, context: Ctx) -> pb.ListRoadshowsResponse:
        page = Page.of(request.page_size, request.page_token)
        found = await self.roadshows.list(request.month, page.size + 1, page.offset)
        return pb.ListRoadshowsResponse(roadshows=[mapping.roadshow_to_pb(x) for x in found[: page.size]],
                                        next_page_token=page.next_token(len(found)))

    async def Apply(self, request: pb.ApplyRequest, context: Ctx) -> pb.ApplyResponse:
        a, created = await self.roadshows.apply(request.roadshow_id, request.enterprise_uscc,
                                                request.amount_sought_fen, int(request.purpose), request.pitch)
        return pb.ApplyResponse(application=mapping.application_to_pb(a), created=created)

    async def ListApplications(self, request: pb.ListApplicationsRequest, context: Ctx
                               ) -> pb.ListApplicationsResponse:
        page = Page.of(request.page_size, request.page_token)
        found = await self.roadshows.applications(request.roadshow_id, int(request.status), page.size + 1,
                                                  page.offset)
        return pb.ListApplicationsResponse(applications=[mapping.application_to_pb(a) for a in found[: page.size]],
                                           next_page_token=page.next_token(len(found)))

    async def OverrideSelection(self, request: pb.OverrideSelectionRequest, context: Ctx
                                ) -> pb.OverrideSelectionResponse:
        operator_id = self.operators.authenticate(context, request.operator_id.strip())
        a = await self.roadshows.override(request.roadshow_id, request.enterprise_uscc, request.selected,
                                          request.reason, operator_id)
        return pb.OverrideSelectionResponse(application=mapping.application_to_pb(a))

    async def RegisterInvestor(self, request: pb.RegisterInvestorRequest, context: Ctx
                               ) -> pb.RegisterInvestorResponse:
        await apikeys.check_caller(self.roadshows.pool, request.institution_id, context)
        x, created = await self.roadshows.register_investor(request.roadshow_id, request.institution_id)
        return pb.RegisterInvestorResponse(investor=mapping.investor_to_pb(x), created=created)

    async def RecordIntent(self, request: pb.RecordIntentRequest, context: Ctx) -> pb.RecordIntentResponse:
        await apikeys.check_caller(self.roadshows.pool, request.institution_id, context)
        i, created = await self.roadshows.record_intent(mapping.intent_request_from_pb(request))
        return pb.RecordIntentResponse(intent=mapping.intent_to_pb(i), created=created)

    async def ListIntents(self, request: pb.ListIntentsRequest, context: Ctx) -> pb.ListIntentsResponse:
        page = Page.of(request.page_size, request.page_token)
        found = await self.roadshows.intents(request.roadshow_id, page.size + 1, page.offset)
        return pb.ListIntentsResponse(intents=[mapping.intent_to_pb(i) for i in found[: page.size]],
                                      next_page_token=page.next_token(len(found)))

    async def GetRoadshowReport(self, request: pb.GetRoadshowReportRequest, context: Ctx
                                ) -> pb.GetRoadshowReportResponse:
        total, rows = await self.roadshows.report(
            roadshow_id=request.roadshow_id, held_from=mapping.ts_to_dt(request.held_from),
            held_to=mapping.ts_to_dt(request.held_to), group_by=int(request.group_by))
        return pb.GetRoadshowReportResponse(
            total=mapping.figures_to_pb(total),
            rows=[pb.ReportRow(key=mapping.report_key(int(request.group_by), key), figures=mapping.figures_to_pb(f))
                  for key, f in rows])
