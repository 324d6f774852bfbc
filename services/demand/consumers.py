"""Kafka consumers: portal intake, the matcher's outcomes, institutions' lead outcomes, and the
leads' status changes that make interest subsidies (translate and delegate)."""

from __future__ import annotations

from datetime import UTC

from finmesh.demand.v1 import events_pb2 as events
from finmesh.lead.v1 import events_pb2 as lead_events
from finmesh.matching.v1 import events_pb2 as matching
from finmesh.roadshow.v1 import events_pb2 as roadshow_events
from meshkit import institutions
from meshkit.codec import Envelope, PoisonMessage
from meshkit.errors import DomainError, FailedPrecondition, NotFound, PermissionDenied, ValidationFailed
from meshkit.kafka import BatchHandler, Handler
from meshkit.topics import valid_institution_id as topics_valid
from services.demand import domain as d
from services.demand import mapping
from services.demand.loans.service import Loans
from services.demand.service import Demands, Intake, RoadshowIntent, Submission

PORTAL_CHANNELS = (d.Channel.ONLINE_PORTAL, d.Channel.OFFLINE_WINDOW)


def _portal_submission(msg: events.PortalDemandSubmitted) -> Submission:
    """The submission a portal's record makes (channel ONLINE_PORTAL, or OFFLINE_WINDOW for a
    service window's system naming its operator; key ``portal_id:portal_demand_id``)."""
    channel = d.Channel(msg.channel) if msg.channel in d.Channel._value2member_map_ else None
    channel = d.Channel.ONLINE_PORTAL if channel == d.Channel.UNSPECIFIED else channel
    if channel not in PORTAL_CHANNELS:
        raise PoisonMessage(f"invalid demand: channel: must be ONLINE_PORTAL or OFFLINE_WINDOW, not {msg.channel}")
    window = channel == d.Channel.OFFLINE_WINDOW
    intake = Intake(
        channel=channel,
        key=f"{msg.portal_id}:{msg.portal_demand_id}",
        actor=f"window:{msg.portal_id}/operator:{msg.operator_id}" if window else f"portal:{msg.portal_id}",
        key_fields=(("portal_id", msg.portal_id), ("portal_demand_id", msg.portal_demand_id)),
        operator_id=msg.operator_id if window else "",
    )
    return Submission(intake, mapping.request_from_pb(msg.demand))


def _poison(err: DomainError) -> PoisonMessage:
    if isinstance(err, ValidationFailed):
        return PoisonMessage(f"invalid demand: {err}")
    return PoisonMessage(str(err))  # AlreadyExists: a key reused with other content


def portal_intake(demands: Demands) -> Handler:
    """``PortalDemandSubmitted`` → a stored demand, one record at a time.

    Idempotent through the demand id derived from the key, so no inbox row is needed; invalid
    content, an unknown enterprise or a key reused with other content are dead-lettered.
    """

    async def handle(env: Envelope) -> None:
        result = (await demands.intake([_portal_submission(env.message)]))[0]  # type: ignore[arg-type]
        if result.error is not None:
            raise _poison(result.error)

    return handle


def portal_intake_batch(demands: Demands) -> BatchHandler:
    """``PortalDemandSubmitted`` records of one fetch → stored in one transaction (:meth:`Demands.intake`).

    If any record is unusable, the usable ones are stored all the same and the batch raises
    :class:`PoisonMessage`: the consumer then hands the records over one by one (to
    :func:`portal_intake`), the stored ones are found stored (idempotent) and only the culprits
    are dead-lettered.
    """

    async def handle(envs: list[Envelope]) -> None:
        results = await demands.intake([_portal_submission(env.message) for env in envs])  # type: ignore[arg-type]
        errors = [r.error for r in results if r.error is not None]
        if errors:
            raise PoisonMessage(f"{len(errors)} of {len(envs)} records unusable, first: {errors[0]}")

    return handle


def demand_matched(demands: Demands) -> Handler:
    """``DemandMatched`` → the demand's leads stored and its status LEADS_ISSUED or NO_MATCH (leads
    added later, ``additional``, keep a worked demand's status or reopen it)."""

    async def handle(env: Envelope) -> None:
        msg: matching.DemandMatched = env.message  # type: ignore[assignment]
        leads = tuple(mapping.lead_from_pb(lead) for lead in msg.leads)
        await demands.record_match(env.event_id, msg.demand_id, leads, msg.no_match_explanation,
                                   additional=msg.additional, hints=[h.text for h in msg.hints])

    return handle


def lead_outcome_reported(demands: Demands) -> Handler:
    """``LeadOutcomeReported`` → the outcome recorded, as by ``LeadService.ReportLeadOutcome``; the
    institution id in the message must own the lead. Invalid, unauthorised or illegal reports are
    dead-lettered with the reason; a redelivered event changes nothing (inbox)."""

    async def handle(env: Envelope) -> None:
        msg: lead_events.LeadOutcomeReported = env.message  # type: ignore[assignment]
        if not msg.institution_id:
            raise PoisonMessage("invalid report: institution_id: is required")
        try:
            await demands.report_outcome(msg.institution_id, msg.lead_id, mapping.outcome_from_pb(msg.outcome),
                                         event_id=env.event_id)
        except ValidationFailed as err:
            raise PoisonMessage(f"invalid report: {err}") from None
        except PermissionDenied as err:
            raise PoisonMessage(f"permission denied: {err}") from None
        except NotFound as err:
            raise PoisonMessage(f"not found: {err}") from None
        except FailedPrecondition as err:
            raise PoisonMessage(f"failed precondition: {err}") from None

    return handle


def lead_sla_breached(demands: Demands) -> Handler:
    """``LeadSlaBreached`` (notifier) → the lead SLA_BREACHED in its system of record."""

    async def handle(env: Envelope) -> None:
        msg: matching.LeadSlaBreached = env.message  # type: ignore[assignment]
        if not msg.lead_id:
            raise PoisonMessage("invalid breach: lead_id: is required")
        at = msg.breached_at.ToDatetime(tzinfo=UTC) if msg.HasField("breached_at") else env.occurred_at
        await demands.record_sla_breach(env.event_id, msg.lead_id, at)

    return handle


def lead_status_changed(loans: Loans) -> Handler:
    """``LeadStatusChanged`` (this service's own) → loans approved or disbursed: their interest
    subsidies granted or used, and the loans disbursed kept in the loan book."""

    async def handle(env: Envelope) -> None:
        msg: lead_events.LeadStatusChanged = env.message  # type: ignore[assignment]
        if not msg.lead.lead_id:
            raise PoisonMessage("invalid lead status change: lead.lead_id: is required")
        await loans.lead_changed(env.event_id, msg)

    return handle


def roadshow_intent(demands: Demands) -> Handler:
    """``IntentRecorded`` (roadshow) → a demand of the enterprise (channel ROADSHOW: amount = the
    intended amount) with one lead for the investor (origin ROADSHOW), once (:meth:`Demands.record_intent`).
    An intent naming an unknown enterprise or institution, or invalid, is dead-lettered."""

    async def handle(env: Envelope) -> None:
        msg: roadshow_events.IntentRecorded = env.message  # type: ignore[assignment]
        instrument = roadshow_events.Instrument.Name(msg.instrument).removeprefix("INSTRUMENT_") \
            if msg.instrument in roadshow_events.Instrument.values() else str(msg.instrument)
        request = d.DemandRequest(enterprise_uscc=msg.enterprise_uscc, amount_fen=msg.intended_amount_fen,
                                  term_months=msg.term_months, purpose=int(msg.purpose), consent_to_share=True)
        intent = RoadshowIntent(intent_id=msg.intent_id, roadshow_id=msg.roadshow_id,
                                institution_id=msg.institution_id, request=request,
                                summary=f"{msg.intended_amount_fen // 100} yuan, {instrument}")
        if not topics_valid(msg.institution_id):
            raise PoisonMessage(f"invalid intent: institution_id: {msg.institution_id!r} is not a valid id")
        try:
            await demands.record_intent(env.event_id, intent)
        except ValidationFailed as err:
            raise PoisonMessage(f"invalid intent: {err}") from None
        except (NotFound, FailedPrecondition) as err:
            raise PoisonMessage(str(err)) from None
        except DomainError as err:  # AlreadyExists: the intent id reused with other content
            raise PoisonMessage(str(err)) from None

    return handle


def contact_policy_changed(demands: Demands) -> Handler:
    """``ContactPolicyChanged`` (notifier) → kept, to date the leads roadshow intents make."""

    async def handle(env: Envelope) -> None:
        await institutions.learn_policy(demands.pool, *institutions.policy_announced(env))

    return handle
