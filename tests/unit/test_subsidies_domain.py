"""The subsidy funds' pure core: eligibility, the amount of a grant, and a ledger that never
overdraws a fund and gives quota back when a loan ends."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshkit.errors import FailedPrecondition, ValidationFailed
from services.demand.subsidies import domain as s

NOW = datetime(2026, 11, 28, tzinfo=UTC)
XIAMEN = s.Fund(fund_id="xiamen-first-loans", name="Xiamen first-loan interest subsidy", quota_fen=1_000_000,
                subsidy_rate_bps=100, max_grant_fen=300_000, first_loans_only=True, region_prefixes=("3502",),
                max_loan_fen=50_000_000)


def loan(**kw: object) -> s.Loan:
    base: dict[str, object] = dict(lead_id="lead-1", demand_id="d-1", enterprise_uscc="U1", institution_id="bank-a",
                                   amount_fen=10_000_000, term_months=12, region_code="350203", key_industry=3,
                                   has_borrowed=False)
    base.update(kw)
    return s.Loan(**base)  # type: ignore[arg-type]


def test_a_fund_with_wrong_terms_is_refused_naming_each() -> None:
    with pytest.raises(ValidationFailed) as err:
        s.validate(s.Fund(fund_id="Bad Id", name=" ", quota_fen=0, subsidy_rate_bps=5000, max_grant_fen=-1,
                          region_prefixes=("35a",), max_loan_fen=-2))
    assert {v.field for v in err.value.violations} == {
        "fund.fund_id", "fund.name", "fund.quota_fen", "fund.subsidy_rate_bps", "fund.max_grant_fen",
        "fund.region_prefixes", "fund.max_loan_fen"}
    s.validate(XIAMEN)


@pytest.mark.parametrize(("changes", "fits"), [
    ({}, True),
    ({"has_borrowed": True}, False),  # a first-loan fund
    ({"region_code": "510703"}, False),  # outside Xiamen
    ({"amount_fen": 50_000_001}, False),  # above the fund's largest loan
])
def test_eligibility(changes: dict[str, object], fits: bool) -> None:
    assert s.fits(XIAMEN, loan(**changes)) is fits


def test_the_amount_is_the_rate_over_the_term_rounded_down_and_capped() -> None:
    assert s.amount(XIAMEN, 10_000_000, 12) == 100_000  # 1% of 100,000 yuan for a year
    assert s.amount(XIAMEN, 10_000_001, 7) == 58_333
    assert s.amount(XIAMEN, 50_000_000, 36) == 300_000  # 1,500,000 capped


def test_a_grant_comes_from_the_first_fund_that_fits_and_has_room() -> None:
    full = s.Fund(fund_id="a-full", name="A", quota_fen=1_000_000, subsidy_rate_bps=100, reserved_fen=950_000)
    other_region = s.Fund(fund_id="b-suzhou", name="B", quota_fen=9_000_000, subsidy_rate_bps=100,
                          region_prefixes=("3205",))
    made = s.grant([XIAMEN, other_region, full], loan(), grant_id="g", now=NOW)
    assert made is not None
    g, f = made
    assert (g.fund_id, g.subsidy_fen, g.status) == ("xiamen-first-loans", 100_000, s.GrantStatus.RESERVED)
    assert (f.reserved_fen, f.available_fen) == (100_000, 900_000)
    assert s.grant([full, other_region], loan(), grant_id="g", now=NOW) is None


def test_disbursal_uses_no_more_than_was_reserved_and_settlement_gives_it_back() -> None:
    g, f = s.grant([XIAMEN], loan(), grant_id="g", now=NOW) or pytest.fail("no grant")
    used, f = s.disbursed(g, f, 8_000_000, now=NOW)
    assert (used.subsidy_fen, used.status) == (80_000, s.GrantStatus.UTILISED)
    assert (f.reserved_fen, f.utilised_fen) == (0, 80_000)
    again, same = s.disbursed(used, f, 8_000_000, now=NOW)
    assert (again, same) == (used, f)
    more, f2 = s.disbursed(g, replace(XIAMEN, reserved_fen=100_000), 20_000_000, now=NOW)
    assert more.subsidy_fen == 100_000 and f2.utilised_fen == 100_000  # never more than reserved
    released, f = s.settled(used, f, now=NOW)
    assert released.status == s.GrantStatus.RELEASED and f.available_fen == XIAMEN.quota_fen
    with pytest.raises(FailedPrecondition):
        s.settled(g, f, now=NOW)  # not disbursed yet


@given(st.lists(st.tuples(st.sampled_from(["approve", "disburse", "decline", "settle"]), st.integers(0, 5),
                          st.integers(1, 60_000_000), st.integers(1, 60)), max_size=40))
def test_the_ledger_never_overdraws_and_matches_the_grants(steps: list[tuple[str, int, int, int]]) -> None:
    f = XIAMEN
    grants: dict[int, s.Grant] = {}
    for action, n, amount_fen, term in steps:
        g = grants.get(n)
        try:
            if action == "approve" and g is None:
                made = s.grant([f], loan(lead_id=f"l{n}", amount_fen=amount_fen, term_months=term), grant_id=f"g{n}",
                               now=NOW)
                if made:
                    grants[n], f = made
            elif action == "disburse" and g is not None:
                grants[n], f = s.disbursed(g, f, amount_fen, now=NOW)
            elif action == "decline" and g is not None and g.status == s.GrantStatus.RESERVED:
                grants[n], f = s.release(g, f, "declined", now=NOW)
            elif action == "settle" and g is not None:
                grants[n], f = s.settled(g, f, now=NOW)
        except FailedPrecondition:
            pass
        assert 0 <= f.available_fen <= f.quota_fen
        held = list(grants.values())
        assert f.reserved_fen == sum(x.subsidy_fen for x in held if x.status == s.GrantStatus.RESERVED)
        assert f.utilised_fen == sum(x.subsidy_fen for x in held if x.status == s.GrantStatus.UTILISED)


def test_a_reservation_lapses_when_its_loan_is_not_disbursed_within_90_days() -> None:
    g, f = s.grant([XIAMEN], loan(), grant_id="g", now=NOW) or pytest.fail("no grant")
    assert s.lapsed(g, f, now=NOW + timedelta(days=89)) == (g, f)
    released, back = s.lapsed(g, f, now=NOW + timedelta(days=90))
    assert released.status == s.GrantStatus.RELEASED and "lapsed" in released.reason
    assert back.available_fen == XIAMEN.quota_fen
    used, f = s.disbursed(g, f, 10_000_000, now=NOW)
    assert s.lapsed(used, f, now=NOW + timedelta(days=400)) == (used, f)  # disbursed: only settlement ends it
