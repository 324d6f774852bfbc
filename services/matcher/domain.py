"""The matcher's pure core: product validation, eligibility, scoring, lead selection, the
explanation of a demand nothing fits, and the in-memory catalog view.

No I/O and no protobuf here. Money is int fen, rates basis points, terms months. Enumerations
(loan category, product type, status) are their protobuf names without the enum prefix
(``"CREDIT"``, ``"ACTIVE"``); ``""`` stands for a number the contract does not define.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from meshkit.errors import Violations

RULES_VERSION = "basic-eligibility/1"
MAX_LEADS = 3
UNSPECIFIED = "UNSPECIFIED"  # on a demand's loan category: any category is acceptable
ACTIVE = "ACTIVE"

AMOUNT_MAX_FEN = 10**15  # 10 trillion yuan: beyond any plausible single product
TERM_MIN, TERM_MAX = 1, 360
RATE_MIN, RATE_MAX = 0, 3600

# The points each criterion can give; a lead's score (0..100) is the sum of its breakdown.
RATE_POINTS = 35
AMOUNT_POINTS = 25
TERM_POINTS = 20
CATEGORY_POINTS = 10
INSTITUTION_POINTS = 10
AMOUNT_PARTIAL_POINTS = 12  # the product lends less than asked, but at least the least acceptable amount
CATEGORY_ANY_POINTS = 5  # the demand accepts any category


@dataclass(frozen=True)
class Product:
    product_id: str
    institution_id: str
    name: str
    product_type: str
    loan_category: str
    amount_min_fen: int
    amount_max_fen: int
    term_min_months: int
    term_max_months: int
    rate_min_bps: int
    rate_max_bps: int
    status: str
    version: int = 0


@dataclass(frozen=True)
class Demand:
    demand_id: str
    amount_fen: int
    term_months: int
    max_rate_bps: int  # 0 = not stated: any rate
    loan_category: str = UNSPECIFIED
    least_acceptable_amount_fen: int = 0  # 0 = the full amount
    preferred_institution_ids: frozenset[str] = frozenset()
    excluded_institution_ids: frozenset[str] = frozenset()


class Verdict(StrEnum):
    PASS = "pass"
    NEAR = "near"
    FAIL = "fail"


@dataclass(frozen=True)
class CriterionResult:
    criterion: str
    demand_value: str
    product_value: str
    verdict: Verdict
    points: int
    critical: bool = True  # a critical criterion that fails makes the product ineligible


@dataclass(frozen=True)
class Evaluation:
    product: Product
    results: tuple[CriterionResult, ...]

    @property
    def eligible(self) -> bool:
        return not self.failed()

    @property
    def score(self) -> int:
        return sum(r.points for r in self.results)

    def failed(self) -> list[str]:
        return [r.criterion for r in self.results if r.critical and r.verdict is Verdict.FAIL]


@dataclass(frozen=True)
class Pick:
    """A product chosen for a lead: its rank (1 = best), score and breakdown."""

    product: Product
    rank: int
    score: int
    results: tuple[CriterionResult, ...]


@dataclass(frozen=True)
class MatchResult:
    picks: tuple[Pick, ...]
    candidates_considered: int  # active products evaluated
    eligible: int
    explanation: str = ""  # set when there are no picks


# -- validation --------------------------------------------------------------------------------


def prepare_product(p: Product, *, institution_id_ok: Callable[[str], bool]) -> Product:
    """Validate a product as published; return it normalised (an unset status means ACTIVE).

    Raises :class:`meshkit.errors.ValidationFailed` naming every wrong field (``product.<field>``).
    """
    v = Violations()
    v.check(bool(p.product_id.strip()), "product.product_id", "is required")
    v.check(len(p.product_id) <= 128, "product.product_id", "must be at most 128 characters")
    if not p.institution_id:
        v.add("product.institution_id", "is required")
    elif not institution_id_ok(p.institution_id):
        v.add("product.institution_id", "must be 2-63 characters of a-z, 0-9 and '-', starting with a letter or digit")
    v.check(bool(p.name.strip()), "product.name", "is required")
    _check_enum(v, "product.product_type", p.product_type, "product type")
    _check_enum(v, "product.loan_category", p.loan_category, "loan category")
    if p.status == "":
        v.add("product.status", "is not a known product status")
    for name, value in (("amount_min_fen", p.amount_min_fen), ("amount_max_fen", p.amount_max_fen)):
        v.check(0 < value <= AMOUNT_MAX_FEN, f"product.{name}", f"must be between 1 and {AMOUNT_MAX_FEN} fen")
    v.check(p.amount_min_fen <= p.amount_max_fen, "product.amount_min_fen", "must not exceed amount_max_fen")
    for name, value in (("term_min_months", p.term_min_months), ("term_max_months", p.term_max_months)):
        v.check(TERM_MIN <= value <= TERM_MAX, f"product.{name}", f"must be between {TERM_MIN} and {TERM_MAX} months")
    v.check(p.term_min_months <= p.term_max_months, "product.term_min_months", "must not exceed term_max_months")
    for name, value in (("rate_min_bps", p.rate_min_bps), ("rate_max_bps", p.rate_max_bps)):
        v.check(RATE_MIN <= value <= RATE_MAX, f"product.{name}", f"must be between {RATE_MIN} and {RATE_MAX} bps")
    v.check(p.rate_min_bps <= p.rate_max_bps, "product.rate_min_bps", "must not exceed rate_max_bps")
    v.raise_if_any()
    return replace(p, status=ACTIVE) if p.status == UNSPECIFIED else p


def _check_enum(v: Violations, field_name: str, value: str, what: str) -> None:
    if value == "":
        v.add(field_name, f"is not a known {what}")
    elif value == UNSPECIFIED:
        v.add(field_name, "is required")


# -- eligibility and scoring ---------------------------------------------------------------------


def evaluate(product: Product, demand: Demand) -> Evaluation:
    """Every criterion of ``demand`` against ``product``, with its verdict and points."""
    return Evaluation(product, (
        _category(product, demand),
        _amount(product, demand),
        _term(product, demand),
        _rate(product, demand),
        _institution(product, demand),
    ))


def _category(p: Product, d: Demand) -> CriterionResult:
    if d.loan_category == UNSPECIFIED:
        return CriterionResult("loan_category", "any", p.loan_category, Verdict.PASS, CATEGORY_ANY_POINTS)
    if d.loan_category == p.loan_category:
        return CriterionResult("loan_category", d.loan_category, p.loan_category, Verdict.PASS, CATEGORY_POINTS)
    return CriterionResult("loan_category", d.loan_category, p.loan_category, Verdict.FAIL, 0)


def _amount(p: Product, d: Demand) -> CriterionResult:
    shown = fmt_amount_range(p.amount_min_fen, p.amount_max_fen)
    asked = fmt_amount(d.amount_fen)
    if p.amount_min_fen <= d.amount_fen <= p.amount_max_fen:
        return CriterionResult("amount", asked, shown, Verdict.PASS, AMOUNT_POINTS)
    least = d.least_acceptable_amount_fen
    if 0 < least < d.amount_fen and max(p.amount_min_fen, least) <= min(p.amount_max_fen, d.amount_fen):
        return CriterionResult("amount", f"{asked} (at least {fmt_amount(least)})", shown, Verdict.NEAR,
                               AMOUNT_PARTIAL_POINTS)
    return CriterionResult("amount", asked, shown, Verdict.FAIL, 0)


def _term(p: Product, d: Demand) -> CriterionResult:
    shown = f"{p.term_min_months}-{p.term_max_months} months"
    ok = p.term_min_months <= d.term_months <= p.term_max_months
    return CriterionResult("term", f"{d.term_months} months", shown, Verdict.PASS if ok else Verdict.FAIL,
                           TERM_POINTS if ok else 0)


def _rate(p: Product, d: Demand) -> CriterionResult:
    shown = f"{fmt_rate(p.rate_min_bps)}-{fmt_rate(p.rate_max_bps)}"
    if d.max_rate_bps == 0:
        return CriterionResult("rate", "any", shown, Verdict.PASS, RATE_POINTS // 2)
    asked = f"at most {fmt_rate(d.max_rate_bps)}"
    if p.rate_min_bps > d.max_rate_bps:
        return CriterionResult("rate", asked, shown, Verdict.FAIL, 0)
    if p.rate_max_bps <= d.max_rate_bps:
        return CriterionResult("rate", asked, shown, Verdict.PASS, RATE_POINTS)
    # Only part of the product's rate band is under the cap: points for the share that is.
    share = (d.max_rate_bps - p.rate_min_bps) / (p.rate_max_bps - p.rate_min_bps)
    return CriterionResult("rate", asked, shown, Verdict.NEAR, max(1, int(RATE_POINTS * share)))


def _institution(p: Product, d: Demand) -> CriterionResult:
    if p.institution_id in d.excluded_institution_ids:
        return CriterionResult("institution", "excluded", p.institution_id, Verdict.FAIL, 0)
    if not d.preferred_institution_ids:
        return CriterionResult("institution", "no preference", p.institution_id, Verdict.PASS, INSTITUTION_POINTS)
    if p.institution_id in d.preferred_institution_ids:
        return CriterionResult("institution", "preferred", p.institution_id, Verdict.PASS, INSTITUTION_POINTS)
    return CriterionResult("institution", "not preferred", p.institution_id, Verdict.NEAR, 0, critical=False)


def match(products: Iterable[Product], demand: Demand, *, max_leads: int = MAX_LEADS) -> MatchResult:
    """Pick at most ``max_leads`` products, at most one per institution, best score first
    (ties: product id), among the active products ``demand`` is eligible for."""
    evaluations = [evaluate(p, demand) for p in products if p.status == ACTIVE]
    eligible = sorted((e for e in evaluations if e.eligible), key=lambda e: (-e.score, e.product.product_id))
    picks: list[Pick] = []
    institutions: set[str] = set()
    for e in eligible:
        if len(picks) == max_leads:
            break
        if e.product.institution_id in institutions:
            continue
        institutions.add(e.product.institution_id)
        picks.append(Pick(e.product, len(picks) + 1, e.score, e.results))
    explanation = "" if picks else explain_no_match(demand, evaluations)
    return MatchResult(tuple(picks), len(evaluations), len(eligible), explanation)


# -- explaining a demand nothing fits ---------------------------------------------------------------


def explain_no_match(demand: Demand, evaluations: Sequence[Evaluation]) -> str:
    """One short sentence: which criterion keeps the most products out, and what would let them in."""
    if not evaluations:
        return "the catalog has no active product"
    only: dict[str, list[Product]] = {}
    for e in evaluations:
        failed = e.failed()
        if len(failed) == 1:
            only.setdefault(failed[0], []).append(e.product)
    if not only:
        closest = min(evaluations, key=lambda e: (len(e.failed()), e.product.product_id))
        return (f"none of {len(evaluations)} active products fits: the closest ({closest.product.name}) "
                f"fails on {', '.join(closest.failed())}")
    order = ["term", "amount", "rate", "loan_category", "institution"]
    criterion = max(only, key=lambda c: (len(only[c]), -order.index(c)))
    blocked = only[criterion]
    if criterion == "term":
        alt = _closest(demand.term_months, [(p.term_min_months, p.term_max_months) for p in blocked])
        n = sum(p.term_min_months <= alt <= p.term_max_months for p in blocked)
        return f"no active product accepts a term of {demand.term_months} months; {_n(n)} would accept {alt}"
    if criterion == "amount":
        alt = _closest(demand.amount_fen, [(p.amount_min_fen, p.amount_max_fen) for p in blocked])
        n = sum(p.amount_min_fen <= alt <= p.amount_max_fen for p in blocked)
        return f"no active product lends {fmt_amount(demand.amount_fen)}; {_n(n)} would lend {fmt_amount(alt)}"
    if criterion == "rate":
        alt = max(p.rate_min_bps for p in blocked)
        return (f"no active product offers a rate at or below {fmt_rate(demand.max_rate_bps)}; "
                f"{_n(len(blocked))} would at a maximum rate of {fmt_rate(alt)}")
    if criterion == "loan_category":
        cats = sorted({p.loan_category for p in blocked})
        return (f"no active product of category {demand.loan_category} fits; {_n(len(blocked))} of category "
                f"{' or '.join(cats[:3])} would")
    return f"{_n(len(blocked))} would fit but belong to institutions the demand excludes"


def _closest(value: int, ranges: Sequence[tuple[int, int]]) -> int:
    """The value nearest ``value`` inside any of ``ranges`` (ties: the smaller)."""
    candidates = {min(max(value, lo), hi) for lo, hi in ranges}
    return min(candidates, key=lambda c: (abs(c - value), c))


def _n(count: int) -> str:
    return f"{count} product{'s' if count != 1 else ''}"


# -- formatting -------------------------------------------------------------------------------------


def fmt_amount(fen: int) -> str:
    yuan, cents = divmod(fen, 100)
    return f"{yuan:,}.{cents:02d} yuan"


def fmt_amount_range(lo: int, hi: int) -> str:
    return f"{fmt_amount(lo)} - {fmt_amount(hi)}"


def fmt_rate(bps: int) -> str:
    return f"{bps // 100}.{bps % 100:02d}%"


# -- the in-memory catalog view ---------------------------------------------------------------------


def row_hash(product_id: str, version: int) -> int:
    """A signed 64-bit hash of (product id, version); the store computes the same in SQL."""
    digest = hashlib.md5(f"{product_id}:{version}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@dataclass
class CatalogView:
    """Every product by id, latest version only; a change applies only if its version is newer.

    ``checksum`` is the XOR of :func:`row_hash` over all products, comparable with the store's.
    """

    _products: dict[str, Product] = field(default_factory=dict)
    _checksum: int = 0
    _active: tuple[Product, ...] | None = None

    def apply(self, product: Product) -> bool:
        current = self._products.get(product.product_id)
        if current is not None:
            if current.version >= product.version:
                return False
            self._checksum ^= row_hash(current.product_id, current.version)
        self._products[product.product_id] = product
        self._checksum ^= row_hash(product.product_id, product.version)
        self._active = None
        return True

    def get(self, product_id: str) -> Product | None:
        return self._products.get(product_id)

    def active(self) -> tuple[Product, ...]:
        if self._active is None:
            self._active = tuple(p for p in self._products.values() if p.status == ACTIVE)
        return self._active

    def __len__(self) -> int:
        return len(self._products)

    @property
    def checksum(self) -> int:
        return self._checksum
