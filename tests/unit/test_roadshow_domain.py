"""The roadshow's pure core: the monthly plan, validation, eligibility and the selection ranking."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshkit.errors import FailedPrecondition, ValidationFailed
from services.demand import reference
from services.demand.domain import KeyIndustry, SrdiTier
from services.roadshow import domain as r

REF = reference.load()
IC = r.Theme(r.ThemeKind.KEY_INDUSTRY, "Integrated circuits", KeyIndustry.INTEGRATED_CIRCUITS)
CHAIN = r.Theme(r.ThemeKind.SUPPLY_CHAIN, "NEV chain", KeyIndustry.NEV_DEVICES, "supply-chain-stability")
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def ent(uscc: str = "E1", *, tier: int = SrdiTier.PROVINCIAL, industry: int = KeyIndustry.INTEGRATED_CIRCUITS,
        borrowed: bool = True, zones: tuple[str, ...] = ()) -> r.EnterpriseView:
    return r.EnterpriseView(uscc, f"Enterprise {uscc}", industry, tier, borrowed, zones)


def test_the_monthly_plan_is_deterministic_and_well_formed() -> None:
    a = r.plan_month("2026-11", roadshow_id="x", ref=REF)
    assert a == r.plan_month("2026-11", roadshow_id="x", ref=REF)
    assert a.automatic and a.month == "2026-11"
    assert a.held_at == datetime(2026, 11, 15, 6, tzinfo=UTC)
    assert a.applications_open_at == datetime(2026, 10, 1, tzinfo=UTC)
    assert a.applications_close_at == datetime(2026, 11, 8, tzinfo=UTC)
    assert r.validate_roadshow(a, REF).city == a.city
    # January wraps around to the year before for its window
    assert r.plan_month("2027-01", roadshow_id="y", ref=REF).applications_open_at == datetime(2026, 12, 1, tzinfo=UTC)
    assert r.months_to_plan(datetime(2026, 12, 7, 23, tzinfo=UTC)) == ("2026-12", "2027-01")


def test_a_month_whose_applications_closed_is_not_planned_any_more() -> None:
    # a service first started after the 8th would otherwise create an empty roadshow, HELD at once
    assert r.months_to_plan(datetime(2026, 12, 8, tzinfo=UTC)) == ("2027-01",)
    assert r.months_to_plan(datetime(2026, 12, 31, 23, tzinfo=UTC)) == ("2027-01",)


@given(st.integers(min_value=2020, max_value=2100), st.integers(min_value=1, max_value=12))
def test_every_month_plans_a_valid_roadshow(year: int, month: int) -> None:
    plan = r.plan_month(f"{year:04d}-{month:02d}", roadshow_id="x", ref=REF)
    r.validate_roadshow(plan, REF)  # raises if not


def test_consecutive_months_rotate_theme_and_city() -> None:
    a, b = (r.plan_month(m, roadshow_id="x", ref=REF) for m in ("2026-05", "2026-06"))
    assert a.theme != b.theme and a.city != b.city


def test_validation_names_every_wrong_field() -> None:
    held = T0 + timedelta(days=30)
    bad = r.Roadshow("x", "2026-01", r.Theme(r.ThemeKind.SPECIAL_ZONE, "", KeyIndustry.AEROSPACE, "nowhere"),
                     "Atlantis", held, held, held - timedelta(days=1), 0)
    with pytest.raises(ValidationFailed) as info:
        r.validate_roadshow(bad, REF)
    fields = {v.field for v in info.value.violations}
    assert fields == {"roadshow.theme", "roadshow.theme_industry", "roadshow.theme_zone", "roadshow.city",
                      "roadshow.capacity", "roadshow.month", "roadshow.applications_close_at"}


def test_updates_after_selection_are_limited() -> None:
    plan = r.plan_month("2026-04", roadshow_id="x", ref=REF)
    moved = r.updated(plan, r.Roadshow("x", "", IC, "Xiamen", plan.held_at, plan.held_at, plan.held_at, 30),
                      ["city", "capacity", "theme"], REF)
    assert (moved.city, moved.capacity, moved.theme) == ("Xiamen", 30, IC)
    selected = r.Roadshow(**{**plan.__dict__, "status": r.Status.SELECTION})
    with pytest.raises(FailedPrecondition, match="capacity"):
        r.updated(selected, plan, ["capacity"], REF)
    with pytest.raises(ValidationFailed):
        r.updated(plan, plan, ["status"], REF)


def test_an_automatic_roadshow_stays_in_its_month() -> None:
    plan = r.plan_month("2026-04", roadshow_id="x", ref=REF)
    later = r.updated(plan, r.Roadshow("x", "", IC, "", plan.held_at + timedelta(days=10), T0, T0, 0),
                      ["held_at"], REF)
    assert later.month == "2026-04"
    with pytest.raises(ValidationFailed) as info:  # May has its own automatic roadshow
        r.updated(plan, r.Roadshow("x", "", IC, "Atlantis", plan.held_at + timedelta(days=20), T0, T0, 0),
                  ["held_at", "city"], REF)
    assert {(v.field, v.description) for v in info.value.violations} >= {
        ("roadshow.held_at", "must stay in 2026-04: an automatic roadshow is that month's roadshow")}
    assert {v.field for v in info.value.violations} == {"roadshow.held_at", "roadshow.city"}
    extra = r.Roadshow(**{**plan.__dict__, "automatic": False})  # an operator's may move
    assert r.updated(extra, r.Roadshow("x", "", IC, "", plan.held_at + timedelta(days=20), T0, T0, 0),
                     ["held_at"], REF).month == "2026-05"


def test_a_window_defaulted_from_held_at_is_held_ats_fault() -> None:
    held = T0 + timedelta(days=3)
    x = r.Roadshow("x", "", IC, "Xiamen", held, T0, held - r.DEFAULT_CLOSE_BEFORE, 5)
    with pytest.raises(ValidationFailed) as info:
        r.validate_roadshow(x, REF, close_defaulted=True)
    assert [v.field for v in info.value.violations] == ["roadshow.held_at"]
    with pytest.raises(ValidationFailed) as info:
        r.validate_roadshow(x, REF)
    assert [v.field for v in info.value.violations] == ["roadshow.applications_close_at"]


def test_eligibility_says_every_reason() -> None:
    assert r.refusal_reasons(ent(), IC) == []
    assert r.refusal_reasons(ent(tier=SrdiTier.LITTLE_GIANT), IC) == []
    reasons = r.refusal_reasons(ent(tier=SrdiTier.INNOVATIVE_SME, industry=KeyIndustry.AEROSPACE), IC)
    assert len(reasons) == 2
    assert "INNOVATIVE_SME" in reasons[0] and "provincial" in reasons[0]
    assert "INTEGRATED_CIRCUITS" in reasons[1] and "AEROSPACE" in reasons[1]
    # a supply chain theme: the chain's industry or its zone
    assert r.refusal_reasons(ent(industry=KeyIndustry.AEROSPACE, zones=("supply-chain-stability",)), CHAIN) == []
    assert "supply-chain-stability" in r.refusal_reasons(ent(industry=KeyIndustry.AEROSPACE), CHAIN)[0]


def test_the_ranking_follows_the_documented_points() -> None:
    big = r.Candidate(ent("A", tier=SrdiTier.LITTLE_GIANT), 100_000_000 * 100, T0)
    first_timer = r.Candidate(ent("B", borrowed=False), 100 * 100, T0)
    plain = r.Candidate(ent("C"), 100 * 100, T0 - timedelta(days=1))
    ineligible = r.Candidate(ent("D", tier=SrdiTier.NONE), 10**12, T0)
    out = r.select([plain, ineligible, first_timer, big], IC, capacity=2)
    assert [x.uscc for x in out] == ["A", "B", "C", "D"]
    assert [x.score for x in out] == [40 + 20 + 20, 25 + 20 + 5 + 15, 25 + 20 + 5, 0]
    assert [x.selected for x in out] == [True, True, False, False]
    assert "capacity of 2 was reached" in out[2].reason and "no longer eligible" in out[3].reason
    assert {c.criterion for c in out[0].criteria} == {"srdi_tier", "theme_industry", "theme_zone", "amount_sought",
                                                     "first_time_borrower"}


def test_ties_go_to_the_earlier_application_then_the_lower_uscc() -> None:
    later, earlier, same = (r.Candidate(ent(u), 100, T0 + timedelta(hours=h))
                            for u, h in (("A", 2), ("Z", 1), ("B", 2)))
    assert [x.uscc for x in r.select([later, same, earlier], IC, 3)] == ["Z", "A", "B"]


candidates = st.lists(
    st.builds(
        r.Candidate,
        st.builds(ent, st.text("ABCDEFGH", min_size=1, max_size=4),
                  tier=st.sampled_from(list(SrdiTier)), industry=st.sampled_from(list(KeyIndustry)),
                  borrowed=st.booleans(), zones=st.sampled_from([(), ("supply-chain-stability",)])),
        st.integers(min_value=1, max_value=10**12),
        st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2026, 2, 1), timezones=st.just(UTC)),
    ),
    max_size=25, unique_by=lambda c: c.enterprise.uscc,
)


@settings(max_examples=150, deadline=None)
@given(candidates, st.integers(min_value=1, max_value=10), st.sampled_from([IC, CHAIN]), st.randoms())
def test_selection_is_deterministic_and_respects_capacity(cs, capacity, theme, rnd) -> None:
    out = r.select(cs, theme, capacity)
    shuffled = list(cs)
    rnd.shuffle(shuffled)
    assert r.select(shuffled, theme, capacity) == out  # input order does not matter
    eligible = [c for c in cs if not r.refusal_reasons(c.enterprise, theme)]
    assert sum(x.selected for x in out) == min(capacity, len(eligible))
    assert sorted(x.uscc for x in out) == sorted(c.enterprise.uscc for c in cs)
    ranked = [x for x in out if x.eligible]
    assert [x.rank for x in ranked] == list(range(1, len(ranked) + 1))
    assert all(a.score >= b.score for a, b in zip(ranked, ranked[1:], strict=False))
    assert all(x.score == sum(c.points for c in x.criteria) for x in ranked)


def test_due_status_follows_the_clock() -> None:
    plan = r.plan_month("2026-04", roadshow_id="x", ref=REF)
    assert r.due_status(plan, plan.applications_open_at - timedelta(seconds=1)) == r.Status.PLANNED
    assert r.due_status(plan, plan.applications_open_at) == r.Status.OPEN_FOR_APPLICATIONS
    assert r.due_status(plan, plan.applications_close_at) == r.Status.SELECTION
    assert r.due_status(plan, plan.held_at) == r.Status.HELD


def test_intents_and_investors_are_checked() -> None:
    from meshkit.errors import Violations

    v = Violations()
    req = r.check_intent(v, r.IntentRequest("rs", "fund-a", "91350200MA2XXXXXX1", 0, 9, "x" * 1001, 400))
    assert {x.field for x in v.items} >= {"enterprise_uscc", "intended_amount_fen", "instrument", "note",
                                         "term_months"}
    ok = r.check_intent(Violations(), r.IntentRequest("rs", "fund-a", "U", 1, 1))
    assert ok.term_months == 12 and req.term_months == 400
    assert r.investor_refusal(3) is None
    assert "banks, insurers and funds" in (r.investor_refusal(4) or "")


def test_a_roadshow_intents_demand_neither_is_nor_makes_a_duplicate() -> None:
    from services.demand import domain as d

    need = d.DemandRequest(enterprise_uscc="U", amount_fen=100, term_months=12)
    recent = [d.RecentDemand("x", "U", 100, 12, 0, d.DemandStatus.MATCHING, T0, d.Channel.ONLINE_PORTAL)]
    assert d.find_duplicate(need, d.Channel.API, recent, now=T0) == "x"
    assert d.find_duplicate(need, d.Channel.ROADSHOW, recent, now=T0) is None
    from_roadshow = [d.RecentDemand("y", "U", 100, 12, 0, d.DemandStatus.LEADS_ISSUED, T0, d.Channel.ROADSHOW)]
    assert d.find_duplicate(need, d.Channel.API, from_roadshow, now=T0) is None
    lead = d.intent_lead(lead_id="l", demand_id="y", institution_id="fund-a", at=T0, contact_sla_hours=48,
                         roadshow_id="rs", intent="3000000 yuan, EQUITY")
    assert (lead.origin, lead.status, lead.contact_due_at) == (4, d.LeadStatus.CREATED, T0 + timedelta(hours=48))
    assert d.match_outcome(d.DemandStatus.MATCHING, (lead,), "", at=T0, actor="roadshow").leads[0].status == \
        d.LeadStatus.DELIVERED
