"""Composition root of the notifier service."""

from __future__ import annotations

from pathlib import Path

from finmesh.notification.v1 import clock_pb2 as cpb
from finmesh.notification.v1 import clock_pb2_grpc as cpb_grpc
from finmesh.notification.v1 import delivery_pb2 as dlv
from finmesh.notification.v1 import delivery_pb2_grpc as dlv_grpc
from finmesh.notification.v1 import notification_pb2 as pb
from finmesh.notification.v1 import notification_pb2_grpc as pb_grpc
from meshkit import codec, topics
from meshkit.clock import Clock
from meshkit.kafka import ensure_topics
from meshkit.lifecycle import Runtime
from services.notifier import consumers
from services.notifier.api import ContactClockApi, DeliveryApi, NotificationApi
from services.notifier.delivery import DeliveryWorker
from services.notifier.domain import RetryPolicy
from services.notifier.service import Notifier

SCHEMA = "notifier"
MIGRATIONS = Path(__file__).parent / "migrations"
TOPICS = (topics.DEMANDS_MATCHED, topics.DEMAND_STATUS_CHANGED, topics.LEAD_STATUS_CHANGED,
          topics.ROADSHOW_NOTICES, topics.INSTITUTIONS_CHANGED, topics.LEAD_SLA_BREACHED, topics.RECEIVABLES_CHANGED,
          topics.LOAN_RENEWALS_DUE, topics.CONTACT_POLICIES_CHANGED)
CLOCK_TICK_SECONDS = 1.0


async def build(rt: Runtime, *, clock: Clock = codec.now, retry: RetryPolicy | None = None,
                clock_tick_seconds: float = CLOCK_TICK_SECONDS) -> None:
    """``clock`` and ``retry`` are injectable (tests move time, and retry fast)."""
    await ensure_topics(rt.settings.kafka_bootstrap_servers, TOPICS)
    notifier = Notifier(rt.pool, rt.metrics, clock, schema=SCHEMA)
    await notifier.announce_policies()
    name = rt.service
    rt.consume(topics.DEMANDS_MATCHED, consumers.demand_matched(notifier, f"{name}.demand-matched"),
               batch_handler=consumers.demand_matched_batch(notifier, f"{name}.demand-matched"), max_records=500)
    rt.consume(topics.DEMAND_STATUS_CHANGED, consumers.demand_status_changed(notifier, f"{name}.demand-status"))
    rt.consume(topics.LEAD_STATUS_CHANGED, consumers.lead_status_changed(notifier, f"{name}.lead-status"))
    rt.consume(topics.ROADSHOW_NOTICES, consumers.roadshow_notice(notifier, f"{name}.roadshow-notice"))
    rt.consume(topics.RECEIVABLES_CHANGED, consumers.receivable_changed(notifier, f"{name}.receivable-changed"))
    rt.consume(topics.LOAN_RENEWALS_DUE, consumers.loan_renewal_due(notifier, f"{name}.loan-renewal-due"))
    rt.consume(topics.INSTITUTIONS_CHANGED, consumers.institution_changed(notifier))
    worker = DeliveryWorker(rt.pool, rt.metrics, notifier.clock, notifier.deliveries_due,
                            policy=retry or RetryPolicy())
    rt.task(worker.run)
    rt.task(lambda: notifier.run_clocks(clock_tick_seconds))
    rt.grpc.add(pb_grpc.add_NotificationServiceServicer_to_server, NotificationApi(rt.pool, notifier),
                pb.DESCRIPTOR.services_by_name["NotificationService"])
    rt.grpc.add(dlv_grpc.add_DeliveryServiceServicer_to_server, DeliveryApi(notifier),
                dlv.DESCRIPTOR.services_by_name["DeliveryService"])
    rt.grpc.add(cpb_grpc.add_ContactClockServiceServicer_to_server, ContactClockApi(notifier),
                cpb.DESCRIPTOR.services_by_name["ContactClockService"])
