"""Prometheus metrics, declared once for the whole mesh.

Every service exposes ``/metrics`` on its own port (``METRICS_PORT``). Names are
``finmesh_<thing>_<unit>``; the ``service`` label tells the services apart. Tests and
benchmarks may build their own :class:`Metrics` on a private registry.
"""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The standard request, message and outbox metrics, plus the mesh's domain metrics."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry()
        self.registry = r
        # gRPC requests
        self.grpc_requests = Counter(
            "finmesh_grpc_requests_total", "gRPC requests handled.", ["service", "method", "code"], registry=r
        )
        self.grpc_duration = Histogram(
            "finmesh_grpc_request_duration_seconds", "gRPC request handling time.", ["service", "method"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        # Kafka messages
        self.messages_consumed = Counter(
            "finmesh_messages_consumed_total", "Records consumed, by outcome (processed, dead_lettered).",
            ["service", "topic", "outcome"], registry=r,
        )
        self.message_duration = Histogram(
            "finmesh_message_handle_duration_seconds", "Time to handle one consumed record.", ["service", "topic"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.record_age = Histogram(
            "finmesh_consumer_record_age_seconds",
            "How old a record was when its consumer began to handle it (now minus the record's Kafka timestamp): "
            "time spent on the broker and waiting behind the consumer's work.", ["service", "topic"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.message_retries = Counter(
            "finmesh_message_retries_total", "Handler attempts that failed and were retried.", ["service", "topic"],
            registry=r,
        )
        self.consumer_restarts = Counter(
            "finmesh_consumer_restarts_total", "Consumers restarted after stalling or failing.", ["service", "topic"],
            registry=r,
        )
        self.messages_produced = Counter(
            "finmesh_messages_produced_total", "Records acknowledged by the broker.", ["service", "topic"], registry=r
        )
        # Outbox
        self.outbox_pending = Gauge(
            "finmesh_outbox_pending", "Outbox rows not yet published (as of the relay's last pass).", ["service"],
            registry=r,
        )
        self.outbox_published = Counter(
            "finmesh_outbox_published_total", "Outbox rows published.", ["service"], registry=r
        )
        self.outbox_lag = Histogram(
            "finmesh_outbox_publish_lag_seconds", "Time from an event's commit to the broker's acknowledgement.",
            ["service"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.outbox_failures = Counter(
            "finmesh_outbox_publish_failures_total", "Relay passes that failed and will be retried.", ["service"],
            registry=r,
        )
        # Domain
        self.demands_accepted = Counter(
            "finmesh_demands_accepted_total", "Demands accepted, by channel.", ["channel"], registry=r
        )
        self.demands_rejected = Counter(
            "finmesh_demands_rejected_total", "Demands refused as invalid, by channel.", ["channel"], registry=r
        )
        self.leads_issued = Counter(
            "finmesh_leads_issued_total", "Leads issued to institutions.", ["origin"], registry=r
        )
        self.demands_unmatched = Counter(
            "finmesh_demands_no_match_total", "Demands for which no product was eligible.", registry=r
        )
        self.receivable_changes = Counter(
            "finmesh_receivable_changes_total", "Changes of registered receivables and payment prompts, by kind "
            "(uploaded, blocked_duplicate, confirmed, financed, payment_due, overdue, settled, ...).", ["change"],
            registry=r,
        )
        self.subsidy_grants = Counter(
            "finmesh_subsidy_grants_total", "Interest subsidy grants by what happened: reserved (a loan approved), "
            "utilised (disbursed), released (settled, or lapsed undisbursed), none (no fund fits or has room), "
            "disbursed_after_lapse (a loan disbursed after its reservation lapsed: no subsidy).",
            ["outcome"], registry=r,
        )
        self.demand_to_lead = Histogram(
            "finmesh_demand_to_leads_seconds", "Time from a demand's acceptance to its leads being stored.",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.catalog_products = Gauge(
            "finmesh_catalog_products", "Active products in the matcher's in-memory catalog.", registry=r
        )
        self.notifications = Counter(
            "finmesh_notifications_total", "Notifications recorded, by recipient kind and kind.",
            ["recipient_kind", "kind"], registry=r,
        )
        # Notifier: duplicates suppressed, webhook deliveries, contact clocks
        self.notifications_duplicate = Counter(
            "finmesh_notifications_duplicate_total", "Notifications not recorded again (a replayed event), by kind.",
            ["kind"], registry=r,
        )
        self.deliveries = Counter(
            "finmesh_webhook_deliveries_total",
            "Webhook delivery outcomes, by kind (delivered, retry, dead) and notification kind.",
            ["outcome", "kind"], registry=r,
        )
        self.delivery_latency = Histogram(
            "finmesh_webhook_delivery_latency_seconds",
            "Time from a delivery's creation to the webhook's 2xx answer (retries included).",
            buckets=LATENCY_BUCKETS + (30.0, 60.0, 300.0, 1800.0), registry=r,
        )
        self.webhook_failures = Counter(
            "finmesh_webhook_failures_total", "Failed webhook attempts, by reason (http_<status>, timeout, error).",
            ["reason"], registry=r,
        )
        self.clocks_open = Gauge("finmesh_lead_clocks_open", "Contact clocks running.", registry=r)
        self.clock_reminders = Counter(
            "finmesh_lead_clock_reminders_total", "Reminders sent at two-thirds of the contact SLA.",
            ["institution"], registry=r,
        )
        self.clock_breaches = Counter(
            "finmesh_lead_sla_breaches_total", "Leads whose contact deadline passed (escalated, re-routed).",
            ["institution"], registry=r,
        )
        self.time_to_first_contact = Histogram(
            "finmesh_lead_time_to_first_contact_seconds", "Time from a lead's delivery to its first contact.",
            ["institution"], buckets=tuple(h * 3600.0 for h in (1, 4, 8, 24, 48, 72, 96, 168, 336)), registry=r,
        )
        self.ready = Gauge("finmesh_ready", "1 when the service reports SERVING.", ["service"], registry=r)
        # Platform statistics (all time), refreshed periodically by the demand service
        self.platform_enterprises = Gauge(
            "finmesh_platform_enterprises_registered", "Enterprises registered.", registry=r
        )
        self.platform_institutions = Gauge(
            "finmesh_platform_institutions_registered", "Financial institutions registered.", registry=r
        )
        self.platform_demands = Gauge("finmesh_platform_demands", "Financing demands accepted.", registry=r)
        self.platform_amount_requested = Gauge(
            "finmesh_platform_amount_requested_fen", "Amount asked for by the demands accepted.", registry=r
        )
        self.platform_leads = Gauge("finmesh_platform_leads_issued", "Leads issued to institutions.", registry=r)
        self.platform_take_up = Gauge(
            "finmesh_platform_take_up_bps", "Share of the leads issued that were contacted (basis points).", registry=r
        )
        self.platform_time_to_contact = Gauge(
            "finmesh_platform_time_to_contact_seconds", "Time from a lead's issue to its first contact (avg, p90).",
            ["stat"], registry=r,
        )
        self.platform_approvals = Gauge("finmesh_platform_approvals", "Leads approved by institutions.", registry=r)
        self.platform_loans_disbursed = Gauge(
            "finmesh_platform_loans_disbursed", "Loans disbursed through leads.", registry=r
        )
        self.platform_amount_disbursed = Gauge(
            "finmesh_platform_amount_disbursed_fen", "Amount disbursed through leads.", registry=r
        )
        self.platform_medium_long_term_share = Gauge(
            "finmesh_platform_medium_long_term_share_bps",
            "Share of the amount disbursed on terms over 12 months (basis points).", registry=r,
        )
        self.platform_first_time_borrowers = Gauge(
            "finmesh_platform_first_time_borrowers", "Enterprises that had never borrowed, with a loan disbursed.",
            registry=r,
        )
        self.platform_yoy_growth = Gauge(
            "finmesh_platform_yoy_growth_bps", "Growth against a year earlier (basis points; NaN: nothing then).",
            ["figure"], registry=r,
        )

        # Roadshows (all time), refreshed periodically by the roadshow service
        self.roadshow_applicants = Gauge(
            "finmesh_roadshow_applicants", "Roadshow applications not refused.", registry=r
        )
        self.roadshow_presenters = Gauge("finmesh_roadshow_presenters", "Roadshow presenters selected.", registry=r)
        self.roadshow_investors = Gauge(
            "finmesh_roadshow_investors", "Investor registrations to attend roadshows.", registry=r
        )
        self.roadshow_intents = Gauge("finmesh_roadshow_intents", "Investors' intents recorded at roadshows.",
                                      registry=r)
        self.roadshow_intended_amount = Gauge(
            "finmesh_roadshow_intended_amount_fen", "Amount of the intents recorded at roadshows.", registry=r
        )
        self.roadshow_approved_amount = Gauge(
            "finmesh_roadshow_approved_amount_fen", "Amount offered on the leads made of roadshow intents.",
            registry=r,
        )
        self.roadshow_granted_amount = Gauge(
            "finmesh_roadshow_granted_amount_fen", "Amount disbursed on the leads made of roadshow intents.",
            registry=r,
        )
        self.roadshow_schedule_passes = Counter(
            "finmesh_roadshow_schedule_passes", "Passes of the roadshow schedule completed (plan, advance, invite).",
            registry=r,
        )


def serve(metrics: Metrics, port: int, host: str = "127.0.0.1") -> tuple[int, WSGIServer]:
    """Expose ``/metrics`` over HTTP; returns the bound port and the server (to shut down)."""
    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    return server.server_address[1], server
