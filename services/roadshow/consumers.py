"""Kafka consumers: the read models the roadshow keeps of the demand service's enterprises,
institutions, demands and roadshow leads (check, translate and delegate). Each is idempotent by
the version or sequence number the event carries: a replay or an older event changes nothing.
A record missing what the read model is keyed by, or with a value outside its enumeration, is a
:class:`PoisonMessage`: the consumer dead-letters it with the reason."""

from __future__ import annotations

from enum import IntEnum

from finmesh.demand.v1 import events_pb2 as demand_events
from finmesh.enterprise.v1 import events_pb2 as enterprise_events
from finmesh.lead.v1 import events_pb2 as lead_events
from finmesh.lead.v1 import lead_pb2
from meshkit.codec import Envelope, PoisonMessage
from meshkit.kafka import Handler
from services.demand.domain import Channel, DemandStatus, InstitutionType, KeyIndustry, SrdiTier
from services.roadshow import mapping
from services.roadshow.service import Roadshows


class _Check:
    """The problems of one record, raised together as a :class:`PoisonMessage`."""

    def __init__(self, event_type: str) -> None:
        self.event_type = event_type
        self.wrong: list[str] = []

    def required(self, field: str, value: str) -> None:
        if not value.strip():
            self.wrong.append(f"{field} is empty")

    def known(self, field: str, value: int, enum: type[IntEnum], *, unspecified_ok: bool = False) -> None:
        if value not in enum._value2member_map_ or (value == 0 and not unspecified_ok):
            self.wrong.append(f"{field} {value} is not a known {enum.__name__}")

    def raise_if_any(self) -> None:
        if self.wrong:
            raise PoisonMessage(f"unusable {self.event_type}: " + "; ".join(self.wrong))


def enterprise_changed(roadshows: Roadshows) -> Handler:
    """``EnterpriseChanged`` → the enterprise's SRDI tier, industry, zones and borrowing, for eligibility."""

    async def handle(env: Envelope) -> None:
        msg: enterprise_events.EnterpriseChanged = env.message  # type: ignore[assignment]
        e = msg.enterprise
        check = _Check("EnterpriseChanged")
        check.required("enterprise.uscc", e.uscc)
        check.known("enterprise.srdi_tier", e.srdi_tier, SrdiTier, unspecified_ok=True)
        check.known("enterprise.key_industry", e.key_industry, KeyIndustry, unspecified_ok=True)
        check.raise_if_any()
        await roadshows.enterprise_changed(mapping.enterprise_view(e), e.version)

    return handle


def institution_changed(roadshows: Roadshows) -> Handler:
    """``InstitutionChanged`` → the institution's name and type, for investors' registration, and its
    API key's digest, which authenticates its calls."""

    async def handle(env: Envelope) -> None:
        i = env.message.institution  # type: ignore[attr-defined]
        check = _Check("InstitutionChanged")
        check.required("institution.institution_id", i.institution_id)
        check.known("institution.type", i.type, InstitutionType)
        check.raise_if_any()
        await roadshows.institution_changed(i.institution_id, i.name, int(i.type), i.version,
                                            env.message.api_key_sha256)  # type: ignore[attr-defined]

    return handle


def demand_status_changed(roadshows: Roadshows) -> Handler:
    """``DemandStatusChanged`` → which enterprises have open demands (for invitations)."""

    async def handle(env: Envelope) -> None:
        msg: demand_events.DemandStatusChanged = env.message  # type: ignore[assignment]
        check = _Check("DemandStatusChanged")
        check.required("demand_id", msg.demand_id)
        check.required("enterprise_uscc", msg.enterprise_uscc)
        check.known("channel", msg.channel, Channel)
        check.known("change.status", msg.change.status, DemandStatus)
        if msg.seq < 1:
            check.wrong.append(f"seq {msg.seq} is not a position in the demand's history (1 = first)")
        check.raise_if_any()
        await roadshows.demand_status_changed(msg.demand_id, msg.enterprise_uscc, int(msg.channel),
                                              int(msg.change.status), msg.seq)

    return handle


def lead_status_changed(roadshows: Roadshows) -> Handler:
    """``LeadStatusChanged`` of a lead made of a roadshow intent → its status, offer and disbursement."""

    async def handle(env: Envelope) -> None:
        msg: lead_events.LeadStatusChanged = env.message  # type: ignore[assignment]
        lead = msg.lead
        if lead.origin != lead_pb2.LEAD_ORIGIN_ROADSHOW:
            return
        check = _Check("LeadStatusChanged")
        check.required("lead.lead_id", lead.lead_id)
        check.raise_if_any()
        await roadshows.lead_changed(lead.lead_id, int(msg.change.status or lead.status), msg.seq,
                                     lead.offer.amount_fen, lead.disbursement.amount_fen)

    return handle


