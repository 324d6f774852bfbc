"""The platform's evaluation of an enterprise: deterministic, 0-100, its factors' points sum to the
score, better data never scores lower, and a credit-history decline costs the track record."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from services.demand import evaluation as ev
from services.demand.domain import Enterprise, KeyIndustry, SrdiTier

STRONG = Enterprise(uscc="U1", name="Xiamen Precision", region_code="350200", key_industry=KeyIndustry.AEROSPACE,
                    srdi_tier=SrdiTier.LITTLE_GIANT, high_tech=True, founded_year=2010,
                    annual_revenue_fen=150_000_000 * 100, tax_credit_grade="A")

enterprises = st.builds(
    Enterprise, uscc=st.just("U"), name=st.just("N"), region_code=st.just("350200"),
    key_industry=st.sampled_from(list(KeyIndustry)), srdi_tier=st.sampled_from(list(SrdiTier)),
    high_tech=st.booleans(), founded_year=st.one_of(st.just(0), st.integers(1950, 2026)),
    annual_revenue_fen=st.integers(0, 10**13), tax_credit_grade=st.sampled_from(["", "A", "B", "M", "C", "D"]))
records = st.builds(ev.TrackRecord, st.integers(0, 5), st.integers(0, 2))


def test_a_strong_enterprise_with_a_clean_record_scores_full_marks() -> None:
    x = ev.evaluate(STRONG, ev.TrackRecord(2, 0), year=2026)
    assert (x.score, x.grade) == (100, "A")
    assert [f.factor for f in x.factors] == ["srdi_tier", "tax_credit_grade", "years_in_business",
                                             "annual_revenue_yuan", "high_tech", "key_industry", "track_record"]


def test_a_credit_history_decline_costs_the_track_record() -> None:
    clean = ev.evaluate(STRONG, ev.TrackRecord(2, 0), year=2026)
    declined = ev.evaluate(STRONG, ev.TrackRecord(2, 1), year=2026)
    assert clean.score - declined.score == 10 and declined.factors[-1].points == 0


@given(enterprises, records)
def test_the_factors_sum_to_the_score_within_their_maxima(e: Enterprise, record: ev.TrackRecord) -> None:
    x = ev.evaluate(e, record, year=2026)
    assert x.score == sum(f.points for f in x.factors)
    assert all(0 <= f.points <= f.max_points for f in x.factors) and sum(f.max_points for f in x.factors) == 100
    assert x.grade == ("A" if x.score >= 80 else "B" if x.score >= 60 else "C" if x.score >= 40 else "D")
    assert ev.evaluate(e, record, year=2026) == x


@given(enterprises, records)
def test_better_data_never_scores_lower(e: Enterprise, record: ev.TrackRecord) -> None:
    base = ev.evaluate(e, record, year=2026).score
    richer = replace(e, annual_revenue_fen=e.annual_revenue_fen * 2)
    for better in (replace(e, high_tech=True), replace(e, tax_credit_grade="A"),
                   replace(e, srdi_tier=SrdiTier.LITTLE_GIANT), richer):
        assert ev.evaluate(better, record, year=2026).score >= base
