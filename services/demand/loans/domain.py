"""The loan book's pure core: when a loan matures and when its renewal warning is due."""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date, datetime, timedelta

RENEWAL_NOTICE = timedelta(days=30)  # warned this long before the loan matures


@dataclass(frozen=True)
class Loan:
    lead_id: str
    demand_id: str
    enterprise_uscc: str
    institution_id: str
    amount_fen: int
    rate_bps: int
    term_months: int
    disbursed_at: datetime
    first_loan: bool

    @property
    def matures_on(self) -> date:
        return add_months(self.disbursed_at.date(), self.term_months)

    @property
    def warn_on(self) -> date:
        """The day its renewal warning is due (the day it is disbursed, if that is later)."""
        return max(self.matures_on - RENEWAL_NOTICE, self.disbursed_at.date())


def add_months(day: date, months: int) -> date:
    """``day`` plus ``months`` calendar months, on the same day of the month or the month's last
    (31 January + 1 month = 28 or 29 February)."""
    index = day.month - 1 + months
    year, month = day.year + index // 12, index % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))
