"""The matcher's pure core: validation, eligibility, scoring, lead selection, explanations, the view."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from matcher_builders import YUAN, product  # the test folder's own builders

from meshkit.errors import ValidationFailed
from meshkit.topics import valid_institution_id
from services.matcher import domain
from services.matcher.domain import Demand, Product, Verdict


def demand(**kw: object) -> Demand:
    fields: dict[str, object] = dict(demand_id="d-1", amount_fen=1_000_000 * YUAN, term_months=24, max_rate_bps=500,
                                     loan_category="CREDIT")
    fields.update(kw)
    return Demand(**fields)  # type: ignore[arg-type]


# -- validation ---------------------------------------------------------------------------------


def prepare(p: Product) -> Product:
    return domain.prepare_product(p, institution_id_ok=valid_institution_id)


def test_a_valid_product_passes_and_an_unset_status_means_active() -> None:
    assert prepare(product("p1")) == product("p1")
    assert prepare(product("p1", status="UNSPECIFIED")).status == "ACTIVE"


def test_every_wrong_field_is_named() -> None:
    bad = product("", "Bad Bank", name=" ", product_type="", loan_category="UNSPECIFIED", status="",
                  amount_min_fen=0, amount_max_fen=-5, term_min_months=0, term_max_months=361,
                  rate_min_bps=-1, rate_max_bps=3601)
    with pytest.raises(ValidationFailed) as err:
        prepare(bad)
    fields = {v.field for v in err.value.violations}
    assert fields == {f"product.{f}" for f in (
        "product_id", "institution_id", "name", "product_type", "loan_category", "status", "amount_min_fen",
        "amount_max_fen", "term_min_months", "term_max_months", "rate_min_bps", "rate_max_bps")}


@pytest.mark.parametrize("kw, field", [
    (dict(amount_min_fen=2_000, amount_max_fen=1_000), "product.amount_min_fen"),
    (dict(term_min_months=24, term_max_months=12), "product.term_min_months"),
    (dict(rate_min_bps=500, rate_max_bps=400), "product.rate_min_bps"),
])
def test_ranges_must_be_ordered(kw: dict, field: str) -> None:
    with pytest.raises(ValidationFailed) as err:
        prepare(product("p1", **kw))
    assert [v.field for v in err.value.violations] == [field]


# -- eligibility --------------------------------------------------------------------------------


@pytest.mark.parametrize("p, d", [
    (product("p", status="SUSPENDED"), demand()),
    (product("p", loan_category="MORTGAGE"), demand()),
    (product("p"), demand(amount_fen=50_000 * YUAN)),
    (product("p"), demand(amount_fen=20_000_000 * YUAN)),
    (product("p"), demand(term_months=61)),
    (product("p"), demand(term_months=5)),
    (product("p", rate_min_bps=501), demand()),
    (product("p", institution_id="bank-x"), demand(excluded_institution_ids=frozenset({"bank-x"}))),
])
def test_ineligible(p: Product, d: Demand) -> None:
    result = domain.match([p], d)
    assert result.picks == ()
    assert result.explanation


def test_eligible_at_the_edges_and_any_category() -> None:
    p = product("p", rate_min_bps=500)
    for d in (demand(amount_fen=p.amount_min_fen), demand(amount_fen=p.amount_max_fen), demand(term_months=6),
              demand(term_months=60), demand(loan_category="UNSPECIFIED"), demand(max_rate_bps=0)):
        assert len(domain.match([p], d).picks) == 1, d


def test_least_acceptable_amount_makes_a_smaller_product_a_near_fit() -> None:
    p = product("p", amount_max_fen=800_000 * YUAN)
    assert domain.match([p], demand()).picks == ()
    picks = domain.match([p], demand(least_acceptable_amount_fen=500_000 * YUAN)).picks
    assert len(picks) == 1
    amount = next(r for r in picks[0].results if r.criterion == "amount")
    assert amount.verdict is Verdict.NEAR


# -- scoring and selection ------------------------------------------------------------------------


def test_breakdown_sums_to_score_within_0_to_100() -> None:
    products = [product(f"p{i}", f"bank-{i}", rate_min_bps=300 + 30 * i, rate_max_bps=400 + 60 * i)
                for i in range(8)]
    for d in (demand(), demand(loan_category="UNSPECIFIED"), demand(max_rate_bps=0),
              demand(preferred_institution_ids=frozenset({"bank-1"}))):
        for e in (domain.evaluate(p, d) for p in products):
            assert e.score == sum(r.points for r in e.results)
            assert 0 <= e.score <= 100
    best = domain.evaluate(product("p", rate_max_bps=500), demand(),
                           domain.Responsiveness(leads=10, contacted=10, decided=4, approved=4,
                                                 median_contact_seconds=3600))
    assert best.score == 100
    assert domain.evaluate(product("p", rate_max_bps=500), demand()).score == 100 - domain.RESPONSIVENESS_POINTS // 2


def test_at_most_three_leads_one_per_institution() -> None:
    products = [product(f"p{i}", f"bank-{i % 4}") for i in range(12)]
    picks = domain.match(products, demand()).picks
    assert len(picks) == 3
    assert len({p.product.institution_id for p in picks}) == 3
    assert [p.rank for p in picks] == [1, 2, 3]


def test_best_product_of_an_institution_is_its_lead() -> None:
    products = [product("a-cheap", "bank-a", rate_max_bps=480), product("a-dear", "bank-a", rate_max_bps=800),
                product("b", "bank-b", rate_max_bps=700)]
    picks = domain.match(products, demand()).picks
    assert [p.product.product_id for p in picks] == ["a-cheap", "b"]
    assert picks[0].score > picks[1].score


def test_ties_are_broken_by_product_id_whatever_the_order() -> None:
    products = [product(f"p{i}", f"bank-{i}") for i in (5, 3, 9, 1, 7)]
    expected = ["p1", "p3", "p5"]
    assert [p.product.product_id for p in domain.match(products, demand()).picks] == expected
    assert [p.product.product_id for p in domain.match(products[::-1], demand()).picks] == expected


def test_preferred_institution_ranks_first() -> None:
    products = [product("p1", "bank-a"), product("p2", "bank-b")]
    picks = domain.match(products, demand(preferred_institution_ids=frozenset({"bank-b"}))).picks
    assert [p.product.institution_id for p in picks] == ["bank-b", "bank-a"]
    assert picks[1].score < picks[0].score  # not preferred: a NEAR verdict, no points, still eligible


# -- explanations ---------------------------------------------------------------------------------


def test_no_product_at_all() -> None:
    assert domain.match([], demand()).explanation == "the catalog has no active product"


def test_term_explanation_names_the_closest_accepted_term() -> None:
    products = [product(f"p{i}", term_max_months=360) for i in range(12)] + [product("short", term_max_months=12)]
    result = domain.match(products, demand(term_months=400))
    assert result.explanation == "none of 13 products fits; a term of 360 months would make 12 products eligible"
    assert result.hints == (domain.Hint("term", "360", 12, "a term of 360 months would make 12 products eligible"),)
    assert result.candidates_considered == 13


def test_rate_and_exclusion_explanations() -> None:
    text = domain.match([product("p", rate_min_bps=520)], demand()).explanation
    assert "5.20%" in text
    text = domain.match([product("p", "bank-x")], demand(excluded_institution_ids=frozenset({"bank-x"}))).explanation
    assert "exclude" in text


# -- the catalog view -------------------------------------------------------------------------------


def test_view_applies_only_newer_versions_and_keeps_its_checksum() -> None:
    view = domain.CatalogView()
    v1, v2 = product("p", version=1), product("p", version=2, status="RETIRED")
    assert view.apply(v2)
    assert not view.apply(v1)
    assert not view.apply(v2)
    assert view.get("p") == v2 and view.active() == ()
    view.apply(product("q", version=3))
    assert len(view) == 2
    assert view.checksum == domain.row_hash("p", 2) ^ domain.row_hash("q", 3)
    fresh = domain.CatalogView()
    fresh.apply(product("q", version=3))
    fresh.apply(replace(v2))
    assert fresh.checksum == view.checksum


def test_the_view_names_the_products_changed_since_a_mark() -> None:
    view = domain.CatalogView()
    view.apply(product("a"))
    mark = view.applied
    assert view.applied_since(mark) == []
    for p in (product("b", version=1), product("c", version=1), product("b", version=2)):
        assert view.apply(p)
    assert not view.apply(product("c", version=1))  # not newer: not a change
    assert [(p.product_id, p.version) for p in view.applied_since(mark)] == [("b", 2), ("c", 1)]
    many = view.applied
    for n in range(domain.RECENT_CHANGES + 1):
        view.apply(product(f"m{n}"))
    assert len(view.applied_since(many)) == len(view)  # more than it remembers: every product


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcde"), st.integers(1, 4), st.booleans()), max_size=40))
def test_the_views_active_count_is_always_its_number_of_active_products(changes: list) -> None:
    view = domain.CatalogView()
    for product_id, version, active in changes:
        view.apply(product(product_id, version=version, status="ACTIVE" if active else "RETIRED"))
        assert view.active_count == len(view.active())
