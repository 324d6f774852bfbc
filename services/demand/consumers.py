"""Kafka consumers: portal intake and the matcher's outcomes (translate and delegate)."""

from __future__ import annotations

from finmesh.demand.v1 import events_pb2 as events
from finmesh.matching.v1 import events_pb2 as matching
from meshkit.codec import Envelope, PoisonMessage
from meshkit.errors import AlreadyExists, ValidationFailed
from meshkit.kafka import Handler
from services.demand import domain as d
from services.demand import mapping
from services.demand.service import Demands, Intake


def portal_intake(demands: Demands) -> Handler:
    """``PortalDemandSubmitted`` → a stored demand (channel ONLINE_PORTAL, key ``portal_id:portal_demand_id``).

    Idempotent through the demand id derived from the key, so no inbox row is needed; invalid
    content, an unknown enterprise or a key reused with other content are dead-lettered.
    """

    async def handle(env: Envelope) -> None:
        msg: events.PortalDemandSubmitted = env.message  # type: ignore[assignment]
        intake = Intake(
            channel=d.Channel.ONLINE_PORTAL,
            key=f"{msg.portal_id}:{msg.portal_demand_id}",
            actor=f"portal:{msg.portal_id}",
            key_fields=(("portal_id", msg.portal_id), ("portal_demand_id", msg.portal_demand_id)),
        )
        try:
            await demands.submit(intake, mapping.request_from_pb(msg.demand))
        except ValidationFailed as err:
            raise PoisonMessage(f"invalid demand: {err}") from None
        except AlreadyExists as err:
            raise PoisonMessage(str(err)) from None

    return handle


def demand_matched(demands: Demands) -> Handler:
    """``DemandMatched`` → the demand's leads stored and its status LEADS_ISSUED or NO_MATCH."""

    async def handle(env: Envelope) -> None:
        msg: matching.DemandMatched = env.message  # type: ignore[assignment]
        leads = tuple(mapping.lead_from_pb(lead) for lead in msg.leads)
        await demands.record_match(env.event_id, msg.demand_id, leads, msg.no_match_explanation)

    return handle
