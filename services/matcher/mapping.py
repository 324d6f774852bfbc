"""Protobuf ⇄ domain, in one place."""

from __future__ import annotations

import hashlib
from datetime import datetime

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from finmesh.catalog.v1 import product_pb2 as catalog
from finmesh.common.v1 import finance_pb2 as finance
from finmesh.demand.v1 import demand_pb2
from finmesh.lead.v1 import lead_pb2
from services.matcher import domain

_VERDICTS = {
    domain.Verdict.PASS: lead_pb2.VERDICT_PASS,
    domain.Verdict.NEAR: lead_pb2.VERDICT_NEAR,
    domain.Verdict.FAIL: lead_pb2.VERDICT_FAIL,
}


def enum_name(enum: EnumTypeWrapper, prefix: str, number: int) -> str:
    """``CREDIT`` for ``LOAN_CATEGORY_CREDIT``; ``""`` for a number the enum does not define."""
    try:
        return enum.Name(number).removeprefix(prefix)
    except ValueError:
        return ""


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


def demand_from_proto(d: demand_pb2.Demand) -> domain.Demand:
    r = d.request
    return domain.Demand(
        demand_id=d.demand_id,
        amount_fen=r.amount_fen,
        term_months=r.term_months,
        max_rate_bps=r.max_rate_bps,
        loan_category=enum_name(finance.LoanCategory, "LOAN_CATEGORY_", r.loan_category) or domain.UNSPECIFIED,
        least_acceptable_amount_fen=r.least_acceptable_amount_fen,
        preferred_institution_ids=frozenset(r.preferred_institution_ids),
        excluded_institution_ids=frozenset(r.excluded_institution_ids),
    )


def lead_proto(lead_id: str, demand_id: str, pick: domain.Pick, *, created_at: datetime,
               contact_due_at: datetime) -> lead_pb2.Lead:
    lead = lead_pb2.Lead(
        lead_id=lead_id,
        demand_id=demand_id,
        institution_id=pick.product.institution_id,
        product_id=pick.product.product_id,
        product_version=pick.product.version,
        origin=lead_pb2.LEAD_ORIGIN_INTELLIGENT_MATCH,
        score=pick.score,
        rank=pick.rank,
        rules_version=domain.RULES_VERSION,
        status=lead_pb2.LEAD_STATUS_CREATED,
        explanation=[
            lead_pb2.CriterionResult(criterion=r.criterion, demand_value=r.demand_value,
                                     product_value=r.product_value, verdict=_VERDICTS[r.verdict],
                                     points=r.points, critical=r.critical)
            for r in pick.results
        ],
    )
    lead.created_at.FromDatetime(created_at)
    lead.contact_due_at.FromDatetime(contact_due_at)
    return lead
