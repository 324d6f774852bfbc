"""Kafka consumers: the read models the roadshow keeps of the demand service's enterprises,
institutions, demands and roadshow leads (translate and delegate). Each is idempotent by the
version or sequence number the event carries: a replay or an older event changes nothing."""

from __future__ import annotations

from finmesh.demand.v1 import events_pb2 as demand_events
from finmesh.enterprise.v1 import events_pb2 as enterprise_events
from finmesh.lead.v1 import events_pb2 as lead_events
from finmesh.lead.v1 import lead_pb2
from meshkit.codec import Envelope
from meshkit.kafka import Handler
from services.roadshow import mapping
from services.roadshow.service import Roadshows


def enterprise_changed(roadshows: Roadshows) -> Handler:
    """``EnterpriseChanged`` → the enterprise's SRDI tier, industry, zones and borrowing, for eligibility."""

    async def handle(env: Envelope) -> None:
        msg: enterprise_events.EnterpriseChanged = env.message  # type: ignore[assignment]
        if msg.enterprise.uscc:
            await roadshows.enterprise_changed(mapping.enterprise_view(msg.enterprise), msg.enterprise.version)

    return handle


def institution_changed(roadshows: Roadshows) -> Handler:
    """``InstitutionChanged`` → the institution's name and type, for investors' registration."""

    async def handle(env: Envelope) -> None:
        i = env.message.institution  # type: ignore[attr-defined]
        if i.institution_id:
            await roadshows.institution_changed(i.institution_id, i.name, int(i.type), i.version)

    return handle


def demand_status_changed(roadshows: Roadshows) -> Handler:
    """``DemandStatusChanged`` → which enterprises have open demands (for invitations)."""

    async def handle(env: Envelope) -> None:
        msg: demand_events.DemandStatusChanged = env.message  # type: ignore[assignment]
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
        await roadshows.lead_changed(lead.lead_id, int(msg.change.status or lead.status), msg.seq,
                                     lead.offer.amount_fen, lead.disbursement.amount_fen)

    return handle


