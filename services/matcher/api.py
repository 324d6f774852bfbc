"""gRPC: CatalogService (institutions' systems keep their products here)."""

from __future__ import annotations

import asyncpg
import grpc

from finmesh.catalog.v1 import product_pb2 as pb
from finmesh.catalog.v1 import product_pb2_grpc as pb_grpc
from meshkit import errors
from meshkit.paging import Page
from services.matcher import handlers, store
from services.matcher.view import LiveCatalog


class CatalogApi(pb_grpc.CatalogServiceServicer):
    def __init__(self, pool: asyncpg.Pool, catalog: LiveCatalog, schema: str) -> None:
        self.pool = pool
        self.catalog = catalog
        self.schema = schema

    async def UpsertProduct(self, request: pb.UpsertProductRequest, context: grpc.aio.ServicerContext
                            ) -> pb.UpsertProductResponse:
        product = handlers.prepare(request.product)
        async with self.pool.acquire() as conn, conn.transaction():
            stored, changed = await handlers.upsert_product(conn, product, schema=self.schema)
        if changed:
            self.catalog.apply(stored)  # this worker sees its own write at once; others via the topic
        return pb.UpsertProductResponse(product=stored)

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
        rows = await store.list_products(self.pool, request.institution_id, page)
        return pb.ListProductsResponse(
            products=[pb.Product.FromString(r) for r in rows[: page.size]],
            next_page_token=page.next_token(len(rows)),
        )
