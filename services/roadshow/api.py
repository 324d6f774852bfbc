"""gRPC: RoadshowService."""

from __future__ import annotations

import asyncpg
import grpc

from finmesh.roadshow.v1 import roadshow_pb2 as pb
from finmesh.roadshow.v1 import roadshow_pb2_grpc as pb_grpc
from meshkit.paging import Page


class RoadshowApi(pb_grpc.RoadshowServiceServicer):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def ListRoadshows(self, request: pb.ListRoadshowsRequest, context: grpc.aio.ServicerContext
                            ) -> pb.ListRoadshowsResponse:
        page = Page.of(request.page_size, request.page_token)
        rows = await self.pool.fetch(
            "SELECT roadshow_id, month, theme, theme_industry, theme_zone, city, held_at, capacity, status"
            " FROM roadshows ORDER BY month DESC, roadshow_id LIMIT $1 OFFSET $2",
            page.size + 1, page.offset,
        )
        out = pb.ListRoadshowsResponse(next_page_token=page.next_token(len(rows)))
        for r in rows[: page.size]:
            rs = out.roadshows.add(
                roadshow_id=r["roadshow_id"], month=r["month"], theme=r["theme"], theme_industry=r["theme_industry"],
                theme_zone=r["theme_zone"], city=r["city"], capacity=r["capacity"], status=r["status"],
            )
            if r["held_at"] is not None:
                rs.held_at.FromDatetime(r["held_at"])
        return out
