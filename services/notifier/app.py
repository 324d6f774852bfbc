"""Composition root of the notifier service."""

from __future__ import annotations

from pathlib import Path

from finmesh.notification.v1 import notification_pb2 as pb
from finmesh.notification.v1 import notification_pb2_grpc as pb_grpc
from meshkit.lifecycle import Runtime
from services.notifier.api import NotificationApi
from services.notifier.consumers import DemandMatchedConsumer

SCHEMA = "notifier"
MIGRATIONS = Path(__file__).parent / "migrations"


async def build(rt: Runtime) -> None:
    matched = DemandMatchedConsumer(rt.pool, rt.metrics, name=f"{rt.service}.demand-matched")
    rt.consume(matched.spec, matched)
    rt.grpc.add(pb_grpc.add_NotificationServiceServicer_to_server, NotificationApi(rt.pool),
                pb.DESCRIPTOR.services_by_name["NotificationService"])
