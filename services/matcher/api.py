"""gRPC: CatalogService (institutions' systems keep their products here), SubscriptionService and
DemandPoolService (institution-active docking). A call made for an institution carries its API key
(``x-api-key``, :mod:`meshkit.apikeys`); reading the catalog needs none."""

from __future__ import annotations

import asyncpg
import grpc

from finmesh.catalog.v1 import product_pb2 as pb
from finmesh.catalog.v1 import product_pb2_grpc as pb_grpc
from finmesh.common.v1 import finance_pb2 as finance
from finmesh.matching.v1 import docking_pb2 as dock
from finmesh.matching.v1 import docking_pb2_grpc as dock_grpc
from meshkit import apikeys, errors
from meshkit.paging import Page
from services.matcher import handlers, store
from services.matcher.view import LiveCatalog


def _enum(enum: object, number: int, field: str) -> str:
    """The full name of an optional enum filter ('' when unset); unknown numbers are refused."""
    if number == 0:
        return ""
    try:
        return enum.Name(number)  # type: ignore[attr-defined]
    except ValueError:
        raise errors.ValidationFailed([errors.FieldViolation(field, "is not a known value")]) from None


class CatalogApi(pb_grpc.CatalogServiceServicer):
    def __init__(self, pool: asyncpg.Pool, catalog: LiveCatalog, schema: str) -> None:
        self.pool = pool
        self.catalog = catalog
        self.schema = schema

    async def UpsertProduct(self, request: pb.UpsertProductRequest, context: grpc.aio.ServicerContext
                            ) -> pb.UpsertProductResponse:
        await apikeys.check_caller(self.pool, request.product.institution_id, context)
        product = handlers.prepare(request.product)
        async with self.pool.acquire() as conn, conn.transaction():
            stored, changed = await handlers.upsert_product(conn, product, schema=self.schema)
        if changed:
            self.catalog.apply(stored)  # this worker sees its own write at once; others via the topic
        return pb.UpsertProductResponse(product=stored)

    async def RetireProduct(self, request: pb.RetireProductRequest, context: grpc.aio.ServicerContext
                            ) -> pb.RetireProductResponse:
        await apikeys.check_caller(self.pool, request.institution_id, context)
        async with self.pool.acquire() as conn, conn.transaction():
            stored, changed = await handlers.retire_product(conn, request.product_id, request.institution_id,
                                                            schema=self.schema)
        if changed:
            self.catalog.apply(stored)
        return pb.RetireProductResponse(product=stored)

    async def GetProduct(self, request: pb.GetProductRequest, context: grpc.aio.ServicerContext
                         ) -> pb.GetProductResponse:
        if not request.product_id:
            raise errors.ValidationFailed([errors.FieldViolation("product_id", "is required")])
        row = await store.product_row(self.pool, request.product_id)
        if row is None:
            raise errors.NotFound(f"product {request.product_id} not found")
        return pb.GetProductResponse(product=pb.Product.FromString(row.product))

    async def ListProducts(self, request: pb.ListProductsRequest, context: grpc.aio.ServicerContext
                           ) -> pb.ListProductsResponse:
        page = Page.of(request.page_size, request.page_token)
        filters = store.ProductFilter(
            institution_id=request.institution_id,
            loan_category=_enum(finance.LoanCategory, request.loan_category, "loan_category"),
            status=_enum(pb.ProductStatus, request.status, "status"),
            programme_tag=request.programme_tag,
            industry=_enum(finance.KeyIndustry, request.industry, "industry"),
        )
        rows = await store.list_products(self.pool, filters, page)
        return pb.ListProductsResponse(
            products=[pb.Product.FromString(r) for r in rows[: page.size]],
            next_page_token=page.next_token(len(rows)),
        )


class SubscriptionApi(dock_grpc.SubscriptionServiceServicer):
    def __init__(self, docking: handlers.Docking) -> None:
        self.docking = docking

    async def RegisterSubscription(self, request: dock.RegisterSubscriptionRequest,
                                   context: grpc.aio.ServicerContext) -> dock.RegisterSubscriptionResponse:
        await apikeys.check_caller(self.docking.pool, request.subscription.institution_id, context)
        return dock.RegisterSubscriptionResponse(subscription=await self.docking.register(request.subscription))

    async def ListSubscriptions(self, request: dock.ListSubscriptionsRequest,
                                context: grpc.aio.ServicerContext) -> dock.ListSubscriptionsResponse:
        if not request.institution_id:
            raise errors.ValidationFailed([errors.FieldViolation("institution_id", "is required")])
        await apikeys.check_caller(self.docking.pool, request.institution_id, context)
        return dock.ListSubscriptionsResponse(subscriptions=await self.docking.list(request.institution_id))

    async def DeleteSubscription(self, request: dock.DeleteSubscriptionRequest,
                                 context: grpc.aio.ServicerContext) -> dock.DeleteSubscriptionResponse:
        await apikeys.check_caller(self.docking.pool, request.institution_id, context)
        await self.docking.delete(request.subscription_id, request.institution_id)
        return dock.DeleteSubscriptionResponse()


class DemandPoolApi(dock_grpc.DemandPoolServiceServicer):
    def __init__(self, docking: handlers.Docking) -> None:
        self.docking = docking

    async def ListOpenDemands(self, request: dock.ListOpenDemandsRequest,
                              context: grpc.aio.ServicerContext) -> dock.ListOpenDemandsResponse:
        if not request.institution_id:
            raise errors.ValidationFailed([errors.FieldViolation("institution_id", "is required")])
        await apikeys.check_caller(self.docking.pool, request.institution_id, context)
        page = Page.of(request.page_size, "")
        return dock.ListOpenDemandsResponse(demands=await self.docking.open_pool(request.institution_id, page.size))

    async def ClaimDemand(self, request: dock.ClaimDemandRequest,
                          context: grpc.aio.ServicerContext) -> dock.ClaimDemandResponse:
        await apikeys.check_caller(self.docking.pool, request.institution_id, context)
        lead = await self.docking.claim(request.institution_id, request.demand_id, request.product_id)
        return dock.ClaimDemandResponse(lead=lead)
