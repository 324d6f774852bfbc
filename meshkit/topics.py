"""The topic registry: every Kafka topic of the mesh, declared once.

Producers, consumers, topic creation, the README's topic table and the tests all take
topics from here; no topic name is written anywhere else. A topic carries one protobuf
message type; its record key is read from the message by ``key_field`` (a dotted path).

Run ``python -m meshkit.topics create`` to create every topic on the broker named by
``KAFKA_BOOTSTRAP_SERVERS``, ``markdown`` to print the README table, ``write-readme
README.md`` to refresh it, or ``check-readme README.md`` to verify it is current.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from functools import lru_cache

from google.protobuf.message import Message

from finmesh.catalog.v1 import events_pb2 as catalog_events
from finmesh.demand.v1 import events_pb2 as demand_events
from finmesh.enterprise.v1 import events_pb2 as enterprise_events
from finmesh.institution.v1 import events_pb2 as institution_events
from finmesh.lead.v1 import events_pb2 as lead_events
from finmesh.loan.v1 import events_pb2 as loan_events
from finmesh.matching.v1 import events_pb2 as matching_events
from finmesh.notification.v1 import events_pb2 as notification_events
from finmesh.ops.v1 import deadletters_pb2 as ops_pb
from finmesh.receivable.v1 import events_pb2 as receivable_events
from finmesh.roadshow.v1 import events_pb2 as roadshow_events
from finmesh.subsidy.v1 import events_pb2 as subsidy_events

DAY_MS = 24 * 3600 * 1000
MAX_MESSAGE_BYTES = 1024 * 1024  # our own limit for any payload (1 MiB)
# Topics accept somewhat larger records so an oversized payload reaches our consumer,
# which dead-letters it with a reason instead of the producer silently failing.
BROKER_MAX_MESSAGE_BYTES = 2 * 1024 * 1024

# How many bytes a partition's log grows between two entries of its offset and time indexes (the
# broker's default is 4 KiB). The indexes are files the broker maps into memory, and on this
# machine's ext4 the first write to each of their pages cost the broker a major page fault, taken
# in a request handler thread: with thousands of lead topics, each receiving a lead
# now and then, most leads' appends wrote a new index entry. Measured (3,000 one-partition topics,
# 1.8 KB records at 5,000/s): 0.30 ms of broker CPU per record and about 4,000 major faults in 30 s
# with the default, 0.045 ms and none with 1 MiB. A sparser index only means a fetch from an
# arbitrary offset reads up to 1 MiB of the log to find its place.
INDEX_INTERVAL_BYTES = 1024 * 1024


MAX_REPLICAS = 3  # copies of each partition on a cluster of three brokers or more


def replication_factor(brokers: int) -> int:
    """Copies of each partition a topic gets on a cluster of ``brokers``: every broker up to
    ``MAX_REPLICAS`` (one on the embedded single node; with ``acks=all`` and the brokers'
    ``min.insync.replicas=2``, a three-broker cluster loses no acknowledged record to one failure)."""
    return max(1, min(MAX_REPLICAS, brokers))


@dataclass(frozen=True)
class TopicSpec:
    """One topic: its name, payload, key, who writes it, who reads it, and its shape."""

    name: str
    message: type[Message] | None  # None: raw bytes (dead-letter topics)
    key_field: str
    owner: str
    consumers: tuple[str, ...]
    partitions: int
    description: str
    compacted: bool = False
    retention_ms: int = 7 * DAY_MS
    dead_letter: TopicSpec | None = field(default=None, compare=False)

    @property
    def is_template(self) -> bool:
        return "{" in self.name

    @property
    def event_type(self) -> str:
        return self.message.DESCRIPTOR.full_name if self.message else "bytes"

    def configs(self) -> dict[str, str]:
        """Broker-side topic configs."""
        cfg = {
            "retention.ms": str(self.retention_ms),
            "max.message.bytes": str(BROKER_MAX_MESSAGE_BYTES),
            "index.interval.bytes": str(INDEX_INTERVAL_BYTES),
        }
        if self.compacted:
            cfg["cleanup.policy"] = "compact"
            cfg["min.compaction.lag.ms"] = "60000"
        return cfg

    def key_of(self, message: Message) -> bytes:
        """The record key: the value at ``key_field`` in ``message``."""
        value: object = message
        for part in self.key_field.split("."):
            value = getattr(value, part)
        return str(value).encode()


def _dlq(of: str, owner: str) -> TopicSpec:
    return TopicSpec(
        name=f"{of}.dlq",
        message=None,
        key_field="",
        owner=owner,
        consumers=("ops",),
        partitions=1,
        retention_ms=30 * DAY_MS,
        description=f"Records of `{of}` that could not be used; headers say why and where from.",
    )


PORTAL_DEMANDS_DLQ = _dlq("portal.demand-submitted.v1", owner="demand")
PORTAL_DEMANDS = TopicSpec(
    name="portal.demand-submitted.v1",
    message=demand_events.PortalDemandSubmitted,
    key_field="demand.enterprise_uscc",
    owner="upstream portals",
    consumers=("demand",),
    partitions=6,
    description="Financing demands filed on national and local portals and service windows.",
    dead_letter=PORTAL_DEMANDS_DLQ,
)
DEMANDS_ACCEPTED_DLQ = _dlq("demand.demand-accepted.v1", owner="matcher, notifier")
DEMANDS_ACCEPTED = TopicSpec(
    name="demand.demand-accepted.v1",
    message=demand_events.DemandAccepted,
    key_field="demand.demand_id",
    owner="demand",
    consumers=("matcher", "notifier"),
    partitions=6,
    description="A demand validated and stored, with the enterprise as it was; matching starts here.",
    dead_letter=DEMANDS_ACCEPTED_DLQ,
)
PRODUCTS_PUBLISHED_DLQ = _dlq("institution.product-published.v1", owner="matcher")
PRODUCTS_PUBLISHED = TopicSpec(
    name="institution.product-published.v1",
    message=catalog_events.ProductPublished,
    key_field="product.product_id",
    owner="institutions' systems",
    consumers=("matcher",),
    partitions=3,
    description="Products published by institutions' systems (the inbound catalog topic).",
    dead_letter=PRODUCTS_PUBLISHED_DLQ,
)
CATALOG_CHANGED = TopicSpec(
    name="matcher.catalog-changed.v1",
    message=catalog_events.ProductChanged,
    key_field="product.product_id",
    owner="matcher",
    consumers=("matcher",),
    partitions=3,
    compacted=True,
    retention_ms=-1,
    description="Every catalog change as stored, latest version per product (compacted).",
)
DEMANDS_MATCHED_DLQ = _dlq("matcher.demand-matched.v1", owner="demand, notifier")
DEMANDS_MATCHED = TopicSpec(
    name="matcher.demand-matched.v1",
    message=matching_events.DemandMatched,
    key_field="demand_id",
    owner="matcher",
    consumers=("demand", "notifier"),
    partitions=6,
    description="The outcome of matching a demand: its leads, or why there are none.",
    dead_letter=DEMANDS_MATCHED_DLQ,
)
LEAD_SLA_BREACHED_DLQ = _dlq("notifier.lead-sla-breached.v1", owner="matcher, demand")
LEAD_SLA_BREACHED = TopicSpec(
    name="notifier.lead-sla-breached.v1",
    message=matching_events.LeadSlaBreached,
    key_field="demand_id",
    owner="notifier",
    consumers=("matcher", "demand"),
    partitions=6,
    description="A lead's contact clock ran out; the matcher re-routes the demand to its next-best institution "
                "(given the enterprise's consent_to_share).",
    dead_letter=LEAD_SLA_BREACHED_DLQ,
)
CONTACT_POLICIES_CHANGED_DLQ = _dlq("notifier.contact-policy-changed.v1", owner="matcher, demand")
CONTACT_POLICIES_CHANGED = TopicSpec(
    name="notifier.contact-policy-changed.v1",
    message=notification_events.ContactPolicyChanged,
    key_field="policy.institution_id",
    owner="notifier",
    consumers=("matcher", "demand"),
    partitions=3,
    retention_ms=-1,
    description="Every contact policy as set, in order per institution (kept for good: a new reader replays "
                "them all); the matcher and the demand service date the leads they make by them.",
    dead_letter=CONTACT_POLICIES_CHANGED_DLQ,
)
LEADS = TopicSpec(
    name="leads.{institution_id}.v1",
    message=matching_events.LeadIssued,
    key_field="lead.lead_id",
    owner="matcher",
    consumers=("the institution's systems",),
    # One partition: an institution's leads are a few per second at most, and one partition gives
    # them a total order. Measured on Kafka 4.4 (`bench/results/matcher.json`): appending to 9,000
    # lead partitions (3,000 institutions x 3) cost the broker over 1 ms of CPU per lead, to 3,000
    # partitions about 0.15 ms.
    partitions=1,
    description="One topic per institution: its leads, with the demand data it needs to work them.",
)
ENTERPRISES_CHANGED_DLQ = _dlq("demand.enterprise-changed.v1", owner="roadshow")
ENTERPRISES_CHANGED = TopicSpec(
    name="demand.enterprise-changed.v1",
    message=enterprise_events.EnterpriseChanged,
    key_field="enterprise.uscc",
    owner="demand",
    consumers=("roadshow", "read models"),
    partitions=3,
    compacted=True,
    retention_ms=-1,
    description="Every enterprise as registered or changed, latest version per USCC (compacted).",
    dead_letter=ENTERPRISES_CHANGED_DLQ,
)
INSTITUTIONS_CHANGED_DLQ = _dlq("demand.institution-changed.v1", owner="matcher, notifier, roadshow")
INSTITUTIONS_CHANGED = TopicSpec(
    name="demand.institution-changed.v1",
    message=institution_events.InstitutionChanged,
    key_field="institution.institution_id",
    owner="demand",
    consumers=("matcher", "notifier", "roadshow", "read models"),
    partitions=3,
    compacted=True,
    retention_ms=-1,
    description="Every institution as registered or changed (or its API key issued or rotated), latest version "
                "per institution id (compacted); the digest of its API key authenticates its calls everywhere, "
                "and its contact SLA sets when its leads are due for contact.",
    dead_letter=INSTITUTIONS_CHANGED_DLQ,
)
DEMAND_STATUS_CHANGED_DLQ = _dlq("demand.demand-status-changed.v1", owner="matcher, notifier, roadshow")
DEMAND_STATUS_CHANGED = TopicSpec(
    name="demand.demand-status-changed.v1",
    message=demand_events.DemandStatusChanged,
    key_field="demand_id",
    owner="demand",
    consumers=("matcher", "notifier", "roadshow", "read models"),
    partitions=6,
    description="Every status change of every demand, with time, actor and reason, in order per demand.",
    dead_letter=DEMAND_STATUS_CHANGED_DLQ,
)
LEAD_STATUS_CHANGED_DLQ = _dlq("demand.lead-status-changed.v1", owner="matcher, notifier, roadshow, demand")
LEAD_STATUS_CHANGED = TopicSpec(
    name="demand.lead-status-changed.v1",
    message=lead_events.LeadStatusChanged,
    key_field="lead.demand_id",
    owner="demand",
    consumers=("matcher", "notifier", "roadshow", "demand (subsidies, loan book)", "read models"),
    partitions=6,
    description="Every status change of every lead with its outcome (offer, disbursement, decline); "
                "keyed by demand id, so a demand's leads stay in order.",
    dead_letter=LEAD_STATUS_CHANGED_DLQ,
)
LEAD_OUTCOMES_DLQ = _dlq("institution.lead-outcome-reported.v1", owner="demand")
LEAD_OUTCOMES = TopicSpec(
    name="institution.lead-outcome-reported.v1",
    message=lead_events.LeadOutcomeReported,
    key_field="lead_id",
    owner="institutions' systems",
    consumers=("demand",),
    partitions=6,
    description="Outcomes institutions report on their own leads (contacted, under review, approved, "
                "disbursed, declined); the inbound twin of LeadService.ReportLeadOutcome.",
    dead_letter=LEAD_OUTCOMES_DLQ,
)
ROADSHOW_NOTICES_DLQ = _dlq("roadshow.notice-issued.v1", owner="notifier")
ROADSHOW_NOTICES = TopicSpec(
    name="roadshow.notice-issued.v1",
    message=roadshow_events.RoadshowNotice,
    key_field="recipient_id",
    owner="roadshow",
    consumers=("notifier",),
    partitions=3,
    description="What roadshow participants are told: invitations, applications, selection, intents.",
    dead_letter=ROADSHOW_NOTICES_DLQ,
)
ROADSHOW_INTENTS_DLQ = _dlq("roadshow.intent-recorded.v1", owner="demand")
ROADSHOW_INTENTS = TopicSpec(
    name="roadshow.intent-recorded.v1",
    message=roadshow_events.IntentRecorded,
    key_field="enterprise_uscc",
    owner="roadshow",
    consumers=("demand",),
    partitions=3,
    description="Investors' intents recorded at roadshows; each becomes a lead for the investor (origin ROADSHOW).",
    dead_letter=ROADSHOW_INTENTS_DLQ,
)
RECEIVABLES_CHANGED_DLQ = _dlq("demand.receivable-changed.v1", owner="notifier")
RECEIVABLES_CHANGED = TopicSpec(
    name="demand.receivable-changed.v1",
    message=receivable_events.ReceivableChanged,
    key_field="receivable.receivable_id",
    owner="demand",
    consumers=("notifier", "core enterprises' and financiers' systems"),
    partitions=3,
    description="Every change of a registered receivable (uploaded, confirmed, disputed, blocked as a duplicate, "
                "financed and its payee changed, settled), the payment prompts at 7 days, 1 day and 0 days before "
                "its due date, and overdue ones, in order per receivable.",
    dead_letter=RECEIVABLES_CHANGED_DLQ,
)

SUBSIDY_GRANTS_CHANGED = TopicSpec(
    name="demand.subsidy-grant-changed.v1",
    message=subsidy_events.GrantChanged,
    key_field="grant.enterprise_uscc",
    owner="demand",
    consumers=("subsidy funds' and enterprises' systems",),
    partitions=3,
    description="Interest subsidies granted without application when a loan is approved, used when it is "
                "disbursed, released for reuse when it is settled; with the fund's quota left.",
)

LOAN_RENEWALS_DUE_DLQ = _dlq("demand.loan-renewal-due.v1", owner="notifier")
LOAN_RENEWALS_DUE = TopicSpec(
    name="demand.loan-renewal-due.v1",
    message=loan_events.LoanRenewalDue,
    key_field="enterprise_uscc",
    owner="demand",
    consumers=("notifier", "lenders' systems"),
    partitions=3,
    description="A disbursed loan matures in 30 days (or fewer, for a shorter loan): time to arrange its renewal. "
                "Once per loan.",
    dead_letter=LOAN_RENEWALS_DUE_DLQ,
)

DEADLETTER_REPLAY_MARKS = TopicSpec(
    name="ops.deadletter-replay-marks.v1",
    message=ops_pb.ReplayMark,
    key_field="mark_id",
    owner="ops (`python -m meshkit.deadletters replay`)",
    consumers=("ops",),
    partitions=1,
    compacted=True,
    retention_ms=-1,
    description="How far each dead-letter topic's partition has been replayed: the next offset to replay, latest "
                "per partition (compacted), so a second replay puts nothing back twice however long after.",
)
REGISTRY: tuple[TopicSpec, ...] = (
    PORTAL_DEMANDS,
    PORTAL_DEMANDS_DLQ,
    DEMANDS_ACCEPTED,
    DEMANDS_ACCEPTED_DLQ,
    PRODUCTS_PUBLISHED,
    PRODUCTS_PUBLISHED_DLQ,
    CATALOG_CHANGED,
    DEMANDS_MATCHED,
    DEMANDS_MATCHED_DLQ,
    LEAD_SLA_BREACHED,
    LEAD_SLA_BREACHED_DLQ,
    CONTACT_POLICIES_CHANGED,
    CONTACT_POLICIES_CHANGED_DLQ,
    LEADS,
    ENTERPRISES_CHANGED,
    ENTERPRISES_CHANGED_DLQ,
    INSTITUTIONS_CHANGED,
    INSTITUTIONS_CHANGED_DLQ,
    DEMAND_STATUS_CHANGED,
    DEMAND_STATUS_CHANGED_DLQ,
    LEAD_STATUS_CHANGED,
    LEAD_STATUS_CHANGED_DLQ,
    LEAD_OUTCOMES,
    LEAD_OUTCOMES_DLQ,
    ROADSHOW_NOTICES,
    ROADSHOW_NOTICES_DLQ,
    ROADSHOW_INTENTS,
    ROADSHOW_INTENTS_DLQ,
    RECEIVABLES_CHANGED,
    RECEIVABLES_CHANGED_DLQ,
    SUBSIDY_GRANTS_CHANGED,
    LOAN_RENEWALS_DUE,
    LOAN_RENEWALS_DUE_DLQ,
    DEADLETTER_REPLAY_MARKS,
)

_INSTITUTION_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")


def valid_institution_id(institution_id: str) -> bool:
    """Institution ids become topic names, so they are restricted to ``[a-z0-9-]``."""
    return bool(_INSTITUTION_ID.match(institution_id))


@lru_cache(maxsize=100_000)
def lead_topic(institution_id: str) -> TopicSpec:
    """The concrete lead topic of one institution (cached: one per lead issued)."""
    if not valid_institution_id(institution_id):
        raise ValueError(f"invalid institution id {institution_id!r}")
    return replace(LEADS, name=LEADS.name.format(institution_id=institution_id))


def metric_topic(name: str) -> str:
    """The topic label of a metric: an institution's lead topic counts under ``LEADS.name``
    (thousands of institutions must not make thousands of series)."""
    if name.startswith(_LEAD_PREFIX) and name.endswith(_LEAD_SUFFIX):
        return LEADS.name
    return name


_LEAD_PREFIX, _LEAD_SUFFIX = LEADS.name.split("{institution_id}")


def spec_for(name: str) -> TopicSpec:
    """The spec of a concrete topic name, including an institution's lead topic."""
    for t in REGISTRY:
        if t.name == name:
            return t
    m = re.fullmatch(LEADS.name.replace(".", r"\.").replace("{institution_id}", "(.+)"), name)
    if m:
        return lead_topic(m.group(1))
    raise KeyError(f"topic {name!r} is not in the registry")


def concrete() -> tuple[TopicSpec, ...]:
    """The topics that exist independently of any institution."""
    return tuple(t for t in REGISTRY if not t.is_template)


def markdown() -> str:
    """The README's topic table."""
    rows = [
        "| topic | message | key | owner | consumers | partitions | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in REGISTRY:
        notes = t.description + (" Compacted." if t.compacted else "")
        rows.append(
            f"| `{t.name}` | `{t.event_type}` | `{t.key_field or '-'}` | {t.owner} | "
            f"{', '.join(t.consumers)} | {t.partitions} | {notes} |"
        )
    return "\n".join(rows)


async def _create(bootstrap: str) -> tuple[list[str], list[str]]:
    """Create the missing topics, then give every registry topic on the cluster (institutions' lead
    topics included) its declared configs: an upgrade in place brings existing topics along."""
    from meshkit.kafka import align_topic_configs, ensure_topics, list_topics

    existing = await list_topics(bootstrap)
    created = await ensure_topics(bootstrap, concrete(), existing=existing)
    specs = []
    for name in sorted(existing):  # the ones just created have their declared configs
        try:
            specs.append(spec_for(name))
        except (KeyError, ValueError):
            continue  # not ours (the broker's own topics, other applications')
    return created, await align_topic_configs(bootstrap, specs, existing=existing)


README_BEGIN = "<!-- topics:begin (generated by `make topics-doc`) -->"
README_END = "<!-- topics:end -->"


def _main(argv: list[str]) -> int:
    import asyncio
    import os
    import sys

    cmd = argv[0] if argv else "list"
    if cmd == "markdown":
        print(markdown())
        return 0
    if cmd == "list":
        for t in REGISTRY:
            print(t.name)
        return 0
    if cmd == "write-readme":
        path = argv[1]
        text = open(path, encoding="utf-8").read()
        head, rest = text.split(README_BEGIN, 1)
        _, tail = rest.split(README_END, 1)
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"{head}{README_BEGIN}\n{markdown()}\n{README_END}{tail}")
        return 0
    if cmd == "check-readme":
        text = open(argv[1], encoding="utf-8").read()
        if markdown() not in text:
            sys.stderr.write(f"{argv[1]}: the topic table is stale; run `make topics-doc` and paste it\n")
            return 1
        return 0
    if cmd == "create":
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if not bootstrap:
            sys.stderr.write("configuration error — set KAFKA_BOOTSTRAP_SERVERS\n")
            return 2
        created, aligned = asyncio.run(_create(bootstrap))
        print(f"topics ready ({len(concrete())} declared, {len(created)} created, "
              f"{len(aligned)} given their declared configs)")
        return 0
    sys.stderr.write("usage: python -m meshkit.topics [list|markdown|write-readme FILE|check-readme FILE|create]\n")
    return 2


if __name__ == "__main__":
    import sys

    raise SystemExit(_main(sys.argv[1:]))
