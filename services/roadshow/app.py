"""Composition root of the roadshow service."""

from __future__ import annotations

from pathlib import Path

from finmesh.roadshow.v1 import roadshow_pb2 as pb
from finmesh.roadshow.v1 import roadshow_pb2_grpc as pb_grpc
from meshkit.lifecycle import Runtime
from services.roadshow.api import RoadshowApi

SCHEMA = "roadshow"
MIGRATIONS = Path(__file__).parent / "migrations"


async def build(rt: Runtime) -> None:
    rt.grpc.add(pb_grpc.add_RoadshowServiceServicer_to_server, RoadshowApi(rt.pool),
                pb.DESCRIPTOR.services_by_name["RoadshowService"])
