"""The loan book's pure core: a loan matures its term in calendar months after disbursal (on the
month's last day when the day does not exist), and is warned of 30 days before."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.demand.loans import domain as ln


@pytest.mark.parametrize(("day", "months", "expected"), [
    (date(2026, 1, 31), 1, date(2026, 2, 28)),
    (date(2028, 1, 31), 1, date(2028, 2, 29)),  # a leap year
    (date(2026, 11, 28), 12, date(2027, 11, 28)),
    (date(2026, 8, 31), 6, date(2027, 2, 28)),
    (date(2026, 12, 15), 1, date(2027, 1, 15)),
])
def test_add_months(day: date, months: int, expected: date) -> None:
    assert ln.add_months(day, months) == expected


@given(st.dates(min_value=date(2000, 1, 1), max_value=date(2090, 1, 1)), st.integers(1, 360))
def test_a_loan_matures_after_its_term_and_is_warned_30_days_before_or_at_disbursal(day: date, months: int) -> None:
    loan = ln.Loan("l", "d", "U", "bank", 100, 400, months, datetime(day.year, day.month, day.day, tzinfo=UTC), True)
    matures = loan.matures_on
    assert (matures.year - day.year) * 12 + matures.month - day.month == months
    assert matures.day <= day.day
    assert loan.warn_on == max(matures - ln.RENEWAL_NOTICE, day)
