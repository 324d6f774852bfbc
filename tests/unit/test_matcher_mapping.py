"""Protobuf ⇄ domain mapping of the matcher."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import wrappers_pb2
from hypothesis import given
from hypothesis import strategies as st
from matcher_builders import YUAN, product  # the test folder's own builders

from finmesh.catalog.v1 import product_pb2 as catalog
from finmesh.common.v1 import finance_pb2 as finance
from finmesh.demand.v1 import demand_pb2
from finmesh.demand.v1 import demand_pb2 as dem
from finmesh.enterprise.v1 import enterprise_pb2
from finmesh.lead.v1 import lead_pb2
from finmesh.matching.v1 import events_pb2 as matching
from meshkit import wire
from services.matcher import domain, mapping


def test_enums_map_to_their_names_and_unknown_numbers_to_empty() -> None:
    p = mapping.product_from_proto(catalog.Product(
        product_type=catalog.PRODUCT_TYPE_LEASE, loan_category=finance.LOAN_CATEGORY_EQUIPMENT, status=99))
    assert (p.product_type, p.loan_category, p.status) == ("LEASE", "EQUIPMENT", "")
    assert mapping.product_from_proto(catalog.Product()).status == domain.UNSPECIFIED


def test_content_hash_ignores_what_the_catalog_sets() -> None:
    a = catalog.Product(product_id="p", name="Loan", amount_min_fen=1, version=1)
    b = catalog.Product(product_id="p", name="Loan", amount_min_fen=1, version=7)
    b.updated_at.GetCurrentTime()
    assert mapping.content_hash(a) == mapping.content_hash(b)
    assert mapping.content_hash(a) != mapping.content_hash(catalog.Product(product_id="p", name="Loan 2"))


def test_demand_maps_with_any_category_and_institution_sets() -> None:
    d = mapping.demand_from_proto(demand_pb2.Demand(demand_id="d", request=demand_pb2.DemandRequest(
        amount_fen=5, term_months=12, max_rate_bps=400, excluded_institution_ids=["x", "x"])))
    assert d == domain.Demand(demand_id="d", amount_fen=5, term_months=12, max_rate_bps=400,
                              excluded_institution_ids=frozenset({"x"}))


@pytest.mark.parametrize("enum, prefix, names", [
    (finance.LoanCategory, "LOAN_CATEGORY_", domain.LOAN_CATEGORIES),
    (finance.Collateral, "COLLATERAL_", domain.COLLATERALS),
    (finance.KeyIndustry, "KEY_INDUSTRY_", domain.KEY_INDUSTRIES),
    (finance.EnterpriseSize, "ENTERPRISE_SIZE_", domain.SIZES),
    (finance.SrdiTier, "SRDI_TIER_", domain.SRDI_TIERS),
    (dem.Purpose, "PURPOSE_", domain.PURPOSES),
    (catalog.ProductStatus, "PRODUCT_STATUS_", domain.PRODUCT_STATUSES),
])
def test_the_domain_vocabulary_is_the_contracts(enum, prefix, names) -> None:
    """The pure core lists the enum names it validates requirement values against, in the
    contract's order (ascending where the order matters)."""
    assert tuple(n.removeprefix(prefix) for n in enum.keys() if not n.endswith("_UNSPECIFIED")) == names


def test_product_and_demand_carry_every_eligibility_field() -> None:
    p = catalog.Product(
        product_id="p", collateral_required=finance.COLLATERAL_EQUIPMENT,
        industries=[finance.KEY_INDUSTRY_AEROSPACE], special_zones=["ftz"], regions=["3502"],
        programme_tags=["tech-refi"], renewal_support=True,
        requirements=[catalog.Criterion(field="enterprise.srdi_tier", operator="gte", values=["PROVINCIAL"],
                                        critical=True)])
    p.valid_until.FromSeconds(2_000_000_000)
    d = mapping.product_from_proto(p)
    assert (d.collateral_required, d.industries, d.special_zones, d.regions, d.programme_tags, d.renewal_support,
            d.valid_until) == ("EQUIPMENT", frozenset({"AEROSPACE"}), frozenset({"ftz"}), ("3502",),
                               ("tech-refi",), True, 2_000_000_000)
    assert d.requirements == (domain.Requirement("enterprise.srdi_tier", "gte", ("PROVINCIAL",), True),)
    assert mapping.requirement_proto(d.requirements[0]) == p.requirements[0]
    demand = dem.Demand(demand_id="d", request=dem.DemandRequest(
        collateral_offered=[finance.COLLATERAL_PROPERTY], consent_to_share=True, product_id="p",
        purpose=dem.PURPOSE_RESEARCH_AND_DEVELOPMENT),
        enterprise=enterprise_pb2.Enterprise(uscc="u", region_code="350203",
                                             key_industry=finance.KEY_INDUSTRY_AEROSPACE,
                                             srdi_tier=finance.SRDI_TIER_LITTLE_GIANT, founded_year=2015,
                                             special_zones=["ftz"], has_borrowed=True))
    demand.submitted_at.FromSeconds(1_800_000_000)  # 2027
    got = mapping.demand_from_proto(demand)
    assert got.collateral_offered == frozenset({"PROPERTY"}) and got.consent_to_share and got.product_id == "p"
    assert got.purpose == "RESEARCH_AND_DEVELOPMENT" and got.as_of_year == 2027
    assert got.enterprise.srdi_tier == "LITTLE_GIANT" and got.enterprise.special_zones == frozenset({"ftz"})
    assert domain.fact(got, "enterprise.years_in_business") == 12
    assert domain.fact(got, "enterprise.first_time_borrower") is False


# -- leads and their events, assembled from parts serialised once -------------------------------------------------


def _picked_lead() -> tuple[domain.Pick, demand_pb2.Demand]:
    d = domain.Demand(demand_id="d-1", amount_fen=1_000_000 * YUAN, term_months=24, max_rate_bps=500,
                      loan_category="CREDIT",
                      enterprise=domain.Enterprise(region_code="350203", key_industry="EQUIPMENT", high_tech=True))
    result = domain.match([product("p1", "bank-a", regions=("35",))], d)
    accepted = demand_pb2.Demand(
        demand_id=d.demand_id,
        request=demand_pb2.DemandRequest(enterprise_uscc="91350200MA00000001", amount_fen=d.amount_fen,
                                         term_months=d.term_months),
        enterprise=enterprise_pb2.Enterprise(uscc="91350200MA00000001", name="Xiamen Gears", region_code="350203"),
    )
    return result.picks[0], accepted


def test_an_encoded_lead_is_the_lead_built_field_by_field() -> None:
    pick, accepted = _picked_lead()
    at = datetime(2026, 11, 26, 8, 30, 15, 123456, tzinfo=UTC)
    due = at + timedelta(hours=72)
    encoded = mapping.encode_lead("lead-1", accepted.demand_id, pick, created_at=at, contact_due_at=due)
    expected = lead_pb2.Lead(
        lead_id="lead-1", demand_id=accepted.demand_id, institution_id="bank-a", product_id="p1",
        product_version=pick.product.version, origin=lead_pb2.LEAD_ORIGIN_INTELLIGENT_MATCH, score=pick.score, rank=1,
        rules_version=domain.RULES_VERSION, status=lead_pb2.LEAD_STATUS_CREATED,
        explanation=[lead_pb2.CriterionResult(criterion=r.criterion, demand_value=r.demand_value,
                                              product_value=r.product_value, points=r.points, critical=r.critical,
                                              verdict=lead_pb2.Verdict.Value("VERDICT_" + r.verdict.name))
                     for r in pick.results],
    )
    expected.created_at.FromDatetime(at)
    expected.contact_due_at.FromDatetime(due)
    assert len(pick.results) >= 10
    assert encoded.proto() == expected
    assert sum(c.points for c in encoded.proto().explanation) == encoded.score == pick.score


def test_lead_issued_and_demand_matched_carry_the_lead_bytes_unchanged() -> None:
    pick, accepted = _picked_lead()
    at = datetime(2026, 11, 26, tzinfo=UTC)
    lead = mapping.encode_lead("lead-1", accepted.demand_id, pick, created_at=at, contact_due_at=at)
    issued = matching.LeadIssued.FromString(mapping.lead_issued(lead, mapping.demand_part(accepted)))
    assert issued == matching.LeadIssued(lead=lead.proto(), demand=accepted.request, enterprise=accepted.enterprise)
    head = matching.DemandMatched(demand_id=accepted.demand_id, enterprise_uscc="91350200MA00000001",
                                  candidates_considered=7, rules_version=domain.RULES_VERSION)
    matched = matching.DemandMatched.FromString(mapping.demand_matched(head, [lead, lead]))
    expected = matching.DemandMatched()
    expected.CopyFrom(head)
    expected.leads.extend([lead.proto(), lead.proto()])
    assert matched == expected


@given(st.binary(min_size=1, max_size=40_000))
def test_an_embedded_field_is_what_protobuf_writes(payload: bytes) -> None:
    tag = wire.field_tag(wrappers_pb2.BytesValue.DESCRIPTOR, "value")
    assert wire.embedded(tag, payload) == wrappers_pb2.BytesValue(value=payload).SerializeToString()


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_a_varint_is_what_protobuf_writes(n: int) -> None:
    assert b"\x08" + wire.varint(n) == wrappers_pb2.UInt64Value(value=n).SerializeToString() or n == 0


def test_outbox_rows_of_a_lead_and_a_match_are_keyed_as_the_topic_registry_keys_them() -> None:
    from meshkit import topics
    from services.matcher import handlers

    pick, accepted = _picked_lead()
    at = datetime(2026, 11, 26, tzinfo=UTC)
    lead = mapping.encode_lead("lead-1", accepted.demand_id, pick, created_at=at, contact_due_at=at)
    issued = handlers._lead_issued(lead, mapping.demand_part(accepted))
    assert issued.spec.name == "leads.bank-a.v1"
    assert issued.key == issued.spec.key_of(matching.LeadIssued.FromString(issued.payload))
    matched = handlers._demand_matched(matching.DemandMatched(demand_id=accepted.demand_id), [lead], "e")
    assert matched.key == topics.DEMANDS_MATCHED.key_of(matching.DemandMatched.FromString(matched.payload))
