"""The demo data set: valid, deterministic, realistic enough to match."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from deploy.demo import dataset as ds
from finmesh.catalog.v1 import product_pb2 as cat
from finmesh.common.v1 import finance_pb2 as fin
from meshkit.topics import valid_institution_id

CHARSET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)


def check_char(first17: str) -> str:
    """GB 32100-2015, written out again here as an independent oracle."""
    c = 31 - sum(CHARSET.index(ch) * w for ch, w in zip(first17, WEIGHTS, strict=True)) % 31
    return CHARSET[0 if c == 31 else c]


@pytest.fixture(scope="module")
def data() -> ds.Dataset:
    return ds.build()


def test_the_oracle_agrees_with_a_known_code() -> None:
    assert check_char("91350100M000100Y4") == "3"  # 91350100M000100Y43, a published example


def test_every_uscc_is_valid_unique_and_in_its_city(data: ds.Dataset) -> None:
    codes = [e.uscc for e in data.enterprises]
    assert len(codes) == len(set(codes)) == 1000
    for e in data.enterprises:
        assert re.fullmatch(f"[{CHARSET}]{{18}}", e.uscc), e.uscc
        assert e.uscc[17] == check_char(e.uscc[:17]), e.uscc
        assert e.uscc[2:8] == e.region_code
        assert ds.CITY_BY_CODE[e.region_code].name == e.city


def test_the_same_seed_gives_the_same_data_and_another_seed_does_not(data: ds.Dataset) -> None:
    again = ds.build()
    assert again == data
    other = ds.build(seed=1)
    assert [e.uscc for e in other.enterprises] != [e.uscc for e in data.enterprises]
    a, b = ds.DemandGenerator(data), ds.DemandGenerator(again)
    assert [a.next() for _ in range(50)] == [b.next() for _ in range(50)]


def test_institutions_have_valid_ids_and_three_to_six_products(data: ds.Dataset) -> None:
    assert 45 <= len(data.institutions) <= 60
    ids = [i.institution_id for i in data.institutions]
    assert len(ids) == len(set(ids))
    for i in data.institutions:
        assert valid_institution_id(i.institution_id), i.institution_id
        assert all(re.fullmatch(r"\d{2}|\d{6}", r) for r in i.regions_served)
        assert 3 <= len(data.products_of(i.institution_id)) <= 6, i.institution_id
    types = Counter(i.type for i in data.institutions)
    assert set(types) == set(ds.OFFERINGS)  # banks, insurers, funds, guarantors, leasing, factors
    assert data.kafka_publishers and data.kafka_publishers < set(ids)


def test_product_ranges_are_ordered_and_in_bounds(data: ds.Dataset) -> None:
    product_ids = [p.product_id for p in data.products]
    assert len(product_ids) == len(set(product_ids))
    for p in data.products:
        assert 0 < p.amount_min_fen <= p.amount_max_fen, p.product_id
        assert p.amount_min_fen % 100 == 0
        assert 1 <= p.term_min_months <= p.term_max_months <= 360, p.product_id
        assert 0 <= p.rate_min_bps <= p.rate_max_bps <= 3600, p.product_id
        assert p.loan_category != fin.LOAN_CATEGORY_UNSPECIFIED and p.product_type != cat.PRODUCT_TYPE_UNSPECIFIED
        assert p.status == cat.PRODUCT_STATUS_ACTIVE and p.name


def test_the_brief_s_products_are_all_there(data: ds.Dataset) -> None:
    codes = {p.product_id.removeprefix(p.institution_id + "-") for p in data.products}
    assert {"srdi-loan", "tech-achievement", "digital-transformation", "pilot-insurance", "equipment-loan",
            "equipment-renewal", "first-loan", "renewal", "pilot-stage", "supply-chain"} <= codes
    assert any(p.product_id == "icbc-business-fast-loan" for p in data.products)
    assert any(p.product_id == "spdb-puxin-loan" for p in data.products)
    renewal = [p for p in data.products if "tech-transformation-refinancing-175bps" in p.programme_tags]
    assert renewal and all(p.rate_min_bps == 175 for p in renewal)


def test_enterprises_cover_every_industry_city_tier_and_size(data: ds.Dataset) -> None:
    es = data.enterprises
    assert {e.key_industry for e in es} == {i.key for i in ds.INDUSTRIES}
    assert {e.region_code for e in es} == {c.region_code for c in ds.CITIES}
    assert {e.srdi_tier for e in es} == {fin.SRDI_TIER_NONE, fin.SRDI_TIER_INNOVATIVE_SME, fin.SRDI_TIER_PROVINCIAL,
                                         fin.SRDI_TIER_LITTLE_GIANT}
    assert {e.size for e in es} == {1, 2, 3, 4}
    for e in es:
        assert re.fullmatch(r"[A-T]?\d{2,4}", e.industry_code)
        assert e.name.endswith("有限公司") and 1980 <= e.founded_year <= 2026
        assert e.tax_credit_grade in {"A", "B", "M", "C", "D"}
        assert e.annual_revenue_fen > 0 and e.employees > 0


def test_demands_are_valid_and_most_fit_some_product(data: ds.Dataset) -> None:
    gen = ds.DemandGenerator(data)
    demands = [gen.next() for _ in range(500)]
    usccs = {e.uscc for e in data.enterprises}

    def fits_some_product(d) -> bool:  # the matcher's basic criteria: category, amount, term, rate
        return any(
            (d.loan_category in (0, p.loan_category))
            and p.amount_min_fen <= d.amount_fen <= p.amount_max_fen
            and p.term_min_months <= d.term_months <= p.term_max_months
            and p.rate_min_bps <= d.max_rate_bps
            for p in data.products
        )

    for d in demands:
        assert d.enterprise_uscc in usccs
        assert 0 < d.amount_fen and 0 <= d.least_acceptable_amount_fen <= d.amount_fen
        assert 1 <= d.term_months <= 360 and 0 < d.max_rate_bps <= 3600
        assert d.purpose != 0 and d.consent_to_share
        assert len(set(d.collateral_offered)) == len(d.collateral_offered) >= 1
    share = sum(map(fits_some_product, demands)) / len(demands)
    assert share > 0.8, share


def test_every_demo_product_passes_the_catalogs_validation() -> None:
    """The demo loads its products through the catalog: each must be one the matcher accepts."""
    from services.matcher import handlers

    for product in ds.build(ds.DEFAULT_SEED).products:
        handlers.prepare(product)  # raises ValidationFailed naming the field
