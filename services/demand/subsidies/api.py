"""gRPC: SubsidyService (translate and delegate). An operator creates funds (``x-operator-key``). A
lender reports a loan settled with its API key (``x-api-key``): the loan book and the loan's grant
take it (:meth:`Loans.settled`)."""

from __future__ import annotations

import grpc

from finmesh.subsidy.v1 import subsidy_pb2 as spb
from finmesh.subsidy.v1 import subsidy_pb2_grpc as spb_grpc
from meshkit import apikeys
from meshkit.operators import Operators
from meshkit.paging import Page
from meshkit.pbtime import set_ts
from services.demand.loans.service import Loans
from services.demand.service import Institutions
from services.demand.subsidies import mapping
from services.demand.subsidies.service import Subsidies


class SubsidyApi(spb_grpc.SubsidyServiceServicer):
    def __init__(self, subsidies: Subsidies, loans: Loans, institutions: Institutions, operators: Operators) -> None:
        self.subsidies = subsidies
        self.loans = loans
        self.institutions = institutions
        self.operators = operators

    async def CreateFund(self, request: spb.CreateFundRequest, context: grpc.aio.ServicerContext
                         ) -> spb.CreateFundResponse:
        self.operators.authenticate(context)
        f, created = await self.subsidies.create_fund(mapping.fund_from_pb(request.fund))
        return spb.CreateFundResponse(fund=mapping.fund_to_pb(f), created=created)

    async def GetFund(self, request: spb.GetFundRequest, context: grpc.aio.ServicerContext) -> spb.GetFundResponse:
        return spb.GetFundResponse(fund=mapping.fund_to_pb(await self.subsidies.get_fund(request.fund_id.strip())))

    async def ListFunds(self, request: spb.ListFundsRequest, context: grpc.aio.ServicerContext
                        ) -> spb.ListFundsResponse:
        page = Page.of(request.page_size, request.page_token)
        found = await self.subsidies.list_funds(page.size + 1, page.offset)
        return spb.ListFundsResponse(funds=[mapping.fund_to_pb(f) for f in found[: page.size]],
                                     next_page_token=page.next_token(len(found)))

    async def ListGrants(self, request: spb.ListGrantsRequest, context: grpc.aio.ServicerContext
                         ) -> spb.ListGrantsResponse:
        page = Page.of(request.page_size, request.page_token)
        found = await self.subsidies.list_grants(fund_id=request.fund_id, enterprise_uscc=request.enterprise_uscc,
                                                 status=int(request.status), limit=page.size + 1, offset=page.offset)
        return spb.ListGrantsResponse(grants=[mapping.grant_to_pb(g) for g in found[: page.size]],
                                      next_page_token=page.next_token(len(found)))

    async def ReportLoanSettled(self, request: spb.ReportLoanSettledRequest, context: grpc.aio.ServicerContext
                                ) -> spb.ReportLoanSettledResponse:
        institution_id = await self.institutions.authenticate(apikeys.from_context(context))
        done = await self.loans.settled(institution_id, request.lead_id.strip())
        out = spb.ReportLoanSettledResponse(changed=done.changed)
        if done.grant is not None:
            out.grant.CopyFrom(mapping.grant_to_pb(done.grant))
        if done.loan_settled_at is not None:
            set_ts(out.loan_settled_at, done.loan_settled_at)
        return out
