"""Protobuf ⇄ domain, in one place. Enumerations share their numbering, so they map as ints."""

from __future__ import annotations

from finmesh.demand.v1 import demand_pb2 as dpb
from finmesh.demand.v1 import events_pb2 as devents
from finmesh.enterprise.v1 import enterprise_pb2 as epb
from finmesh.enterprise.v1 import events_pb2 as eevents
from finmesh.institution.v1 import events_pb2 as ievents
from finmesh.institution.v1 import institution_pb2 as ipb
from finmesh.lead.v1 import events_pb2 as levents
from finmesh.lead.v1 import lead_pb2 as lpb
from meshkit.pbtime import set_ts, ts_to_dt
from services.demand import domain as d

# -- timestamps -------------------------------------------------------------------------------------


# -- enterprises ------------------------------------------------------------------------------------


def enterprise_from_pb(m: epb.Enterprise) -> d.Enterprise:
    return d.Enterprise(
        uscc=m.uscc, name=m.name, region_code=m.region_code, city=m.city, industry_code=m.industry_code,
        key_industry=int(m.key_industry), size=int(m.size), srdi_tier=int(m.srdi_tier), high_tech=m.high_tech,
        founded_year=m.founded_year, annual_revenue_fen=m.annual_revenue_fen, employees=m.employees,
        tax_credit_grade=m.tax_credit_grade, has_borrowed=m.has_borrowed, special_zones=tuple(m.special_zones),
        registered_at=None,  # set by the platform, never by the caller
    )


def enterprise_to_pb(e: d.Enterprise) -> epb.Enterprise:
    m = epb.Enterprise(
        uscc=e.uscc, name=e.name, region_code=e.region_code, city=e.city, industry_code=e.industry_code,
        key_industry=e.key_industry, size=e.size, srdi_tier=e.srdi_tier, high_tech=e.high_tech,
        founded_year=e.founded_year, annual_revenue_fen=e.annual_revenue_fen, employees=e.employees,
        tax_credit_grade=e.tax_credit_grade, has_borrowed=e.has_borrowed, special_zones=list(e.special_zones),
        version=e.version,
    )
    set_ts(m.registered_at, e.registered_at)
    set_ts(m.updated_at, e.updated_at)
    return m


def enterprise_changed(e: d.Enterprise, created: bool) -> eevents.EnterpriseChanged:
    return eevents.EnterpriseChanged(enterprise=enterprise_to_pb(e), created=created)


# -- institutions -----------------------------------------------------------------------------------


def institution_from_pb(m: ipb.Institution) -> d.Institution:
    return d.Institution(
        institution_id=m.institution_id, name=m.name, type=int(m.type), regions_served=tuple(m.regions_served),
        contact_sla_hours=m.contact_sla_hours,
    )


def institution_to_pb(i: d.Institution) -> ipb.Institution:
    m = ipb.Institution(
        institution_id=i.institution_id, name=i.name, type=i.type, regions_served=list(i.regions_served),
        contact_sla_hours=i.contact_sla_hours, lead_topic=i.lead_topic, version=i.version,
    )
    set_ts(m.registered_at, i.registered_at)
    set_ts(m.updated_at, i.updated_at)
    return m


def institution_changed(i: d.Institution, created: bool, key_digest: str) -> ievents.InstitutionChanged:
    return ievents.InstitutionChanged(institution=institution_to_pb(i), created=created, api_key_sha256=key_digest)


# -- demands ----------------------------------------------------------------------------------------


def request_from_pb(m: dpb.DemandRequest) -> d.DemandRequest:
    return d.DemandRequest(
        enterprise_uscc=m.enterprise_uscc, amount_fen=m.amount_fen,
        least_acceptable_amount_fen=m.least_acceptable_amount_fen, term_months=m.term_months,
        max_rate_bps=m.max_rate_bps, loan_category=int(m.loan_category), purpose=int(m.purpose),
        collateral_offered=tuple(int(c) for c in m.collateral_offered), first_loan=m.first_loan,
        preferred_institution_ids=tuple(m.preferred_institution_ids),
        excluded_institution_ids=tuple(m.excluded_institution_ids), consent_to_share=m.consent_to_share,
        valid_until=ts_to_dt(m.valid_until) if m.HasField("valid_until") else None,
        docking_mode=int(m.docking_mode), product_id=m.product_id,
    )


def request_to_pb(r: d.DemandRequest) -> dpb.DemandRequest:
    m = dpb.DemandRequest(
        enterprise_uscc=r.enterprise_uscc, amount_fen=r.amount_fen,
        least_acceptable_amount_fen=r.least_acceptable_amount_fen, term_months=r.term_months,
        max_rate_bps=r.max_rate_bps, loan_category=r.loan_category, purpose=r.purpose,
        collateral_offered=list(r.collateral_offered), first_loan=r.first_loan,
        preferred_institution_ids=list(r.preferred_institution_ids),
        excluded_institution_ids=list(r.excluded_institution_ids), consent_to_share=r.consent_to_share,
        docking_mode=r.docking_mode, product_id=r.product_id,
    )
    set_ts(m.valid_until, r.valid_until)
    return m


def lead_from_pb(m: lpb.Lead) -> d.Lead:
    return d.Lead(
        lead_id=m.lead_id, demand_id=m.demand_id, institution_id=m.institution_id, product_id=m.product_id,
        product_version=m.product_version, origin=int(m.origin), score=m.score, rank=m.rank,
        explanation=tuple(
            d.Criterion(criterion=c.criterion, demand_value=c.demand_value, product_value=c.product_value,
                        verdict=int(c.verdict), points=c.points, critical=c.critical)
            for c in m.explanation
        ),
        rules_version=m.rules_version, status=int(m.status), created_at=ts_to_dt(m.created_at),
        contact_due_at=ts_to_dt(m.contact_due_at),
    )


def lead_to_pb(lead: d.Lead) -> lpb.Lead:
    m = lpb.Lead(
        lead_id=lead.lead_id, demand_id=lead.demand_id, institution_id=lead.institution_id,
        product_id=lead.product_id, product_version=lead.product_version, origin=lead.origin, score=lead.score,
        rank=lead.rank, rules_version=lead.rules_version, status=lead.status,
        explanation=[
            lpb.CriterionResult(criterion=c.criterion, demand_value=c.demand_value, product_value=c.product_value,
                                verdict=c.verdict, points=c.points, critical=c.critical)
            for c in lead.explanation
        ],
    )
    set_ts(m.created_at, lead.created_at)
    set_ts(m.contact_due_at, lead.contact_due_at)
    set_ts(m.updated_at, lead.updated_at)
    for h in lead.history:
        change = m.history.add(status=int(h.status), actor=h.actor, reason=h.reason)
        set_ts(change.at, h.at)
    reached, r = lead.reached(), lead.reported
    if d.LeadStatus.CONTACTED in reached:
        m.contact.method = r.contact_method
        set_ts(m.contact.contacted_at, r.contacted_at)
    if d.LeadStatus.APPROVED in reached:
        m.offer.CopyFrom(lpb.Offer(amount_fen=r.offer_amount_fen, rate_bps=r.offer_rate_bps,
                                   term_months=r.offer_term_months))
    if d.LeadStatus.DISBURSED in reached:
        m.disbursement.amount_fen = r.disbursed_amount_fen
        set_ts(m.disbursement.disbursed_at, r.disbursed_at)
    if d.LeadStatus.DECLINED in reached:
        m.decline.CopyFrom(lpb.Decline(reason_code=r.decline_reason, text=r.decline_text))
    return m


def lead_status_changed(lead: d.Lead, seq: int, enterprise_uscc: str) -> levents.LeadStatusChanged:
    """The event for the ``seq``-th change (1-based) of ``lead``'s history, naming the demand's enterprise."""
    h = lead.history[seq - 1]
    previous = lead.history[seq - 2].status if seq > 1 else d.LeadStatus.UNSPECIFIED
    m = levents.LeadStatusChanged(lead=lead_to_pb(lead), previous=int(previous), seq=seq,
                                  enterprise_uscc=enterprise_uscc)
    m.change.CopyFrom(lpb.LeadStatusChange(status=int(h.status), actor=h.actor, reason=h.reason))
    set_ts(m.change.at, h.at)
    return m


def outcome_from_pb(m: lpb.LeadOutcome) -> d.Outcome:
    return d.Outcome(
        status=int(m.status), contact_method=int(m.contact.method), contacted_at=ts_to_dt(m.contact.contacted_at),
        offer_amount_fen=m.offer.amount_fen, offer_rate_bps=m.offer.rate_bps, offer_term_months=m.offer.term_months,
        disbursed_amount_fen=m.disbursement.amount_fen, disbursed_at=ts_to_dt(m.disbursement.disbursed_at),
        decline_reason=int(m.decline.reason_code), decline_text=m.decline.text, note=m.note,
    )


def demand_to_pb(x: d.Demand) -> dpb.Demand:
    m = dpb.Demand(
        demand_id=x.demand_id, request=request_to_pb(x.request), channel=int(x.channel),
        idempotency_key=x.idempotency_key, status=int(x.status), no_match_explanation=x.no_match_explanation,
        no_match_hints=list(x.no_match_hints), enterprise=enterprise_to_pb(x.enterprise),
        leads=[lead_to_pb(lead) for lead in x.leads],
        duplicate_of=x.duplicate_of, operator_id=x.operator_id,
    )
    set_ts(m.submitted_at, x.submitted_at)
    set_ts(m.updated_at, x.updated_at)
    for h in x.history:
        change = m.history.add(status=int(h.status), actor=h.actor, reason=h.reason)
        set_ts(change.at, h.at)
    return m


def status_changed(*, demand_id: str, uscc: str, channel: int, previous: int, change: d.StatusChange, seq: int,
                   duplicate_of: str = "") -> devents.DemandStatusChanged:
    m = devents.DemandStatusChanged(demand_id=demand_id, enterprise_uscc=uscc, channel=channel,
                                    previous=int(previous), seq=seq, duplicate_of=duplicate_of)
    m.change.CopyFrom(dpb.StatusChange(status=int(change.status), actor=change.actor, reason=change.reason))
    set_ts(m.change.at, change.at)
    return m


def demand_status_changed(x: d.Demand, seq: int) -> devents.DemandStatusChanged:
    """The event for the ``seq``-th change (1-based) of ``x``'s history."""
    previous = x.history[seq - 2].status if seq > 1 else d.DemandStatus.UNSPECIFIED
    return status_changed(demand_id=x.demand_id, uscc=x.request.enterprise_uscc, channel=int(x.channel),
                          previous=previous, change=x.history[seq - 1], seq=seq, duplicate_of=x.duplicate_of)
