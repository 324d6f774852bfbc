"""Protobuf ⇄ domain, in one place."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.timestamp_pb2 import Timestamp

from finmesh.catalog.v1 import product_pb2 as catalog
from finmesh.common.v1 import finance_pb2 as finance
from finmesh.demand.v1 import demand_pb2
from finmesh.enterprise.v1 import enterprise_pb2
from finmesh.lead.v1 import lead_pb2
from finmesh.matching.v1 import docking_pb2
from finmesh.matching.v1 import events_pb2 as matching
from meshkit import wire
from meshkit.pbtime import set_ts
from services.matcher import domain

_EMPTY: frozenset[str] = frozenset()
_VERDICTS = {
    domain.Verdict.PASS: lead_pb2.VERDICT_PASS,
    domain.Verdict.NEAR: lead_pb2.VERDICT_NEAR,
    domain.Verdict.FAIL: lead_pb2.VERDICT_FAIL,
}


@lru_cache(maxsize=64)
def _names(enum: EnumTypeWrapper, prefix: str) -> dict[int, str]:
    return {number: name.removeprefix(prefix) for name, number in enum.items()}


def enum_name(enum: EnumTypeWrapper, prefix: str, number: int) -> str:
    """``CREDIT`` for ``LOAN_CATEGORY_CREDIT``; ``""`` for a number the enum does not define."""
    return _names(enum, prefix).get(number, "")


def enum_names(enum: EnumTypeWrapper, prefix: str, numbers: object) -> frozenset[str]:
    if not numbers:
        return _EMPTY
    names = _names(enum, prefix)
    return frozenset(names.get(n, "") for n in numbers)  # type: ignore[attr-defined]


def enum_value(enum: EnumTypeWrapper, prefix: str, name: str) -> int:
    """The number of ``name`` (0 if unknown)."""
    try:
        return enum.Value(prefix + name)
    except ValueError:
        return 0


def _seconds(ts: Timestamp) -> int:
    return ts.seconds


def requirement_from_proto(c: catalog.Criterion) -> domain.Requirement:
    return domain.Requirement(field=c.field, operator=c.operator, values=tuple(c.values), critical=c.critical)


def requirement_proto(r: domain.Requirement) -> catalog.Criterion:
    return catalog.Criterion(field=r.field, operator=r.operator, values=list(r.values), critical=r.critical)


def product_from_proto(p: catalog.Product) -> domain.Product:
    return domain.Product(
        product_id=p.product_id,
        institution_id=p.institution_id,
        name=p.name,
        product_type=enum_name(catalog.ProductType, "PRODUCT_TYPE_", p.product_type),
        loan_category=enum_name(finance.LoanCategory, "LOAN_CATEGORY_", p.loan_category),
        amount_min_fen=p.amount_min_fen,
        amount_max_fen=p.amount_max_fen,
        term_min_months=p.term_min_months,
        term_max_months=p.term_max_months,
        rate_min_bps=p.rate_min_bps,
        rate_max_bps=p.rate_max_bps,
        status=enum_name(catalog.ProductStatus, "PRODUCT_STATUS_", p.status),
        version=p.version,
        collateral_required=enum_name(finance.Collateral, "COLLATERAL_", p.collateral_required),
        industries=enum_names(finance.KeyIndustry, "KEY_INDUSTRY_", p.industries),
        special_zones=frozenset(p.special_zones),
        regions=tuple(p.regions),
        programme_tags=tuple(p.programme_tags),
        requirements=tuple(requirement_from_proto(c) for c in p.requirements),
        renewal_support=p.renewal_support,
        valid_from=_seconds(p.valid_from),
        valid_until=_seconds(p.valid_until),
        updated_at=_seconds(p.updated_at),
    )


def normalised_proto(p: catalog.Product, prepared: domain.Product) -> catalog.Product:
    """A copy of ``p`` carrying what :func:`domain.prepare_product` normalised."""
    out = catalog.Product()
    out.CopyFrom(p)
    out.status = catalog.ProductStatus.Value("PRODUCT_STATUS_" + prepared.status)
    return out


def content_hash(p: catalog.Product) -> str:
    """A hash of the product's content, ignoring what the catalog sets (version, updated_at)."""
    content = catalog.Product()
    content.CopyFrom(p)
    content.ClearField("version")
    content.ClearField("updated_at")
    return hashlib.sha256(content.SerializeToString(deterministic=True)).hexdigest()


def enterprise_from_proto(e: enterprise_pb2.Enterprise) -> domain.Enterprise:
    return domain.Enterprise(
        uscc=e.uscc,
        region_code=e.region_code,
        key_industry=enum_name(finance.KeyIndustry, "KEY_INDUSTRY_", e.key_industry) or domain.UNSPECIFIED,
        size=enum_name(finance.EnterpriseSize, "ENTERPRISE_SIZE_", e.size) or domain.UNSPECIFIED,
        srdi_tier=enum_name(finance.SrdiTier, "SRDI_TIER_", e.srdi_tier) or domain.UNSPECIFIED,
        high_tech=e.high_tech,
        founded_year=e.founded_year,
        annual_revenue_fen=e.annual_revenue_fen,
        employees=e.employees,
        tax_credit_grade=e.tax_credit_grade,
        has_borrowed=e.has_borrowed,
        special_zones=frozenset(e.special_zones) if e.special_zones else _EMPTY,
    )


def demand_from_proto(d: demand_pb2.Demand) -> domain.Demand:
    r = d.request
    return domain.Demand(
        demand_id=d.demand_id,
        amount_fen=r.amount_fen,
        term_months=r.term_months,
        max_rate_bps=r.max_rate_bps,
        loan_category=enum_name(finance.LoanCategory, "LOAN_CATEGORY_", r.loan_category) or domain.UNSPECIFIED,
        least_acceptable_amount_fen=r.least_acceptable_amount_fen,
        preferred_institution_ids=frozenset(r.preferred_institution_ids) if r.preferred_institution_ids else _EMPTY,
        excluded_institution_ids=frozenset(r.excluded_institution_ids) if r.excluded_institution_ids else _EMPTY,
        purpose=enum_name(demand_pb2.Purpose, "PURPOSE_", r.purpose) or domain.UNSPECIFIED,
        collateral_offered=enum_names(finance.Collateral, "COLLATERAL_", r.collateral_offered),
        first_loan=r.first_loan,
        consent_to_share=r.consent_to_share,
        enterprise=enterprise_from_proto(d.enterprise) if d.HasField("enterprise") else domain.Enterprise(),
        as_of_year=time.gmtime(d.submitted_at.seconds).tm_year if d.submitted_at.seconds else 0,
        product_id=r.product_id,
        docking_mode=enum_name(demand_pb2.DockingMode, "DOCKING_MODE_", r.docking_mode) or domain.UNSPECIFIED,
    )


_EXPLANATION = wire.field_tag(lead_pb2.Lead.DESCRIPTOR, "explanation")
_LEAD_OF_ISSUED = wire.field_tag(matching.LeadIssued.DESCRIPTOR, "lead")
_DEMAND_OF_ISSUED = wire.field_tag(matching.LeadIssued.DESCRIPTOR, "demand")
_ENTERPRISE_OF_ISSUED = wire.field_tag(matching.LeadIssued.DESCRIPTOR, "enterprise")
_LEADS_OF_MATCHED = wire.field_tag(matching.DemandMatched.DESCRIPTOR, "leads")


@dataclass(frozen=True, slots=True)
class EncodedLead:
    """A new lead, serialised once (``data`` is a ``finmesh.lead.v1.Lead``), with the fields its
    PostgreSQL row and topic need."""

    lead_id: str
    demand_id: str
    institution_id: str
    product_id: str
    product_version: int
    score: int
    rank: int
    origin: str
    contact_due_at: datetime
    data: bytes

    def proto(self) -> lead_pb2.Lead:
        return lead_pb2.Lead.FromString(self.data)


@lru_cache(maxsize=65_536)
def _criterion_field(r: domain.CriterionResult) -> bytes:
    """One entry of a lead's explanation, as the bytes of the field (the same results recur)."""
    return wire.embedded(_EXPLANATION, lead_pb2.CriterionResult(
        criterion=r.criterion, demand_value=r.demand_value, product_value=r.product_value,
        verdict=_VERDICTS[r.verdict], points=r.points, critical=r.critical).SerializeToString())


def encode_lead(lead_id: str, demand_id: str, pick: domain.Pick, *, created_at: datetime,
                contact_due_at: datetime, origin: str = domain.ORIGIN_MATCH) -> EncodedLead:
    """A new lead (status CREATED) for ``pick``, with its explanation: one criterion result per
    criterion of the breakdown."""
    p = pick.product
    head = lead_pb2.Lead(
        lead_id=lead_id,
        demand_id=demand_id,
        institution_id=p.institution_id,
        product_id=p.product_id,
        product_version=p.version,
        origin=lead_pb2.LeadOrigin.Value("LEAD_ORIGIN_" + origin),
        score=pick.score,
        rank=pick.rank,
        rules_version=domain.RULES_VERSION,
        status=lead_pb2.LEAD_STATUS_CREATED,
    )
    set_ts(head.created_at, created_at)
    set_ts(head.contact_due_at, contact_due_at)
    data = head.SerializeToString() + b"".join([_criterion_field(r) for r in pick.results])
    return EncodedLead(lead_id, demand_id, p.institution_id, p.product_id, p.version, pick.score, pick.rank,
                       origin, contact_due_at, data)


def demand_part(accepted: demand_pb2.Demand) -> bytes:
    """What every ``LeadIssued`` of a demand carries besides the lead: the request and the enterprise."""
    return (wire.embedded(_DEMAND_OF_ISSUED, accepted.request.SerializeToString())
            + wire.embedded(_ENTERPRISE_OF_ISSUED, accepted.enterprise.SerializeToString()))


def lead_issued(lead: EncodedLead, demand_bytes: bytes) -> bytes:
    """A serialised ``LeadIssued``: the lead and the demand part (:func:`demand_part`)."""
    return wire.embedded(_LEAD_OF_ISSUED, lead.data) + demand_bytes


def demand_matched(head: matching.DemandMatched, leads: Sequence[EncodedLead]) -> bytes:
    """A serialised ``DemandMatched``: ``head`` (everything but its leads) and the leads."""
    return head.SerializeToString() + b"".join([wire.embedded(_LEADS_OF_MATCHED, lead.data) for lead in leads])


def hints_proto(hints: tuple[domain.Hint, ...]) -> list[matching.MatchHint]:
    return [matching.MatchHint(criterion=h.criterion, suggestion=h.suggestion, products=h.products, text=h.text)
            for h in hints]


def anonymised(d: domain.Demand, active_leads: int, pick: domain.Pick) -> docking_pb2.AnonymisedDemand:
    """An open demand as an institution may browse it: no enterprise name or code."""
    e = d.enterprise
    return docking_pb2.AnonymisedDemand(
        demand_id=d.demand_id, amount_fen=d.amount_fen, term_months=d.term_months, max_rate_bps=d.max_rate_bps,
        loan_category=enum_value(finance.LoanCategory, "LOAN_CATEGORY_", d.loan_category),  # type: ignore[arg-type]
        purpose=enum_value(demand_pb2.Purpose, "PURPOSE_", d.purpose),  # type: ignore[arg-type]
        collateral_offered=sorted(enum_value(finance.Collateral, "COLLATERAL_", c) for c in d.collateral_offered),
        region_code=e.region_code,
        key_industry=enum_value(finance.KeyIndustry, "KEY_INDUSTRY_", e.key_industry),  # type: ignore[arg-type]
        size=enum_value(finance.EnterpriseSize, "ENTERPRISE_SIZE_", e.size),  # type: ignore[arg-type]
        srdi_tier=enum_value(finance.SrdiTier, "SRDI_TIER_", e.srdi_tier),  # type: ignore[arg-type]
        fitting_product_id=pick.product.product_id, score=pick.score, active_leads=active_leads,
    )


def subscription_from_proto(s: docking_pb2.Subscription) -> domain.StandingSubscription:
    return domain.StandingSubscription(subscription_id=s.subscription_id, institution_id=s.institution_id,
                                       product_id=s.product_id,
                                       criteria=tuple(requirement_from_proto(c) for c in s.criteria))


def open_demand(d: demand_pb2.Demand, *, active_leads: int, tried: list[str], matched_at: datetime,
                valid_until: datetime | None) -> domain.OpenDemand:
    return domain.OpenDemand(demand_from_proto(d), active_leads=active_leads, tried=frozenset(tried),
                             matched_at=int(matched_at.timestamp()),
                             valid_until=int(valid_until.timestamp()) if valid_until else 0)

