"""The platform's evaluation of an enterprise ("intelligent evaluation", the article's second core
function after finding): a pure, deterministic score from 0 to 100 whose factors' points sum to it,
from the enterprise's data and its record on the platform. Institutions holding a lead for one of
its demands see it (``EnterpriseService.EvaluateEnterprise``)."""

from __future__ import annotations

from dataclasses import dataclass

from services.demand.domain import Enterprise, KeyIndustry, SrdiTier

RULES_VERSION = "evaluation-2026-11"
YUAN = 100


@dataclass(frozen=True)
class TrackRecord:
    """What the platform knows of an enterprise's past financing."""

    loans_disbursed: int
    declined_for_credit_history: int


@dataclass(frozen=True)
class Factor:
    factor: str
    value: str
    points: int
    max_points: int


@dataclass(frozen=True)
class Evaluation:
    uscc: str
    score: int
    grade: str
    factors: tuple[Factor, ...]
    rules_version: str = RULES_VERSION


def _band(value: int, bands: tuple[tuple[int, int], ...], otherwise: int) -> int:
    """The points of the first band (threshold, points) that ``value`` reaches."""
    return next((points for threshold, points in bands if value >= threshold), otherwise)


_SRDI = {SrdiTier.LITTLE_GIANT: 20, SrdiTier.PROVINCIAL: 15, SrdiTier.INNOVATIVE_SME: 8}
_TAX = {"A": 20, "B": 14, "M": 8, "C": 3, "D": 0, "": 6}  # "": not known, neither good nor bad


def evaluate(e: Enterprise, record: TrackRecord, *, year: int) -> Evaluation:
    years = max(0, year - e.founded_year) if e.founded_year else 0
    factors = (
        Factor("srdi_tier", SrdiTier(e.srdi_tier).name, _SRDI.get(SrdiTier(e.srdi_tier), 0), 20),
        Factor("tax_credit_grade", e.tax_credit_grade or "unknown", _TAX.get(e.tax_credit_grade, 0), 20),
        Factor("years_in_business", str(years), _band(years, ((10, 15), (5, 10), (3, 6)), 2 if years else 0), 15),
        Factor("annual_revenue_yuan", f"{e.annual_revenue_fen // YUAN:,}",
               _band(e.annual_revenue_fen, ((100_000_000 * YUAN, 15), (20_000_000 * YUAN, 11),
                                            (5_000_000 * YUAN, 7), (1, 3)), 0), 15),
        Factor("high_tech", "yes" if e.high_tech else "no", 10 if e.high_tech else 0, 10),
        Factor("key_industry", KeyIndustry(e.key_industry).name, 0 if e.key_industry == KeyIndustry.UNSPECIFIED else 10,
               10),
        Factor("track_record", f"{record.loans_disbursed} loan(s) disbursed, "
                               f"{record.declined_for_credit_history} declined for credit history",
               0 if record.declined_for_credit_history else 10 if record.loans_disbursed else 5, 10),
    )
    score = sum(f.points for f in factors)
    grade = "A" if score >= 80 else "B" if score >= 60 else "C" if score >= 40 else "D"
    return Evaluation(e.uscc, score, grade, factors)
