"""gRPC: ReceivableService (translate and delegate). A financier's calls are authenticated by its
API key (``x-api-key``), as institutions' calls to LeadService are."""

from __future__ import annotations

import grpc

from finmesh.receivable.v1 import receivable_pb2 as rpb
from finmesh.receivable.v1 import receivable_pb2_grpc as rpb_grpc
from meshkit import apikeys
from meshkit.paging import Page
from services.demand.receivables import mapping
from services.demand.receivables.service import Receivables
from services.demand.service import Institutions


class ReceivableApi(rpb_grpc.ReceivableServiceServicer):
    def __init__(self, receivables: Receivables, institutions: Institutions) -> None:
        self.receivables = receivables
        self.institutions = institutions

    async def UploadReceivable(self, request: rpb.UploadReceivableRequest, context: grpc.aio.ServicerContext
                               ) -> rpb.UploadReceivableResponse:
        x, created = await self.receivables.upload(mapping.upload_from_pb(request.request_id, request.receivable))
        return rpb.UploadReceivableResponse(receivable=mapping.to_pb(x), created=created)

    async def ConfirmReceivable(self, request: rpb.ConfirmReceivableRequest, context: grpc.aio.ServicerContext
                                ) -> rpb.ConfirmReceivableResponse:
        x, changed = await self.receivables.confirm(request.receivable_id.strip(), request.debtor_uscc.strip().upper(),
                                                    request.confirmed_amount_fen)
        return rpb.ConfirmReceivableResponse(receivable=mapping.to_pb(x), changed=changed)

    async def DisputeReceivable(self, request: rpb.DisputeReceivableRequest, context: grpc.aio.ServicerContext
                                ) -> rpb.DisputeReceivableResponse:
        x = await self.receivables.dispute(request.receivable_id.strip(), request.debtor_uscc.strip().upper(),
                                           request.reason)
        return rpb.DisputeReceivableResponse(receivable=mapping.to_pb(x))

    async def RequestFinancing(self, request: rpb.RequestFinancingRequest, context: grpc.aio.ServicerContext
                               ) -> rpb.RequestFinancingResponse:
        x = await self.receivables.request_financing(
            request.receivable_id.strip(), request.supplier_uscc.strip().upper(), request.institution_id.strip(),
            request.amount_fen, int(request.kind))
        return rpb.RequestFinancingResponse(receivable=mapping.to_pb(x))

    async def WithdrawFinancing(self, request: rpb.WithdrawFinancingRequest, context: grpc.aio.ServicerContext
                                ) -> rpb.WithdrawFinancingResponse:
        x = await self.receivables.withdraw_financing(request.receivable_id.strip(),
                                                      request.supplier_uscc.strip().upper(), request.reason)
        return rpb.WithdrawFinancingResponse(receivable=mapping.to_pb(x))

    async def DecideFinancing(self, request: rpb.DecideFinancingRequest, context: grpc.aio.ServicerContext
                              ) -> rpb.DecideFinancingResponse:
        institution_id = await self.institutions.authenticate(apikeys.from_context(context))
        x = await self.receivables.decide_financing(request.receivable_id.strip(), institution_id, request.approve,
                                                    request.rate_bps, request.decline_reason)
        return rpb.DecideFinancingResponse(receivable=mapping.to_pb(x))

    async def SettleReceivable(self, request: rpb.SettleReceivableRequest, context: grpc.aio.ServicerContext
                               ) -> rpb.SettleReceivableResponse:
        supplier = request.supplier_uscc.strip().upper()
        if supplier:
            x = await self.receivables.settle(request.receivable_id.strip(), supplier_uscc=supplier)
        else:  # the financier reports: its key says who it is
            institution_id = await self.institutions.authenticate(apikeys.from_context(context))
            x = await self.receivables.settle(request.receivable_id.strip(), institution_id=institution_id)
        return rpb.SettleReceivableResponse(receivable=mapping.to_pb(x))

    async def GetReceivable(self, request: rpb.GetReceivableRequest, context: grpc.aio.ServicerContext
                            ) -> rpb.GetReceivableResponse:
        return rpb.GetReceivableResponse(receivable=mapping.to_pb(
            await self.receivables.get(request.receivable_id.strip())))

    async def ListReceivables(self, request: rpb.ListReceivablesRequest, context: grpc.aio.ServicerContext
                              ) -> rpb.ListReceivablesResponse:
        page = Page.of(request.page_size, request.page_token)
        found = await self.receivables.list(supplier_uscc=request.supplier_uscc, debtor_uscc=request.debtor_uscc,
                                            financier_id=request.financier_id, status=int(request.status),
                                            limit=page.size + 1, offset=page.offset)
        return rpb.ListReceivablesResponse(receivables=[mapping.to_pb(x) for x in found[: page.size]],
                                           next_page_token=page.next_token(len(found)))
