"""The subsidy funds' pure core: eligibility, the amount of a grant, and the quota ledger.

A grant reserves its amount of its fund's quota when the loan is approved, is recomputed on the
amount disbursed (never more than reserved, the rest going back) and uses the quota then, and gives
it back for reuse when the loan is settled (a reservation whose loan is not disbursed within 90
days lapses). Amounts are fen, rounded down: loan x rate (bps) x term (months) / 12 / 10,000,
capped per loan.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import IntEnum

from meshkit.errors import FailedPrecondition, Violations

MAX_QUOTA_FEN = 10_000_000_000_000  # 100 billion yuan
MAX_SUBSIDY_RATE_BPS = 1000
RESERVATION_DAYS = 90  # an approved loan not disbursed by then gives its reservation back
LAPSED = "the reservation lapsed"
_FUND_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")


class GrantStatus(IntEnum):  # the values of finmesh.subsidy.v1.GrantStatus
    RESERVED = 1
    UTILISED = 2
    RELEASED = 3


@dataclass(frozen=True)
class Fund:
    fund_id: str
    name: str
    quota_fen: int
    subsidy_rate_bps: int
    max_grant_fen: int = 0
    first_loans_only: bool = False
    region_prefixes: tuple[str, ...] = ()
    key_industries: tuple[int, ...] = ()
    max_loan_fen: int = 0
    reserved_fen: int = 0
    utilised_fen: int = 0
    created_at: datetime | None = None

    @property
    def available_fen(self) -> int:
        return self.quota_fen - self.reserved_fen - self.utilised_fen

    def terms(self) -> Fund:
        """What its creator sets (without the ledger and the time stamp)."""
        return replace(self, reserved_fen=0, utilised_fen=0, created_at=None)


@dataclass(frozen=True)
class Loan:
    """An approved or disbursed loan, with what eligibility looks at."""

    lead_id: str
    demand_id: str
    enterprise_uscc: str
    institution_id: str
    amount_fen: int
    term_months: int
    region_code: str
    key_industry: int
    has_borrowed: bool


@dataclass(frozen=True)
class Grant:
    grant_id: str
    fund_id: str
    loan: Loan
    subsidy_fen: int
    status: GrantStatus
    reason: str
    granted_at: datetime
    updated_at: datetime


def validate(f: Fund) -> None:
    v = Violations()
    v.check(bool(_FUND_ID.match(f.fund_id)), "fund.fund_id", "must be 2-63 lower case letters, digits or dashes")
    v.check(bool(f.name.strip()) and len(f.name) <= 200, "fund.name", "is required, at most 200 characters")
    v.check(0 < f.quota_fen <= MAX_QUOTA_FEN, "fund.quota_fen", f"must be positive and at most {MAX_QUOTA_FEN} fen")
    v.check(0 < f.subsidy_rate_bps <= MAX_SUBSIDY_RATE_BPS, "fund.subsidy_rate_bps",
            f"must be 1-{MAX_SUBSIDY_RATE_BPS}")
    v.check(f.max_grant_fen >= 0, "fund.max_grant_fen", "must not be negative (0 = no cap)")
    v.check(f.max_loan_fen >= 0, "fund.max_loan_fen", "must not be negative (0 = any)")
    v.check(all(re.fullmatch(r"\d{2,6}", p) for p in f.region_prefixes), "fund.region_prefixes",
            "must be 2-6 digits each (a prefix of a region code)")
    v.raise_if_any()


def fits(f: Fund, loan: Loan) -> bool:
    """Whether ``loan`` meets every eligibility condition ``f`` sets."""
    return ((not f.first_loans_only or not loan.has_borrowed)
            and (not f.region_prefixes or any(loan.region_code.startswith(p) for p in f.region_prefixes))
            and (not f.key_industries or loan.key_industry in f.key_industries)
            and (not f.max_loan_fen or loan.amount_fen <= f.max_loan_fen))


def amount(f: Fund, loan_fen: int, term_months: int) -> int:
    subsidy = loan_fen * f.subsidy_rate_bps * term_months // (12 * 10_000)
    return min(subsidy, f.max_grant_fen) if f.max_grant_fen else subsidy


def grant(funds: Sequence[Fund], loan: Loan, *, grant_id: str, now: datetime) -> tuple[Grant, Fund] | None:
    """The grant for an approved ``loan`` from the first fund (by id) it fits with room for it, and
    that fund with the amount reserved; None if none fits or has room (or the amount is nothing)."""
    for f in sorted(funds, key=lambda x: x.fund_id):
        subsidy = amount(f, loan.amount_fen, loan.term_months)
        if fits(f, loan) and 0 < subsidy <= f.available_fen:
            g = Grant(grant_id, f.fund_id, loan, subsidy, GrantStatus.RESERVED,
                      f"loan approved: {f.subsidy_rate_bps} bps a year for {loan.term_months} months", now, now)
            return g, replace(f, reserved_fen=f.reserved_fen + subsidy)
    return None


def disbursed(g: Grant, f: Fund, loan_fen: int, *, now: datetime) -> tuple[Grant, Fund]:
    """The loan is disbursed (``loan_fen``): the grant is recomputed on it (at most what was
    reserved) and uses the quota; the rest of the reservation goes back."""
    if g.status != GrantStatus.RESERVED:
        return g, f  # disbursed before: nothing changes
    used = min(amount(f, loan_fen, g.loan.term_months), g.subsidy_fen)
    return (replace(g, status=GrantStatus.UTILISED, subsidy_fen=used, updated_at=now,
                    loan=replace(g.loan, amount_fen=loan_fen), reason="loan disbursed"),
            replace(f, reserved_fen=f.reserved_fen - g.subsidy_fen, utilised_fen=f.utilised_fen + used))


def release(g: Grant, f: Fund, reason: str, *, now: datetime) -> tuple[Grant, Fund]:
    """The grant's quota goes back to its fund; a grant released before stays as it is."""
    if g.status == GrantStatus.RELEASED:
        return g, f
    back = {GrantStatus.RESERVED: (g.subsidy_fen, 0), GrantStatus.UTILISED: (0, g.subsidy_fen)}[g.status]
    return (replace(g, status=GrantStatus.RELEASED, reason=reason, updated_at=now),
            replace(f, reserved_fen=f.reserved_fen - back[0], utilised_fen=f.utilised_fen - back[1]))


def lapsed(g: Grant, f: Fund, *, now: datetime) -> tuple[Grant, Fund]:
    """An approved loan not disbursed within :data:`RESERVATION_DAYS`: its reservation goes back (a
    lead approved is only ever disbursed next, so nothing else would end it)."""
    if g.status != GrantStatus.RESERVED or now - g.updated_at < timedelta(days=RESERVATION_DAYS):
        return g, f
    return release(g, f, f"approved {RESERVATION_DAYS}+ days ago and not disbursed: {LAPSED}", now=now)


def settled(g: Grant, f: Fund, *, now: datetime) -> tuple[Grant, Fund]:
    """The lender reports the loan repaid: a disbursed loan's quota is released for reuse."""
    if g.status == GrantStatus.RESERVED:
        raise FailedPrecondition(f"the loan of lead {g.loan.lead_id} is not disbursed yet")
    return release(g, f, "loan settled: the quota is released for reuse", now=now)
