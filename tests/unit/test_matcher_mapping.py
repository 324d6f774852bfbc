"""Protobuf ⇄ domain mapping of the matcher."""

from __future__ import annotations

from finmesh.catalog.v1 import product_pb2 as catalog
from finmesh.common.v1 import finance_pb2 as finance
from finmesh.demand.v1 import demand_pb2
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
