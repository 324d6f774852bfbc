"""Composition root of the roadshow service."""

from __future__ import annotations

from pathlib import Path

from finmesh.roadshow.v1 import roadshow_pb2 as pb
from finmesh.roadshow.v1 import roadshow_pb2_grpc as pb_grpc
from meshkit import codec, topics
from meshkit.clock import Clock
from meshkit.kafka import ensure_topics
from meshkit.lifecycle import Runtime
from services.demand import reference
from services.roadshow import consumers
from services.roadshow.api import RoadshowApi
from services.roadshow.service import Roadshows

SCHEMA = "roadshow"
MIGRATIONS = Path(__file__).parent / "migrations"
# The topics this service reads or writes (created if missing, with their dead-letter topics, so it can
# start on a bare broker).
TOPICS = (topics.ENTERPRISES_CHANGED, topics.INSTITUTIONS_CHANGED, topics.DEMAND_STATUS_CHANGED,
          topics.LEAD_STATUS_CHANGED, topics.ROADSHOW_NOTICES, topics.ROADSHOW_INTENTS)
SCHEDULE_INTERVAL_SECONDS = 30.0


async def build(rt: Runtime, *, clock: Clock = codec.now,
                schedule_interval_seconds: float = SCHEDULE_INTERVAL_SECONDS) -> None:
    """``clock`` and the schedule's interval are injectable so that tests can move time."""
    await ensure_topics(rt.settings.kafka_bootstrap_servers, TOPICS)
    roadshows = Roadshows(rt.pool, rt.metrics, reference.load(), schema=SCHEMA, clock=clock)
    rt.grpc.add(pb_grpc.add_RoadshowServiceServicer_to_server, RoadshowApi(roadshows, rt.operators),
                pb.DESCRIPTOR.services_by_name["RoadshowService"])
    rt.consume(topics.ENTERPRISES_CHANGED, consumers.enterprise_changed(roadshows))
    rt.consume(topics.INSTITUTIONS_CHANGED, consumers.institution_changed(roadshows))
    rt.consume(topics.DEMAND_STATUS_CHANGED, consumers.demand_status_changed(roadshows))
    rt.consume(topics.LEAD_STATUS_CHANGED, consumers.lead_status_changed(roadshows))
    rt.task(lambda: roadshows.run_schedule(schedule_interval_seconds))
