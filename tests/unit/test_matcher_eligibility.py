"""Eligibility as data, explainable ranking, counterfactual hints, the reverse join, docking
modes and responsiveness: examples, then properties checked by hypothesis."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from matcher_builders import YUAN, product  # the test folder's own builders

from meshkit.errors import ValidationFailed
from meshkit.topics import valid_institution_id
from services.matcher import domain
from services.matcher.domain import Demand, Enterprise, OpenDemand, Product, Requirement, Verdict

ACME = Enterprise(uscc="91350200MA2XYZ1234", region_code="350203", key_industry="AEROSPACE", size="SMALL",
                  srdi_tier="PROVINCIAL", high_tech=True, founded_year=2020, has_borrowed=False,
                  special_zones=frozenset({"xiamen-ftz"}))


def demand(**kw: object) -> Demand:
    fields: dict[str, object] = dict(demand_id="d-1", amount_fen=1_000_000 * YUAN, term_months=24, max_rate_bps=500,
                                     loan_category="CREDIT", enterprise=ACME, as_of_year=2026, consent_to_share=True)
    fields.update(kw)
    return Demand(**fields)  # type: ignore[arg-type]


def req(f: str, op: str, *values: str, critical: bool = True) -> Requirement:
    return Requirement(f, op, tuple(values), critical)


# -- requirements as data ---------------------------------------------------------------------------


@pytest.mark.parametrize("r, holds", [
    (req("enterprise.srdi_tier", "gte", "PROVINCIAL"), True),
    (req("enterprise.srdi_tier", "gte", "LITTLE_GIANT"), False),
    (req("enterprise.high_tech", "eq", "true"), True),
    (req("enterprise.first_time_borrower", "eq", "true"), True),
    (req("enterprise.years_in_business", "gte", "6"), True),
    (req("enterprise.years_in_business", "gte", "7"), False),
    (req("enterprise.size", "in", "MICRO", "SMALL"), True),
    (req("enterprise.size", "lte", "MICRO"), False),
    (req("enterprise.region_code", "in", "3502", "3501"), True),
    (req("enterprise.region_code", "not_in", "35"), False),
    (req("enterprise.special_zones", "eq", "xiamen-ftz"), True),
    (req("enterprise.special_zones", "not_in", "xiamen-ftz"), False),
    (req("enterprise.key_industry", "ne", "BIOMEDICINE"), True),
    (req("demand.collateral_offered", "in", "EQUIPMENT"), False),
    (req("demand.amount_fen", "lte", str(2_000_000 * YUAN)), True),
    (req("enterprise.employees", "gte", "10"), False),  # unknown: fails
])
def test_a_requirement_is_data_evaluated_over_demand_and_enterprise(r: Requirement, holds: bool) -> None:
    domain.validate_criteria([r], "criteria")
    assert domain.requirement_holds(r, demand()) is holds
    e = domain.evaluate(product("p", requirements=(r,)), demand())
    assert e.eligible is holds
    soft = domain.evaluate(product("p", requirements=(replace(r, critical=False),)), demand())
    assert soft.eligible
    assert soft.score == e.score if holds else soft.score < domain.evaluate(product("p"), demand()).score


@pytest.mark.parametrize("r, field", [
    (req("enterprise.shoe_size", "eq", "42"), "product.requirements[0].field"),
    (req("enterprise.high_tech", "gte", "true"), "product.requirements[0].operator"),
    (req("enterprise.srdi_tier", "gte", "GIANT"), "product.requirements[0].values"),
    (req("enterprise.years_in_business", "gte", "three"), "product.requirements[0].values"),
    (req("enterprise.years_in_business", "gte", "3", "4"), "product.requirements[0].values"),
    (req("enterprise.size", "in"), "product.requirements[0].values"),
    (req("enterprise.region_code", "in", "35x"), "product.requirements[0].values"),
])
def test_bad_requirements_are_refused_naming_the_field(r: Requirement, field: str) -> None:
    with pytest.raises(ValidationFailed) as err:
        domain.prepare_product(product("p", requirements=(r,)), institution_id_ok=valid_institution_id)
    assert [v.field for v in err.value.violations] == [field]


def test_product_columns_are_validated() -> None:
    bad = product("p", collateral_required="", industries=frozenset({""}), regions=("35x",),
                  special_zones=frozenset({" "}), valid_from=20, valid_until=10)
    with pytest.raises(ValidationFailed) as err:
        domain.prepare_product(bad, institution_id_ok=valid_institution_id)
    assert {v.field for v in err.value.violations} == {
        "product.collateral_required", "product.industries", "product.regions", "product.special_zones",
        "product.valid_from"}


@pytest.mark.parametrize("p, criterion", [
    (product("p", collateral_required="EQUIPMENT"), "collateral"),
    (product("p", industries=frozenset({"BIOMEDICINE"})), "industry"),
    (product("p", special_zones=frozenset({"pudong"})), "special_zone"),
    (product("p", regions=("31",)), "region"),
])
def test_standard_criteria_from_the_products_columns(p: Product, criterion: str) -> None:
    assert domain.evaluate(p, demand()).failed() == [criterion]
    assert domain.critical_failures(p, demand()) == (criterion,)


def test_matching_columns_pass() -> None:
    p = product("p", collateral_required="EQUIPMENT", industries=frozenset({"AEROSPACE"}),
                special_zones=frozenset({"xiamen-ftz"}), regions=("3502",))
    assert domain.evaluate(p, demand(collateral_offered=frozenset({"EQUIPMENT", "IP"}))).eligible


def test_validity_window() -> None:
    p = product("p", valid_from=100, valid_until=200)
    assert domain.match([p], demand(), now=150).picks
    assert not domain.match([p], demand(), now=250).picks
    assert domain.match([p], demand()).picks  # no clock given: the window is not checked


# -- ranking -------------------------------------------------------------------------------------------


def test_responsive_institutions_rank_first() -> None:
    products = [product("p1", "bank-slow"), product("p2", "bank-fast")]
    resp = {"bank-slow": domain.Responsiveness(leads=20, contacted=5, decided=5, approved=0,
                                              median_contact_seconds=70 * 3600),
            "bank-fast": domain.Responsiveness(leads=20, contacted=19, decided=10, approved=6,
                                              median_contact_seconds=2 * 3600)}
    picks = domain.match(products, demand(), responsiveness=resp).picks
    assert [p.product.institution_id for p in picks] == ["bank-fast", "bank-slow"]
    why = next(r for r in picks[0].results if r.criterion == "responsiveness")
    assert "contacted 95% of 20 leads" in why.product_value
    assert domain.responsiveness_points(resp["bank-fast"]) > domain.responsiveness_points(None) \
        > domain.responsiveness_points(resp["bank-slow"])


def test_slots_and_institutions_already_tried() -> None:
    products = [product(f"p{i}", f"bank-{i}") for i in range(6)]
    picks = domain.match(products, demand(), slots=2, exclude_institutions=frozenset({"bank-0", "bank-1"})).picks
    assert [p.product.institution_id for p in picks] == ["bank-2", "bank-3"]
    empty = domain.match(products[:2], demand(), exclude_institutions=frozenset({"bank-0", "bank-1"}))
    assert empty.picks == () and "not already tried" in empty.explanation


# -- hints -----------------------------------------------------------------------------------------------


def test_hints_name_the_smallest_change_and_how_many_products_it_opens() -> None:
    products = [product(f"t{i}", f"bank-{i}", term_min_months=24, term_max_months=60) for i in range(3)]
    products += [product(f"c{i}", f"bank-c{i}", collateral_required="EQUIPMENT") for i in range(2)]
    products += [product("x", "bank-x", loan_category="MORTGAGE", term_min_months=100, term_max_months=120)]
    result = domain.match(products, demand(term_months=12))
    assert result.picks == ()
    texts = [h.text for h in result.hints]
    assert texts == ["a term of 24 months would make 3 products eligible",
                     "adding equipment as collateral would make 2 more products eligible"]
    assert result.explanation.endswith(texts[0])
    assert result.hints[0].suggestion == "24" and result.hints[1].suggestion == "EQUIPMENT"


def test_hint_for_the_category_and_the_rate() -> None:
    products = [product(f"m{i}", f"bank-{i}", loan_category="MORTGAGE") for i in range(2)]
    products += [product("r", "bank-r", rate_min_bps=600, rate_max_bps=700)]
    hints = domain.match(products, demand()).hints
    assert [(h.criterion, h.suggestion, h.products) for h in hints] == [("loan_category", "MORTGAGE", 2),
                                                                       ("rate", "600", 1)]


def test_no_hint_for_what_the_demand_cannot_change() -> None:
    result = domain.match([product("p", industries=frozenset({"BIOMEDICINE"}))], demand())
    assert result.hints == ()
    assert result.explanation == "none of 1 product fits; 1 product fail only on industry"


# -- enterprise-active docking ---------------------------------------------------------------------------


def test_applied_product_goes_straight_or_says_why_not() -> None:
    p = product("p", collateral_required="PROPERTY")
    ok = domain.check_applied(p, demand(product_id="p", collateral_offered=frozenset({"PROPERTY"})))
    assert [pick.product.product_id for pick in ok.picks] == ["p"]
    no = domain.check_applied(p, demand(product_id="p", term_months=100))
    assert no.picks == ()
    assert no.explanation.startswith("Loan p does not fit: ") and "term: 100 months vs 6-60 months" in no.explanation
    assert "collateral" in no.explanation
    assert "does not exist" in domain.check_applied(None, demand(product_id="zz")).explanation
    assert "retired" in domain.check_applied(replace(p, status="RETIRED"), demand(product_id="p")).explanation


# -- the reverse join ----------------------------------------------------------------------------------------


def test_reverse_join_fills_open_demands_with_room_and_never_an_institution_twice() -> None:
    p = product("new", "bank-n")
    demands = [
        OpenDemand(demand(demand_id="a")),
        OpenDemand(demand(demand_id="full"), active_leads=3),
        OpenDemand(demand(demand_id="tried"), active_leads=1, tried=frozenset({"bank-n"})),
        OpenDemand(demand(demand_id="unfit", term_months=100)),
        OpenDemand(demand(demand_id="no-consent", consent_to_share=False)),
        OpenDemand(demand(demand_id="b"), active_leads=2, tried=frozenset({"x", "y", "z", "w"})),
        OpenDemand(demand(demand_id="limit"), active_leads=0, tried=frozenset("abcdef")),
    ]
    joined = domain.reverse_join(p, demands)
    assert [(od.demand.demand_id, pick.rank) for od, pick in joined] == [("a", 1), ("b", 3)]
    assert domain.reverse_join(replace(p, status="RETIRED"), demands) == []


def test_subscription_criteria() -> None:
    crit = [req("demand.amount_fen", "gte", str(500_000 * YUAN)), req("enterprise.region_code", "in", "3502")]
    assert domain.criteria_hold(crit, demand())
    assert not domain.criteria_hold(crit, demand(amount_fen=100 * YUAN))
    with pytest.raises(ValidationFailed):
        domain.validate_criteria([], "subscription.criteria")


# -- the catalog index ---------------------------------------------------------------------------------


def test_index_candidates_are_a_superset_of_the_eligible() -> None:
    view = domain.CatalogView()
    for i, (cat, lo, hi) in enumerate([("CREDIT", 1, 12), ("CREDIT", 12, 36), ("MORTGAGE", 24, 360),
                                       ("CREDIT", 200, 360), ("EQUIPMENT", 6, 60)]):
        view.apply(product(f"p{i}", f"bank-{i}", loan_category=cat, term_min_months=lo, term_max_months=hi))
    for term in (1, 6, 12, 24, 100, 360):
        for cat in ("CREDIT", "MORTGAGE", "UNSPECIFIED"):
            d = demand(term_months=term, loan_category=cat)
            eligible = {p.product_id for p in view.active() if not domain.critical_failures(p, d)}
            assert eligible <= {p.product_id for p in view.candidates(d)}
            assert {p.product.product_id for p in view.match(d).picks} <= eligible
    view.apply(product("p0", "bank-0", version=2, status="RETIRED"))
    assert "p0" not in {p.product_id for p in view.candidates(demand(term_months=6))}
    view.apply(product("p1", "bank-1", version=2, loan_category="CREDIT", term_min_months=12, term_max_months=36,
                       rate_min_bps=300))
    found = [p for p in view.candidates(demand(term_months=24)) if p.product_id == "p1"]
    assert [p.version for p in found] == [2]  # the replaced version is skipped


# -- properties -----------------------------------------------------------------------------------------


CATS = ("CREDIT", "MORTGAGE", "EQUIPMENT")
FIELD_VALUES = {
    "enterprise.srdi_tier": ("gte", domain.SRDI_TIERS),
    "enterprise.size": ("lte", domain.SIZES),
    "enterprise.high_tech": ("eq", ("true", "false")),
    "enterprise.first_time_borrower": ("eq", ("true", "false")),
    "enterprise.years_in_business": ("gte", ("0", "2", "5", "10")),
    "enterprise.region_code": ("in", ("35", "3502", "31")),
}


@st.composite
def requirements(draw: st.DrawFn) -> Requirement:
    f = draw(st.sampled_from(sorted(FIELD_VALUES)))
    op, values = FIELD_VALUES[f]
    return Requirement(f, op, (draw(st.sampled_from(values)),), draw(st.booleans()))


@st.composite
def products(draw: st.DrawFn, i: int) -> Product:
    amin = draw(st.integers(1, 5_000_000))
    tmin = draw(st.integers(1, 120))
    rmin = draw(st.integers(0, 800))
    return product(
        f"p{i}", f"bank-{draw(st.integers(0, 5))}", loan_category=draw(st.sampled_from(CATS)),
        amount_min_fen=amin, amount_max_fen=amin + draw(st.integers(0, 10_000_000)),
        term_min_months=tmin, term_max_months=min(360, tmin + draw(st.integers(0, 120))),
        rate_min_bps=rmin, rate_max_bps=rmin + draw(st.integers(0, 400)),
        status=draw(st.sampled_from(("ACTIVE", "ACTIVE", "ACTIVE", "SUSPENDED"))),
        collateral_required=draw(st.sampled_from(("NONE", "NONE", "EQUIPMENT", "PROPERTY"))),
        industries=frozenset(draw(st.lists(st.sampled_from(domain.KEY_INDUSTRIES[:3]), max_size=2))),
        regions=tuple(draw(st.lists(st.sampled_from(("35", "3502", "31")), max_size=2))),
        requirements=tuple(draw(st.lists(requirements(), max_size=3))),
    )


@st.composite
def catalogs(draw: st.DrawFn) -> list[Product]:
    return [draw(products(i)) for i in range(draw(st.integers(0, 12)))]


@st.composite
def demands(draw: st.DrawFn) -> Demand:
    ent = Enterprise(
        region_code=draw(st.sampled_from(("350203", "310101", ""))),
        key_industry=draw(st.sampled_from((*domain.KEY_INDUSTRIES[:3], "UNSPECIFIED"))),
        size=draw(st.sampled_from((*domain.SIZES, "UNSPECIFIED"))),
        srdi_tier=draw(st.sampled_from((*domain.SRDI_TIERS, "UNSPECIFIED"))),
        high_tech=draw(st.booleans()), has_borrowed=draw(st.booleans()),
        founded_year=draw(st.sampled_from((0, 2010, 2020, 2025))),
    )
    amount = draw(st.integers(1, 15_000_000))
    return demand(
        amount_fen=amount, least_acceptable_amount_fen=draw(st.sampled_from((0, amount // 2))),
        term_months=draw(st.integers(1, 360)), max_rate_bps=draw(st.sampled_from((0, 300, 500, 900))),
        loan_category=draw(st.sampled_from((*CATS, "UNSPECIFIED"))),
        collateral_offered=frozenset(draw(st.lists(st.sampled_from(("EQUIPMENT", "PROPERTY")), max_size=2))),
        excluded_institution_ids=frozenset(draw(st.lists(st.sampled_from(("bank-0", "bank-1")), max_size=1))),
        preferred_institution_ids=frozenset(draw(st.lists(st.sampled_from(("bank-2", "bank-3")), max_size=1))),
        enterprise=ent,
    )


responsiveness = st.dictionaries(
    st.sampled_from([f"bank-{i}" for i in range(6)]),
    st.builds(domain.Responsiveness, leads=st.integers(0, 50), contacted=st.integers(0, 50),
              decided=st.integers(0, 20), approved=st.integers(0, 20),
              median_contact_seconds=st.integers(0, 200 * 3600)),
)


@settings(max_examples=150, deadline=None)
@given(catalog=catalogs(), d=demands(), resp=responsiveness, tried=st.frozensets(st.sampled_from(("bank-4", "bank-5"))),
       slots=st.integers(0, 3))
def test_properties_of_a_match(catalog: list[Product], d: Demand, resp: dict, tried: frozenset[str],
                               slots: int) -> None:
    result = domain.match(catalog, d, responsiveness=resp, slots=slots, exclude_institutions=tried)
    # At most `slots` leads, distinct institutions, none already tried, ranks 1..n, best first.
    institutions = [pick.product.institution_id for pick in result.picks]
    assert len(result.picks) <= slots and len(set(institutions)) == len(institutions)
    assert not set(institutions) & tried
    assert [pick.rank for pick in result.picks] == list(range(1, len(result.picks) + 1))
    assert [pick.score for pick in result.picks] == sorted((pick.score for pick in result.picks), reverse=True)
    for pick in result.picks:
        # A product never appears in a lead whose critical criteria the demand fails.
        e = domain.evaluate(pick.product, d, resp.get(pick.product.institution_id))
        assert e.eligible and pick.product.status == "ACTIVE"
        assert not any(r.critical and r.verdict is Verdict.FAIL for r in pick.results)
        # The breakdown always sums to the score, within 0..100.
        assert pick.score == sum(r.points for r in pick.results) and 0 <= pick.score <= 100
    # The order of the catalog does not matter (deterministic ties).
    again = domain.match(catalog[::-1], d, responsiveness=resp, slots=slots, exclude_institutions=tried)
    assert [p.product.product_id for p in again.picks] == [p.product.product_id for p in result.picks]
    if slots and not result.picks:
        assert result.explanation


@settings(max_examples=150, deadline=None)
@given(catalog=catalogs(), d=demands())
def test_every_evaluation_is_consistent(catalog: list[Product], d: Demand) -> None:
    for p in catalog:
        e = domain.evaluate(p, d)
        assert e.score == sum(r.points for r in e.results) and 0 <= e.score <= 100
        assert tuple(e.failed()) == domain.critical_failures(p, d)  # the fast paths agree with the breakdown
        assert domain.fails(p, d) is (not e.eligible)
        assert domain.score(p, d, domain.responsiveness_points(None)) == e.score


@settings(max_examples=100, deadline=None)
@given(catalog=catalogs(), d=demands())
def test_every_hint_is_true(catalog: list[Product], d: Demand) -> None:
    """Applying a hint's change makes at least the products it counts eligible."""
    result = domain.match(catalog, d)
    for h in result.hints:
        if h.criterion == "institution":
            changed = replace(d, excluded_institution_ids=frozenset())
        elif h.criterion == "term":
            changed = replace(d, term_months=int(h.suggestion))
        elif h.criterion == "amount":
            changed = replace(d, amount_fen=int(h.suggestion), least_acceptable_amount_fen=0)
        elif h.criterion == "rate":
            changed = replace(d, max_rate_bps=int(h.suggestion))
        elif h.criterion == "loan_category":
            changed = replace(d, loan_category=h.suggestion)
        else:
            changed = replace(d, collateral_offered=d.collateral_offered | {h.suggestion})
        eligible = [p for p in catalog if domain.live(p) and not domain.critical_failures(p, changed)]
        assert len(eligible) >= h.products >= 1, h


@settings(max_examples=100, deadline=None)
@given(catalog=catalogs(), ds=st.lists(demands(), max_size=6), tried=st.integers(0, 6), active=st.integers(0, 3))
def test_reverse_join_never_exceeds_the_cap_or_repeats_an_institution(catalog: list[Product], ds: list[Demand],
                                                                       tried: int, active: int) -> None:
    open_demands = [OpenDemand(replace(d, demand_id=f"d{i}"), active_leads=active,
                               tried=frozenset(f"bank-{j}" for j in range(tried)))
                    for i, d in enumerate(ds)]
    for p in catalog:
        for od, pick in domain.reverse_join(p, open_demands):
            assert od.active_leads < domain.MAX_LEADS and len(od.tried) < domain.MAX_INSTITUTIONS_TRIED
            assert p.institution_id not in od.tried and od.demand.consent_to_share
            assert domain.evaluate(p, od.demand).eligible
            assert pick.score == sum(r.points for r in pick.results)


@settings(max_examples=150, deadline=None)
@given(catalog=catalogs(), d=demands(), resp=responsiveness)
def test_the_indexed_early_stopping_match_picks_what_the_full_scan_picks(catalog: list[Product], d: Demand,
                                                                         resp: dict) -> None:
    view = domain.CatalogView()
    for p in catalog:
        view.apply(p)
    fast = view.match(d, responsiveness=resp)
    full = domain.match(catalog, d, responsiveness=resp)
    assert [(p.product.product_id, p.score, p.rank) for p in fast.picks] == \
        [(p.product.product_id, p.score, p.rank) for p in full.picks]
    assert fast.explanation == full.explanation and fast.hints == full.hints


# -- docking modes and re-matching through the catalog view ---------------------------------------------------


def view_of(*products: Product) -> domain.CatalogView:
    view = domain.CatalogView()
    for p in products:
        view.apply(p)
    return view


def test_plan_by_docking_mode() -> None:
    view = view_of(*(product(f"p{i}", f"bank-{i}") for i in range(2)), product("s", "bank-s", rate_min_bps=480,
                                                                                 rate_max_bps=490))
    sub = domain.StandingSubscription("sub-1", "bank-s", "s", (req("enterprise.special_zones", "eq", "xiamen-ftz"),))
    intelligent = domain.plan(view, demand(), subscriptions=[sub])
    assert [p.product.product_id for p in intelligent.result.picks] == ["p0", "p1", "s"]
    assert intelligent.origins == ("INTELLIGENT_MATCH",) * 3
    active = domain.plan(view, demand(docking_mode="INSTITUTION_ACTIVE"), subscriptions=[sub])
    assert [(p.product.product_id, o) for p, o in zip(active.result.picks, active.origins, strict=True)] == [
        ("s", "INSTITUTION_CLAIMED")]
    none = domain.plan(view, demand(docking_mode="INSTITUTION_ACTIVE"), subscriptions=[])
    assert none.result.picks == () and "pool" in none.result.explanation
    applied = domain.plan(view, demand(docking_mode="ENTERPRISE_ACTIVE", product_id="p1"), subscriptions=[sub])
    assert [(p.product.product_id, o) for p, o in zip(applied.result.picks, applied.origins, strict=True)] == [
        ("p1", "ENTERPRISE_APPLIED")]


def test_rematch_claim_and_pool_fit() -> None:
    view = view_of(*(product(f"p{i}", f"bank-{i}", rate_min_bps=300 + i, rate_max_bps=400 + i) for i in range(5)))
    od = OpenDemand(demand(), active_leads=2, tried=frozenset({"bank-0", "bank-1", "bank-2"}))
    picks = domain.rematch(view, od)
    assert [(p.product.institution_id, p.rank) for p in picks] == [("bank-3", 3)]
    assert domain.rematch(view, replace(od, demand=replace(od.demand, consent_to_share=False))) == ()
    claimed = domain.claim(view, od, "bank-4")
    assert isinstance(claimed, domain.Pick) and claimed.product.product_id == "p4" and claimed.rank == 3
    assert domain.claim(view, od, "bank-0") == "the institution already has (or had) a lead for this demand"
    assert "not one of" in domain.claim(view, od, "bank-4", "p1")  # type: ignore[operator]
    assert "no room" in domain.claim(view, replace(od, active_leads=3), "bank-4")  # type: ignore[operator]
    fit = domain.pool_fit(view, od, "bank-4")
    assert fit is not None and fit.product.product_id == "p4"
    assert domain.pool_fit(view, od, "bank-9") is None
