"""The matcher's pure core: product validation, eligibility as data, explainable scoring, lead
selection, the explanation of (and hints for) a demand nothing fits, the reverse join of a
product against open demands, institutions' responsiveness, and the in-memory catalog view.

No I/O and no protobuf here. Money is int fen, rates basis points, terms months. Enumerations
(loan category, collateral, product type, status…) are their protobuf names without the enum
prefix (``"CREDIT"``, ``"ACTIVE"``); ``""`` stands for a number the contract does not define.

Eligibility is data. Every product yields a list of criteria: the *standard* ones derived from
its columns (amount, term and rate ranges, loan category, collateral, industries, special zones,
regions) and its explicit ``requirements`` — ``{field, operator, values, critical}`` over the
fields of :data:`FIELDS` (the demand's and the enterprise's). A critical criterion that fails
excludes the product; any other criterion only lowers the score. The score (0..100) is the sum
of the points of the breakdown, always.
"""

from __future__ import annotations

import hashlib
from bisect import insort
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import lru_cache

from meshkit.errors import Violations

RULES_VERSION = "eligibility-as-data/2"
MAX_LEADS = 3  # institutions contacting one demand at a time
MAX_INSTITUTIONS_TRIED = 6  # institutions one demand may ever be handed to (re-matching stops there)
UNSPECIFIED = "UNSPECIFIED"  # on a demand's loan category: any category is acceptable
ACTIVE = "ACTIVE"
ANY = "*"  # the catalog index's key for "any category"

AMOUNT_MAX_FEN = 10**15  # 10 trillion yuan: beyond any plausible single product
TERM_MIN, TERM_MAX = 1, 360
RATE_MIN, RATE_MAX = 0, 3600

# The vocabulary (protobuf enum names without prefix); tests/unit/test_matcher_mapping.py checks
# these against the contract.
LOAN_CATEGORIES = ("CREDIT", "MORTGAGE", "PLEDGE", "GUARANTEED", "RECEIVABLES", "EQUIPMENT", "TECH_TRANSFORMATION",
                   "PILOT_STAGE", "FIRST_LOAN", "RENEWAL")
COLLATERALS = ("NONE", "PROPERTY", "EQUIPMENT", "RECEIVABLES", "IP", "GUARANTEE")
KEY_INDUSTRIES = ("INTEGRATED_CIRCUITS", "NEV_DEVICES", "INTELLIGENT_EQUIPMENT", "PETROCHEMICAL",
                  "ELECTRONIC_COMPONENTS", "BIOMEDICINE", "ARTIFICIAL_INTELLIGENCE", "NEW_MATERIALS",
                  "5G_INDUSTRIAL_INTERNET", "AEROSPACE")
SIZES = ("MICRO", "SMALL", "MEDIUM", "LARGE")  # ascending
SRDI_TIERS = ("NONE", "INNOVATIVE_SME", "PROVINCIAL", "LITTLE_GIANT")  # ascending
PURPOSES = ("WORKING_CAPITAL", "EQUIPMENT_RENEWAL", "TECHNOLOGY_UPGRADE", "RESEARCH_AND_DEVELOPMENT",
            "MARKET_EXPANSION", "RECEIVABLES")
TAX_GRADES = ("D", "C", "M", "B", "A")  # ascending
PRODUCT_STATUSES = ("DRAFT", "ACTIVE", "SUSPENDED", "RETIRED")

# The points each criterion can give; they add up to 100.
RATE_POINTS = 15
AMOUNT_POINTS = 15
TERM_POINTS = 15
CATEGORY_POINTS = 10
COLLATERAL_POINTS = 5
INDUSTRY_POINTS = 5
ZONE_POINTS = 5
REGION_POINTS = 5
REQUIREMENT_POINTS = 10  # shared by a product's explicit requirements
INSTITUTION_POINTS = 5
RESPONSIVENESS_POINTS = 10
MAX_SCORE = (RATE_POINTS + AMOUNT_POINTS + TERM_POINTS + CATEGORY_POINTS + COLLATERAL_POINTS + INDUSTRY_POINTS
             + ZONE_POINTS + REGION_POINTS + REQUIREMENT_POINTS + INSTITUTION_POINTS + RESPONSIVENESS_POINTS)
assert MAX_SCORE == 100
AMOUNT_PARTIAL_POINTS = 7  # the product lends less than asked, but at least the least acceptable amount
CATEGORY_ANY_POINTS = 5  # the demand accepts any category


# -- the data ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Requirement:
    """One eligibility criterion as data: ``field operator values``."""

    field: str
    operator: str
    values: tuple[str, ...]
    critical: bool = True


@dataclass(frozen=True, slots=True)
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
    collateral_required: str = UNSPECIFIED  # UNSPECIFIED or NONE: no collateral needed
    industries: frozenset[str] = frozenset()  # empty = every industry
    special_zones: frozenset[str] = frozenset()  # empty = anywhere
    regions: tuple[str, ...] = ()  # region codes or prefixes; empty = nationwide
    programme_tags: tuple[str, ...] = ()
    requirements: tuple[Requirement, ...] = ()
    renewal_support: bool = False
    valid_from: int = 0  # epoch seconds; 0 = always
    valid_until: int = 0  # epoch seconds; 0 = forever
    updated_at: int = 0  # epoch seconds, set by the catalog


@dataclass(frozen=True, slots=True)
class Enterprise:
    """What eligibility may look at about the enterprise (as it was when the demand was accepted)."""

    uscc: str = ""
    region_code: str = ""
    key_industry: str = UNSPECIFIED
    size: str = UNSPECIFIED
    srdi_tier: str = UNSPECIFIED
    high_tech: bool = False
    founded_year: int = 0
    annual_revenue_fen: int = 0
    employees: int = 0
    tax_credit_grade: str = ""
    has_borrowed: bool = False
    special_zones: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Demand:
    demand_id: str
    amount_fen: int
    term_months: int
    max_rate_bps: int  # 0 = not stated: any rate
    loan_category: str = UNSPECIFIED
    least_acceptable_amount_fen: int = 0  # 0 = the full amount
    preferred_institution_ids: frozenset[str] = frozenset()
    excluded_institution_ids: frozenset[str] = frozenset()
    purpose: str = UNSPECIFIED
    collateral_offered: frozenset[str] = frozenset()
    first_loan: bool = False
    consent_to_share: bool = False  # without it, the demand goes only to its first match's institutions
    enterprise: Enterprise = Enterprise()
    as_of_year: int = 0  # the year the demand was accepted (for years in business); 0 = unknown
    product_id: str = ""  # enterprise-active: the product applied for
    docking_mode: str = UNSPECIFIED  # INTELLIGENT (also when unspecified), ENTERPRISE_ACTIVE, INSTITUTION_ACTIVE

    @property
    def least_amount(self) -> int:
        least = self.least_acceptable_amount_fen
        return least if 0 < least < self.amount_fen else self.amount_fen


class Verdict(StrEnum):
    PASS = "pass"
    NEAR = "near"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class CriterionResult:
    criterion: str
    demand_value: str
    product_value: str
    verdict: Verdict
    points: int
    critical: bool = True  # a critical criterion that fails makes the product ineligible


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class Pick:
    """A product chosen for a lead: its rank (1 = best), score and breakdown."""

    product: Product
    rank: int
    score: int
    results: tuple[CriterionResult, ...]


@dataclass(frozen=True, slots=True)
class Hint:
    """A counterfactual: changing ``criterion`` to ``suggestion`` would make ``products`` eligible."""

    criterion: str
    suggestion: str
    products: int
    text: str


@dataclass(frozen=True)
class MatchResult:
    picks: tuple[Pick, ...]
    candidates_considered: int  # active products evaluated
    eligible: int
    explanation: str = ""  # set when there are no picks
    hints: tuple[Hint, ...] = ()


@dataclass(frozen=True, slots=True)
class Responsiveness:
    """An institution's measured record: leads received, contacted, decided and approved, and the
    median time from lead to first contact."""

    leads: int = 0
    contacted: int = 0
    decided: int = 0
    approved: int = 0
    median_contact_seconds: int = 0


# -- the fields requirements may name ------------------------------------------------------------------


class Kind(StrEnum):
    INT = "int"
    BOOL = "bool"
    ORDERED = "ordered"  # an enumeration with an order (size, SRDI tier, tax grade)
    ENUM = "enum"
    SET = "set"  # the subject holds several values (collateral offered, special zones)
    PREFIX = "prefix"  # region codes: a value matches every code it prefixes


@dataclass(frozen=True)
class FieldSpec:
    kind: Kind
    choices: tuple[str, ...] = ()  # ENUM/ORDERED/SET of enum: the known values (ascending for ORDERED)
    get: Callable[[Demand], object] = field(default=lambda d: None, compare=False)


def _years(d: Demand) -> int | None:
    f = d.enterprise.founded_year
    return max(0, d.as_of_year - f) if f and d.as_of_year else None


FIELDS: dict[str, FieldSpec] = {
    "demand.amount_fen": FieldSpec(Kind.INT, get=lambda d: d.amount_fen),
    "demand.term_months": FieldSpec(Kind.INT, get=lambda d: d.term_months),
    "demand.max_rate_bps": FieldSpec(Kind.INT, get=lambda d: d.max_rate_bps),
    "demand.loan_category": FieldSpec(Kind.ENUM, LOAN_CATEGORIES, lambda d: d.loan_category),
    "demand.purpose": FieldSpec(Kind.ENUM, PURPOSES, lambda d: d.purpose),
    "demand.collateral_offered": FieldSpec(Kind.SET, COLLATERALS, lambda d: d.collateral_offered),
    "demand.first_loan": FieldSpec(Kind.BOOL, get=lambda d: d.first_loan),
    "enterprise.region_code": FieldSpec(Kind.PREFIX, get=lambda d: d.enterprise.region_code or None),
    "enterprise.key_industry": FieldSpec(Kind.ENUM, KEY_INDUSTRIES, lambda d: d.enterprise.key_industry),
    "enterprise.size": FieldSpec(Kind.ORDERED, SIZES, lambda d: d.enterprise.size),
    "enterprise.srdi_tier": FieldSpec(Kind.ORDERED, SRDI_TIERS, lambda d: d.enterprise.srdi_tier),
    "enterprise.high_tech": FieldSpec(Kind.BOOL, get=lambda d: d.enterprise.high_tech),
    "enterprise.first_time_borrower": FieldSpec(Kind.BOOL, get=lambda d: not d.enterprise.has_borrowed),
    "enterprise.years_in_business": FieldSpec(Kind.INT, get=_years),
    "enterprise.annual_revenue_fen": FieldSpec(Kind.INT, get=lambda d: d.enterprise.annual_revenue_fen or None),
    "enterprise.employees": FieldSpec(Kind.INT, get=lambda d: d.enterprise.employees or None),
    "enterprise.tax_credit_grade": FieldSpec(Kind.ORDERED, TAX_GRADES, lambda d: d.enterprise.tax_credit_grade),
    "enterprise.special_zones": FieldSpec(Kind.SET, get=lambda d: d.enterprise.special_zones),
}

OPERATORS: dict[Kind, tuple[str, ...]] = {
    Kind.INT: ("eq", "ne", "gte", "lte", "gt", "lt", "in", "not_in"),
    Kind.BOOL: ("eq", "ne"),
    Kind.ORDERED: ("eq", "ne", "gte", "lte", "gt", "lt", "in", "not_in"),
    Kind.ENUM: ("eq", "ne", "in", "not_in"),
    Kind.SET: ("eq", "in", "not_in"),  # eq: holds the value; in: holds any of them; not_in: none of them
    Kind.PREFIX: ("eq", "in", "not_in"),  # eq/in: starts with (any of) the values
}
_SINGLE = {"eq", "ne", "gte", "lte", "gt", "lt"}


def check_requirement(v: Violations, at: str, r: Requirement) -> None:
    """Add a violation (``<at>.field``, ``.operator``, ``.values``) for everything wrong in ``r``."""
    spec = FIELDS.get(r.field)
    if spec is None:
        v.add(f"{at}.field", f"is not a known field (one of {', '.join(sorted(FIELDS))})")
        return
    ops = OPERATORS[spec.kind]
    if r.operator not in ops:
        v.add(f"{at}.operator", f"must be one of {', '.join(ops)} for {r.field}")
        return
    if not r.values:
        v.add(f"{at}.values", "needs at least one value")
        return
    if r.operator in _SINGLE and len(r.values) != 1:
        v.add(f"{at}.values", f"needs exactly one value for {r.operator}")
        return
    for value in r.values:
        problem = _value_problem(spec, value)
        if problem:
            v.add(f"{at}.values", f"{value!r} {problem}")
            return


def _value_problem(spec: FieldSpec, value: str) -> str:
    if spec.kind is Kind.INT:
        try:
            int(value)
        except ValueError:
            return "is not an integer"
        return ""
    if spec.kind is Kind.BOOL:
        return "" if value in ("true", "false") else "must be true or false"
    if spec.kind is Kind.PREFIX:
        return "" if value.isdigit() and 1 <= len(value) <= 6 else "must be 1-6 digits of a region code"
    if spec.choices and value not in spec.choices:
        return f"is not one of {', '.join(spec.choices)}"
    return "" if value else "must not be empty"


@lru_cache(maxsize=65536)
def _predicate(r: Requirement) -> Callable[[object], bool]:
    """The compiled test of a (valid) requirement against a field's value (never None)."""
    spec = FIELDS[r.field]
    op, vals = r.operator, r.values
    if spec.kind is Kind.INT or spec.kind is Kind.ORDERED:
        if spec.kind is Kind.INT:
            key: Callable[[object], int] = int  # type: ignore[assignment]
            wanted = [int(x) for x in vals]
        else:
            order = {c: i for i, c in enumerate(spec.choices)}
            key = lambda x: order.get(x, -1)  # type: ignore[arg-type]  # noqa: E731
            wanted = [order[x] for x in vals]
        w = wanted[0]
        compare: dict[str, Callable[[int], bool]] = {
            "eq": lambda x: x == w, "ne": lambda x: x != w, "gte": lambda x: x >= w, "lte": lambda x: x <= w,
            "gt": lambda x: x > w, "lt": lambda x: x < w,
            "in": lambda x: x in wanted, "not_in": lambda x: x not in wanted,
        }
        test = compare[op]
        return lambda x: test(key(x))
    if spec.kind is Kind.BOOL:
        b = vals[0] == "true"
        return (lambda x: x == b) if op == "eq" else (lambda x: x != b)
    if spec.kind is Kind.ENUM:
        s = frozenset(vals)
        return {"eq": lambda x: x in s, "in": lambda x: x in s,
                "ne": lambda x: x not in s, "not_in": lambda x: x not in s}[op]
    if spec.kind is Kind.SET:
        s = frozenset(vals)
        return (lambda x: not (s & x)) if op == "not_in" else (lambda x: bool(s & x))  # type: ignore[operator]
    prefixes = tuple(vals)
    return (lambda x: not str(x).startswith(prefixes)) if op == "not_in" else (lambda x: str(x).startswith(prefixes))


def fact(demand: Demand, field_name: str) -> object | None:
    """The value of ``field_name`` for ``demand`` (None if unknown: an unknown value fails)."""
    value = FIELDS[field_name].get(demand)
    return None if value in (None, UNSPECIFIED, "") else value


def requirement_holds(r: Requirement, demand: Demand) -> bool:
    value = fact(demand, r.field)
    return value is not None and _predicate(r)(value)


def criteria_hold(criteria: Iterable[Requirement], demand: Demand) -> bool:
    """Every criterion holds (a standing subscription's test)."""
    return all(requirement_holds(r, demand) for r in criteria)


def describe(r: Requirement) -> str:
    return f"{r.operator} {','.join(r.values)}"


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
    v.check(p.collateral_required != "", "product.collateral_required", "is not a known collateral")
    v.check("" not in p.industries and UNSPECIFIED not in p.industries, "product.industries",
            "must name known key industries")
    v.check(all(z.strip() for z in p.special_zones), "product.special_zones", "must not contain empty names")
    v.check(all(r.isdigit() and 1 <= len(r) <= 6 for r in p.regions), "product.regions",
            "must be 1-6 digit region codes or prefixes")
    v.check(all(t.strip() for t in p.programme_tags), "product.programme_tags", "must not contain empty tags")
    v.check(not (p.valid_from and p.valid_until) or p.valid_from < p.valid_until, "product.valid_from",
            "must be before valid_until")
    for i, r in enumerate(p.requirements):
        check_requirement(v, f"product.requirements[{i}]", r)
    v.raise_if_any()
    return replace(p, status=ACTIVE) if p.status == UNSPECIFIED else p


def validate_criteria(criteria: Sequence[Requirement], at: str) -> None:
    """Validate standing-subscription criteria (raises ``ValidationFailed``)."""
    v = Violations()
    v.check(bool(criteria), at, "needs at least one criterion")
    for i, r in enumerate(criteria):
        check_requirement(v, f"{at}[{i}]", r)
    v.raise_if_any()


def _check_enum(v: Violations, field_name: str, value: str, what: str) -> None:
    if value == "":
        v.add(field_name, f"is not a known {what}")
    elif value == UNSPECIFIED:
        v.add(field_name, "is required")


# -- eligibility and scoring ---------------------------------------------------------------------


def _needs_collateral(p: Product) -> bool:
    return p.collateral_required not in (UNSPECIFIED, "NONE")


def critical_failures(p: Product, d: Demand) -> tuple[str, ...]:
    """The critical criteria ``d`` fails for ``p``, cheaply (no breakdown): the same set as
    ``evaluate(p, d).failed()`` (a property test holds them equal)."""
    failed: list[str] = []
    if d.loan_category != UNSPECIFIED and d.loan_category != p.loan_category:
        failed.append("loan_category")
    if not (p.amount_min_fen <= d.amount_fen <= p.amount_max_fen) and not (
            max(p.amount_min_fen, d.least_amount) <= min(p.amount_max_fen, d.amount_fen)):
        failed.append("amount")
    if not (p.term_min_months <= d.term_months <= p.term_max_months):
        failed.append("term")
    if d.max_rate_bps and p.rate_min_bps > d.max_rate_bps:
        failed.append("rate")
    if _needs_collateral(p) and p.collateral_required not in d.collateral_offered:
        failed.append("collateral")
    if p.industries and d.enterprise.key_industry not in p.industries:
        failed.append("industry")
    if p.special_zones and not (p.special_zones & d.enterprise.special_zones):
        failed.append("special_zone")
    if p.regions and not d.enterprise.region_code.startswith(p.regions):
        failed.append("region")
    for r in p.requirements:
        if r.critical and not requirement_holds(r, d):
            failed.append(f"requirement:{r.field}")
    if p.institution_id in d.excluded_institution_ids:
        failed.append("institution")
    return tuple(failed)


def evaluate(product: Product, demand: Demand, responsiveness: Responsiveness | None = None) -> Evaluation:
    """Every criterion of ``product`` for ``demand``, with its verdict and points."""
    p, d = product, demand
    return Evaluation(p, (
        _category(p, d), _amount(p, d), _term(p, d), _rate(p, d), _collateral(p, d), _industry(p, d),
        _zone(p, d), _region(p, d), *_requirements(p, d), _institution(p, d), _responsiveness(responsiveness),
    ))


@dataclass(frozen=True, slots=True)
class _Shown:
    """How a product's side of the breakdown reads (computed once per distinct content)."""

    amount: str
    term: str
    rate: str
    industries: str
    zones: str


_SHOWN: dict[tuple[object, ...], _Shown] = {}
_SHOWN_OF: dict[int, tuple[Product, _Shown]] = {}  # by the product object itself: no hashing of its content


def _shown(p: Product) -> _Shown:
    hit = _SHOWN_OF.get(id(p))
    if hit is not None and hit[0] is p:
        return hit[1]
    got = _shown_content(p)
    if len(_SHOWN_OF) > 100_000:
        _SHOWN_OF.clear()
    _SHOWN_OF[id(p)] = (p, got)
    return got


def _shown_content(p: Product) -> _Shown:
    key = (p.amount_min_fen, p.amount_max_fen, p.term_min_months, p.term_max_months, p.rate_min_bps, p.rate_max_bps,
           p.industries, p.special_zones)
    got = _SHOWN.get(key)
    if got is None:
        got = _Shown(fmt_amount_range(p.amount_min_fen, p.amount_max_fen), f"{p.term_min_months}-{p.term_max_months} "
                     f"months", f"{fmt_rate(p.rate_min_bps)}-{fmt_rate(p.rate_max_bps)}",
                     ",".join(sorted(p.industries)), ",".join(sorted(p.special_zones)))
        if len(_SHOWN) > 100_000:
            _SHOWN.clear()
        _SHOWN[key] = got
    return got


def _category(p: Product, d: Demand) -> CriterionResult:
    if d.loan_category == UNSPECIFIED:
        return CriterionResult("loan_category", "any", p.loan_category, Verdict.PASS, CATEGORY_ANY_POINTS)
    if d.loan_category == p.loan_category:
        return CriterionResult("loan_category", d.loan_category, p.loan_category, Verdict.PASS, CATEGORY_POINTS)
    return CriterionResult("loan_category", d.loan_category, p.loan_category, Verdict.FAIL, 0)


def _amount(p: Product, d: Demand) -> CriterionResult:
    shown = _shown(p).amount
    asked = fmt_amount(d.amount_fen)
    if p.amount_min_fen <= d.amount_fen <= p.amount_max_fen:
        return CriterionResult("amount", asked, shown, Verdict.PASS, AMOUNT_POINTS)
    least = d.least_amount
    if max(p.amount_min_fen, least) <= min(p.amount_max_fen, d.amount_fen):
        return CriterionResult("amount", f"{asked} (at least {fmt_amount(least)})", shown, Verdict.NEAR,
                               AMOUNT_PARTIAL_POINTS)
    return CriterionResult("amount", asked, shown, Verdict.FAIL, 0)


def _term(p: Product, d: Demand) -> CriterionResult:
    shown = _shown(p).term
    ok = p.term_min_months <= d.term_months <= p.term_max_months
    return CriterionResult("term", f"{d.term_months} months", shown, Verdict.PASS if ok else Verdict.FAIL,
                           TERM_POINTS if ok else 0)


def _rate(p: Product, d: Demand) -> CriterionResult:
    shown = _shown(p).rate
    if d.max_rate_bps == 0:
        return CriterionResult("rate", "any", shown, Verdict.PASS, RATE_POINTS // 2)
    asked = f"at most {fmt_rate(d.max_rate_bps)}"
    if p.rate_min_bps > d.max_rate_bps:
        return CriterionResult("rate", asked, shown, Verdict.FAIL, 0)
    if p.rate_max_bps <= d.max_rate_bps:
        return CriterionResult("rate", asked, shown, Verdict.PASS, RATE_POINTS)
    # Only part of the product's rate band is under the cap: points for the share that is.
    share_points = RATE_POINTS * (d.max_rate_bps - p.rate_min_bps) // (p.rate_max_bps - p.rate_min_bps)
    return CriterionResult("rate", asked, shown, Verdict.NEAR, max(1, share_points))


def _collateral(p: Product, d: Demand) -> CriterionResult:
    offered = ",".join(sorted(d.collateral_offered)) or "none"
    if not _needs_collateral(p):
        return CriterionResult("collateral", offered, "none required", Verdict.PASS, COLLATERAL_POINTS)
    ok = p.collateral_required in d.collateral_offered
    return CriterionResult("collateral", offered, p.collateral_required, Verdict.PASS if ok else Verdict.FAIL,
                           COLLATERAL_POINTS if ok else 0)


def _industry(p: Product, d: Demand) -> CriterionResult:
    mine = d.enterprise.key_industry
    if not p.industries:
        return CriterionResult("industry", mine, "any", Verdict.PASS, INDUSTRY_POINTS)
    ok = mine in p.industries
    return CriterionResult("industry", mine, _shown(p).industries, Verdict.PASS if ok else Verdict.FAIL,
                           INDUSTRY_POINTS if ok else 0)


def _zone(p: Product, d: Demand) -> CriterionResult:
    mine = ",".join(sorted(d.enterprise.special_zones)) or "none"
    if not p.special_zones:
        return CriterionResult("special_zone", mine, "any", Verdict.PASS, ZONE_POINTS)
    ok = bool(p.special_zones & d.enterprise.special_zones)
    return CriterionResult("special_zone", mine, _shown(p).zones,
                           Verdict.PASS if ok else Verdict.FAIL, ZONE_POINTS if ok else 0)


def _region(p: Product, d: Demand) -> CriterionResult:
    mine = d.enterprise.region_code or "unknown"
    if not p.regions:
        return CriterionResult("region", mine, "nationwide", Verdict.PASS, REGION_POINTS)
    ok = d.enterprise.region_code.startswith(p.regions)
    return CriterionResult("region", mine, ",".join(p.regions), Verdict.PASS if ok else Verdict.FAIL,
                           REGION_POINTS if ok else 0)


def _split(total: int, n: int) -> list[int]:
    """``total`` in ``n`` integer shares that add up to it exactly."""
    return [total * (i + 1) // n - total * i // n for i in range(n)]


def _requirements(p: Product, d: Demand) -> list[CriterionResult]:
    if not p.requirements:
        return [CriterionResult("requirements", "-", "none", Verdict.PASS, REQUIREMENT_POINTS)]
    out = []
    for r, share in zip(p.requirements, _split(REQUIREMENT_POINTS, len(p.requirements)), strict=True):
        value = fact(d, r.field)
        ok = value is not None and _predicate(r)(value)
        shown = "unknown" if value is None else _show(value)
        out.append(CriterionResult(f"requirement:{r.field}", shown, describe(r), Verdict.PASS if ok else Verdict.FAIL,
                                   share if ok else 0, critical=r.critical))
    return out


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, frozenset):
        return ",".join(sorted(value)) or "none"
    return str(value)


def _institution(p: Product, d: Demand) -> CriterionResult:
    if p.institution_id in d.excluded_institution_ids:
        return CriterionResult("institution", "excluded", p.institution_id, Verdict.FAIL, 0)
    if not d.preferred_institution_ids:
        return CriterionResult("institution", "no preference", p.institution_id, Verdict.PASS, INSTITUTION_POINTS)
    if p.institution_id in d.preferred_institution_ids:
        return CriterionResult("institution", "preferred", p.institution_id, Verdict.PASS, INSTITUTION_POINTS)
    return CriterionResult("institution", "not preferred", p.institution_id, Verdict.NEAR, 0, critical=False)


MIN_SAMPLE = 5  # leads an institution needs before its record counts; below it scores as average
FAST_CONTACT_SECONDS = 4 * 3600
SLOW_CONTACT_SECONDS = 72 * 3600


def responsiveness_points(r: Responsiveness | None) -> int:
    """0..RESPONSIVENESS_POINTS: half for contacting leads, 3/10 for approving, 2/10 for speed."""
    if r is None or r.leads < MIN_SAMPLE:
        return RESPONSIVENESS_POINTS // 2
    contacted = 1000 * min(r.contacted, r.leads) // r.leads
    approved = 1000 * min(r.approved, r.decided) // r.decided if r.decided else 500
    if r.contacted == 0:
        speed = 0
    else:
        slow = max(0, min(SLOW_CONTACT_SECONDS - FAST_CONTACT_SECONDS, r.median_contact_seconds - FAST_CONTACT_SECONDS))
        speed = 1000 - 1000 * slow // (SLOW_CONTACT_SECONDS - FAST_CONTACT_SECONDS)
    permille = (5 * contacted + 3 * approved + 2 * speed) // 10
    return RESPONSIVENESS_POINTS * permille // 1000


def _responsiveness(r: Responsiveness | None) -> CriterionResult:
    points = responsiveness_points(r)
    if r is None or r.leads < MIN_SAMPLE:
        shown = f"too few leads to measure ({r.leads if r else 0})"
    else:
        approval = f"{100 * r.approved // r.decided}%" if r.decided else "n/a"
        shown = (f"contacted {100 * r.contacted // r.leads}% of {r.leads} leads, median "
                 f"{r.median_contact_seconds / 3600:.1f} h, approved {approval}")
    verdict = Verdict.PASS if points * 2 >= RESPONSIVENESS_POINTS else Verdict.NEAR
    return CriterionResult("responsiveness", "-", shown, verdict, points, critical=False)


# -- choosing leads ------------------------------------------------------------------------------------


def rank(evaluations: Iterable[Evaluation], *, slots: int = MAX_LEADS,
         exclude_institutions: frozenset[str] = frozenset()) -> tuple[Pick, ...]:
    """At most ``slots`` eligible products, one per institution, none of ``exclude_institutions``,
    best score first; ties by product id (so the order of the input never matters)."""
    eligible = sorted((e for e in evaluations if e.eligible and e.product.institution_id not in exclude_institutions),
                      key=lambda e: (-e.score, e.product.product_id))
    picks: list[Pick] = []
    institutions: set[str] = set()
    for e in eligible:
        if len(picks) >= slots:
            break
        if e.product.institution_id in institutions:
            continue
        institutions.add(e.product.institution_id)
        picks.append(Pick(e.product, len(picks) + 1, e.score, e.results))
    return tuple(picks)


def fails(p: Product, d: Demand) -> bool:
    """Whether ``d`` fails a critical criterion of ``p`` (the hot path: stops at the first)."""
    if d.loan_category != UNSPECIFIED and d.loan_category != p.loan_category:
        return True
    if not (p.term_min_months <= d.term_months <= p.term_max_months):
        return True
    if d.max_rate_bps and p.rate_min_bps > d.max_rate_bps:
        return True
    if not (p.amount_min_fen <= d.amount_fen <= p.amount_max_fen) and not (
            max(p.amount_min_fen, d.least_amount) <= min(p.amount_max_fen, d.amount_fen)):
        return True
    if p.institution_id in d.excluded_institution_ids:
        return True
    if p.collateral_required not in _NO_COLLATERAL and p.collateral_required not in d.collateral_offered:
        return True
    e = d.enterprise
    if p.industries and e.key_industry not in p.industries:
        return True
    if p.special_zones and not (p.special_zones & e.special_zones):
        return True
    if p.regions and not e.region_code.startswith(p.regions):
        return True
    for r in p.requirements:
        if r.critical and not requirement_holds(r, d):
            return True
    return False


_NO_COLLATERAL = frozenset({UNSPECIFIED, "NONE"})


def score(p: Product, d: Demand, resp_points: int) -> int:
    """``evaluate(p, d, r).score`` without the breakdown, where ``resp_points`` is
    ``responsiveness_points(r)`` (a property test holds the two equal)."""
    total = resp_points
    total += CATEGORY_ANY_POINTS if d.loan_category == UNSPECIFIED else (
        CATEGORY_POINTS if d.loan_category == p.loan_category else 0)
    if p.amount_min_fen <= d.amount_fen <= p.amount_max_fen:
        total += AMOUNT_POINTS
    elif max(p.amount_min_fen, d.least_amount) <= min(p.amount_max_fen, d.amount_fen):
        total += AMOUNT_PARTIAL_POINTS
    if p.term_min_months <= d.term_months <= p.term_max_months:
        total += TERM_POINTS
    cap = d.max_rate_bps
    if cap == 0:
        total += RATE_POINTS // 2
    elif p.rate_min_bps <= cap:
        total += RATE_POINTS if p.rate_max_bps <= cap else max(
            1, RATE_POINTS * (cap - p.rate_min_bps) // (p.rate_max_bps - p.rate_min_bps))
    if p.collateral_required in _NO_COLLATERAL or p.collateral_required in d.collateral_offered:
        total += COLLATERAL_POINTS
    e = d.enterprise
    if not p.industries or e.key_industry in p.industries:
        total += INDUSTRY_POINTS
    if not p.special_zones or p.special_zones & e.special_zones:
        total += ZONE_POINTS
    if not p.regions or e.region_code.startswith(p.regions):
        total += REGION_POINTS
    if not p.requirements:
        total += REQUIREMENT_POINTS
    else:
        for r, share in zip(p.requirements, _split(REQUIREMENT_POINTS, len(p.requirements)), strict=True):
            if requirement_holds(r, d):
                total += share
    inst = p.institution_id
    if inst not in d.excluded_institution_ids and (
            not d.preferred_institution_ids or inst in d.preferred_institution_ids):
        total += INSTITUTION_POINTS
    return total


def score_bound(d: Demand) -> int:
    """The highest score any product can give ``d``, responsiveness aside."""
    category = CATEGORY_ANY_POINTS if d.loan_category == UNSPECIFIED else CATEGORY_POINTS
    rate = RATE_POINTS // 2 if d.max_rate_bps == 0 else RATE_POINTS
    return (category + AMOUNT_POINTS + TERM_POINTS + rate + COLLATERAL_POINTS + INDUSTRY_POINTS + ZONE_POINTS
            + REGION_POINTS + REQUIREMENT_POINTS + INSTITUTION_POINTS)


def match(products: Iterable[Product], demand: Demand, *,
          responsiveness: Mapping[str, Responsiveness] | None = None, slots: int = MAX_LEADS,
          exclude_institutions: frozenset[str] = frozenset(), hints_from: Iterable[Product] | None = None,
          now: int = 0, sorted_by_id: bool = False, responsiveness_cap: int = RESPONSIVENESS_POINTS) -> MatchResult:
    """Pick at most ``slots`` products (one per institution, best first; ties by product id) among
    the active products ``demand`` is eligible for. ``products`` may be a pre-filtered candidate
    list; the explanation and hints of a demand nothing fits are computed over ``hints_from``
    (default: ``products``). Candidates are scored without their breakdown; only the picks get one.

    With ``sorted_by_id`` (the candidates come in product-id order) the scan stops once ``slots``
    institutions have a product scoring the highest possible score (``score_bound`` plus
    ``responsiveness_cap``, the best responsiveness points of any institution): no later product
    could rank before them, ties being broken by product id."""
    resp = responsiveness or {}
    neutral = responsiveness_points(None)
    bound = score_bound(demand) + responsiveness_cap if sorted_by_id else MAX_SCORE + 1
    considered = 0
    scored: list[tuple[int, str, Product]] = []
    full: set[str] = set()
    for p in products:
        if p.status != ACTIVE or (now and not live(p, now)):
            continue
        considered += 1
        if p.institution_id in exclude_institutions or fails(p, demand):
            continue
        r = resp.get(p.institution_id)
        points = score(p, demand, neutral if r is None else responsiveness_points(r))
        scored.append((-points, p.product_id, p))
        if points >= bound:
            full.add(p.institution_id)
            if len(full) >= slots:
                break
    scored.sort(key=lambda t: (t[0], t[1]))
    picks: list[Pick] = []
    institutions: set[str] = set()
    for _, _, p in scored:
        if len(picks) >= slots:
            break
        if p.institution_id in institutions:
            continue
        institutions.add(p.institution_id)
        e = evaluate(p, demand, resp.get(p.institution_id))
        picks.append(Pick(p, len(picks) + 1, e.score, e.results))
    if picks or slots <= 0:
        return MatchResult(tuple(picks), considered, len(scored))
    pool = [p for p in (products if hints_from is None else hints_from) if live(p, now)]
    explanation, hints = explain_no_match(demand, pool, exclude_institutions=exclude_institutions)
    return MatchResult((), max(considered, len(pool)), len(scored), explanation, hints)


def live(p: Product, now: int = 0) -> bool:
    """Active and (when ``now`` is given) inside its validity window."""
    if p.status != ACTIVE:
        return False
    return not now or ((not p.valid_from or p.valid_from <= now) and (not p.valid_until or now < p.valid_until))


def check_applied(product: Product | None, demand: Demand,
                  responsiveness: Responsiveness | None = None, now: int = 0) -> MatchResult:
    """Enterprise-active docking: ``demand`` checked against the one product it names."""
    if product is None or not live(product, now):
        state = "does not exist" if product is None else f"is not open for applications ({product.status.lower()})"
        return MatchResult((), 0, 0, f"the product applied for ({demand.product_id}) {state}")
    e = evaluate(product, demand, responsiveness)
    if e.eligible:
        return MatchResult((Pick(product, 1, e.score, e.results),), 1, 1)
    reasons = "; ".join(f"{r.criterion}: {r.demand_value} vs {r.product_value}"
                        for r in e.results if r.critical and r.verdict is Verdict.FAIL)
    return MatchResult((), 1, 0, f"{product.name} does not fit: {reasons}")


# -- explaining a demand nothing fits, and what would change that ------------------------------------


_ORDER = ("term", "amount", "rate", "loan_category", "collateral", "institution", "industry", "special_zone",
          "region")


def explain_no_match(demand: Demand, products: Sequence[Product], *,
                     exclude_institutions: frozenset[str] = frozenset()) -> tuple[str, tuple[Hint, ...]]:
    """A sentence on what keeps products out, and counterfactual hints computed from the catalog:
    for each criterion the demand can change, the smallest change that lets the most products in
    (products failing *only* that criterion)."""
    products = [p for p in products if p.institution_id not in exclude_institutions]
    if not products:
        return "the catalog has no active product" + (" not already tried" if exclude_institutions else ""), ()
    only: dict[str, list[Product]] = {}
    closest: tuple[int, str, tuple[str, ...]] | None = None
    for p in products:
        failed = critical_failures(p, demand)
        if len(failed) == 1:
            only.setdefault(failed[0], []).append(p)
        if closest is None or (len(failed), p.product_id) < closest[:2]:
            closest = (len(failed), p.product_id, failed)
    hints = tuple(sorted((h for h in (_hint(c, demand, only[c]) for c in only) if h is not None),
                         key=lambda h: (-h.products, _rank_of(h.criterion))))
    if hints:
        return f"none of {_n(len(products))} fits; {hints[0].text}", hints
    assert closest is not None
    if only:
        criterion = max(only, key=lambda c: (len(only[c]), -_rank_of(c)))
        return (f"none of {_n(len(products))} fits; {_n(len(only[criterion]))} fail only on "
                f"{criterion.removeprefix('requirement:').replace('_', ' ')}"), ()
    name = next(p.name for p in products if p.product_id == closest[1])
    return f"none of {_n(len(products))} fits: the closest ({name}) fails on {', '.join(closest[2])}", ()


def _rank_of(criterion: str) -> int:
    return _ORDER.index(criterion) if criterion in _ORDER else len(_ORDER)


def _hint(criterion: str, d: Demand, blocked: list[Product]) -> Hint | None:
    if criterion == "term":
        alt = _best_point(d.term_months, [(p.term_min_months, p.term_max_months) for p in blocked])
        n = sum(p.term_min_months <= alt <= p.term_max_months for p in blocked)
        return Hint("term", str(alt), n, f"a term of {alt} months would make {_n(n)} eligible")
    if criterion == "amount":
        ranges = [(p.amount_min_fen, p.amount_max_fen) for p in blocked]
        alt = _best_point(d.amount_fen, ranges)
        n = sum(lo <= alt <= hi for lo, hi in ranges)
        return Hint("amount", str(alt), n, f"an amount of {fmt_amount(alt)} would make {_n(n)} eligible")
    if criterion == "rate":
        alt = min(p.rate_min_bps for p in blocked)
        n = sum(p.rate_min_bps <= alt for p in blocked)
        return Hint("rate", str(alt), n, f"accepting a rate up to {fmt_rate(alt)} would make {_n(n)} eligible")
    if criterion == "loan_category":
        counts = Counter(p.loan_category for p in blocked)
        cat, n = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return Hint("loan_category", cat, n, f"the loan category {cat.lower().replace('_', ' ')} would make "
                                             f"{_n(n)} eligible")
    if criterion == "collateral":
        counts = Counter(p.collateral_required for p in blocked)
        col, n = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return Hint("collateral", col, n, f"adding {col.lower()} as collateral would make {n} more "
                                               f"product{'s' if n != 1 else ''} eligible")
    if criterion == "institution":
        return Hint("institution", "", len(blocked),
                    f"{_n(len(blocked))} would fit but belong to institutions the demand excludes")
    return None  # industry, zones, regions and the enterprise's own facts are not the demand's to change


def _best_point(value: int, ranges: Sequence[tuple[int, int]]) -> int:
    """The smallest change: the point nearest ``value`` inside any of ``ranges`` (ties: the one
    inside the most ranges, then the smaller)."""
    candidates = {min(max(value, lo), hi) for lo, hi in ranges}
    return min(candidates, key=lambda c: (abs(c - value), -sum(lo <= c <= hi for lo, hi in ranges), c))


def _n(count: int) -> str:
    return f"{count} product{'s' if count != 1 else ''}"


# -- the reverse join: one product against the open demands ----------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenDemand:
    """A demand the matcher still holds open: its active leads and every institution tried.

    Only an intelligent-mode demand whose enterprise consented to share its data gets leads
    beyond its first match (reverse join, re-matching, subscriptions, claims)."""

    demand: Demand
    active_leads: int = 0
    tried: frozenset[str] = frozenset()
    matched_at: int = 0  # epoch seconds of its first match
    valid_until: int = 0  # epoch seconds; 0 = no limit

    def room(self, cap: int = MAX_LEADS, limit: int = MAX_INSTITUTIONS_TRIED, now: int = 0) -> int:
        if not self.demand.consent_to_share or self.demand.docking_mode == ENTERPRISE_ACTIVE:
            return 0
        if now and self.valid_until and now >= self.valid_until:
            return 0
        return max(0, min(cap - self.active_leads, limit - len(self.tried)))


def reverse_join(product: Product, demands: Iterable[OpenDemand], *, responsiveness: Responsiveness | None = None,
                 now: int = 0) -> list[tuple[OpenDemand, Pick]]:
    """The open demands with room for a lead that ``product`` fits, whose institution has not
    been tried for them (never a second lead for an institution); each with its pick."""
    if not live(product, now):
        return []
    inst = product.institution_id
    out = []
    for od in demands:
        if od.demand.docking_mode == INSTITUTION_ACTIVE or od.room(now=now) <= 0 or inst in od.tried \
                or fails(product, od.demand):
            continue
        e = evaluate(product, od.demand, responsiveness)
        out.append((od, Pick(product, od.active_leads + 1, e.score, e.results)))
    return out


def rematch(view: CatalogView, od: OpenDemand, *, responsiveness: Mapping[str, Responsiveness] | None = None,
            now: int = 0) -> tuple[Pick, ...]:
    """The next-best candidates for an open demand that lost a lead: as many as it has room for,
    excluding every institution already tried; ranks continue after its active leads."""
    slots = od.room(now=now)
    if slots <= 0 or od.demand.docking_mode == INSTITUTION_ACTIVE:
        return ()
    picks = view.match(od.demand, responsiveness=responsiveness, slots=slots, exclude_institutions=od.tried,
                       now=now).picks
    return tuple(replace(p, rank=od.active_leads + i + 1) for i, p in enumerate(picks))


# -- docking modes ---------------------------------------------------------------------------------------

INTELLIGENT = "INTELLIGENT"
ENTERPRISE_ACTIVE = "ENTERPRISE_ACTIVE"
INSTITUTION_ACTIVE = "INSTITUTION_ACTIVE"
# Lead origins (the contract's names without prefix).
ORIGIN_MATCH = "INTELLIGENT_MATCH"
ORIGIN_APPLIED = "ENTERPRISE_APPLIED"
ORIGIN_CLAIMED = "INSTITUTION_CLAIMED"
ORIGIN_REMATCH = "REMATCH_AFTER_DECLINE"
ORIGIN_REROUTE = "SLA_REROUTE"


@dataclass(frozen=True, slots=True)
class StandingSubscription:
    """An institution's standing interest: demands meeting every criterion become its leads (for
    ``product_id``, if the demand is eligible for it)."""

    subscription_id: str
    institution_id: str
    product_id: str
    criteria: tuple[Requirement, ...]


@dataclass(frozen=True)
class Plan:
    """What to do with a new demand: the match result and each pick's origin."""

    result: MatchResult
    origins: tuple[str, ...]


def match_subscriptions(subscriptions: Iterable[StandingSubscription], view: CatalogView, demand: Demand, *,
                        slots: int, exclude_institutions: frozenset[str] = frozenset(),
                        responsiveness: Mapping[str, Responsiveness] | None = None, now: int = 0) -> tuple[Pick, ...]:
    """The subscribing institutions ``demand`` fits (criteria hold and the product's critical
    criteria pass), best first, one per institution, at most ``slots``."""
    resp = responsiveness or {}
    evaluations = []
    for s in subscriptions:
        p = view.get(s.product_id)
        if p is None or not live(p, now) or p.institution_id != s.institution_id:
            continue
        if s.institution_id in exclude_institutions or not criteria_hold(s.criteria, demand):
            continue
        if not critical_failures(p, demand):
            evaluations.append(evaluate(p, demand, resp.get(p.institution_id)))
    return rank(evaluations, slots=slots, exclude_institutions=exclude_institutions)


def plan(view: CatalogView, demand: Demand, *, subscriptions: Sequence[StandingSubscription] = (),
         responsiveness: Mapping[str, Responsiveness] | None = None, now: int = 0) -> Plan:
    """A new demand by its docking mode: enterprise-active goes to the product it names or gets
    NO_MATCH with the reason; institution-active goes to the subscriptions it fits (the rest is
    left to the pool, for claims); intelligent is matched against the whole catalog (a subscribing
    institution's eligible product competes there like any other)."""
    resp = responsiveness or {}
    if demand.docking_mode == ENTERPRISE_ACTIVE or demand.product_id:
        p = view.get(demand.product_id)
        result = check_applied(p, demand, resp.get(p.institution_id) if p else None, now)
        return Plan(result, (ORIGIN_APPLIED,) * len(result.picks))
    if demand.docking_mode == INSTITUTION_ACTIVE:
        picks = match_subscriptions(subscriptions, view, demand, slots=MAX_LEADS, responsiveness=resp, now=now)
        explanation = "" if picks else "no standing subscription fits yet; the demand is open in the institutions' pool"
        return Plan(MatchResult(picks, len(subscriptions), len(picks), explanation), (ORIGIN_CLAIMED,) * len(picks))
    result = view.match(demand, responsiveness=resp, now=now)
    return Plan(result, (ORIGIN_MATCH,) * len(result.picks))


def claim(view: CatalogView, od: OpenDemand, institution_id: str, product_id: str = "", *,
          responsiveness: Responsiveness | None = None, now: int = 0) -> Pick | str:
    """An institution claims an open demand from the pool: its pick (its named product, or its
    best-fitting one), or the reason it may not."""
    if od.room(now=now) <= 0:
        return "the demand has no room for another institution (or does not share its data)"
    if institution_id in od.tried:
        return "the institution already has (or had) a lead for this demand"
    if product_id:
        p = view.get(product_id)
        if p is None or p.institution_id != institution_id:
            return f"product {product_id} is not one of the institution's products"
        candidates = [p]
    else:
        candidates = [p for p in view.active() if p.institution_id == institution_id]
    evaluations = [evaluate(p, od.demand, responsiveness) for p in candidates
                   if live(p, now) and not critical_failures(p, od.demand)]
    picks = rank(evaluations, slots=1)
    if not picks:
        return "none of the institution's active products fits the demand"
    return replace(picks[0], rank=od.active_leads + 1)


def pool_fit(view: CatalogView, od: OpenDemand, institution_id: str, products: Sequence[Product] | None = None,
             *, now: int = 0) -> Pick | None:
    """The institution's best-fitting product for an open demand in the pool (None if none fits
    or the demand may not be offered to it)."""
    if od.room(now=now) <= 0 or institution_id in od.tried:
        return None
    own = products if products is not None else [p for p in view.active() if p.institution_id == institution_id]
    picks = rank([evaluate(p, od.demand) for p in own if live(p, now) and not critical_failures(p, od.demand)],
                 slots=1)
    return picks[0] if picks else None


# -- responsiveness from lead events -------------------------------------------------------------------------


def responsiveness_of(leads: int, contacted: int, decided: int, approved: int,
                      contact_seconds: Sequence[int]) -> Responsiveness:
    return Responsiveness(leads=leads, contacted=contacted, decided=decided, approved=approved,
                          median_contact_seconds=median(contact_seconds))


def median(values: Sequence[int]) -> int:
    if not values:
        return 0
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) // 2


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


TERM_BUCKETS = (1, 4, 7, 13, 25, 37, 61, 121, 241)  # bucket i holds terms [B[i], B[i+1])
_TERM_BUCKET = tuple(max((i for i, lo in enumerate(TERM_BUCKETS) if t >= lo), default=0) for t in range(TERM_MAX + 1))


def _term_bucket(term: int) -> int:
    return _TERM_BUCKET[min(max(term, 0), TERM_MAX)]


def _product_id(p: Product) -> str:
    return p.product_id


def _amount_bucket(fen: int) -> int:
    return max(fen, 1).bit_length()  # powers of two


RECENT_CHANGES = 4096  # product changes a view remembers in order (see CatalogView.applied_since)


@dataclass
class CatalogView:
    """Every product by id, latest version only; a change applies only if its version is newer.

    ``checksum`` is the XOR of :func:`row_hash` over all products, comparable with the store's.
    Active products are indexed by loan category, term bucket and amount bucket (powers of two),
    so a demand is evaluated only against products that can accept its category, term and amount.
    """

    _products: dict[str, Product] = field(default_factory=dict)
    _checksum: int = 0
    _active: tuple[Product, ...] | None = None
    _index: dict[tuple[str, int, int], list[Product]] | None = None
    _by_term: dict[tuple[str, int], list[Product]] | None = None
    _stale: int = 0  # index entries of versions since replaced (skipped at lookup; rebuilt when many)
    _cap: tuple[object, int] | None = None
    active_count: int = 0  # kept as products change, so reading it costs nothing
    applied: int = 0  # changes applied so far: a mark for :meth:`applied_since`
    _recent: deque[Product] = field(default_factory=lambda: deque(maxlen=RECENT_CHANGES))

    def apply(self, product: Product) -> bool:
        current = self._products.get(product.product_id)
        if current is not None:
            if current.version >= product.version:
                return False
            self._checksum ^= row_hash(current.product_id, current.version)
            self.active_count -= current.status == ACTIVE
        self._products[product.product_id] = product
        self._checksum ^= row_hash(product.product_id, product.version)
        self.active_count += product.status == ACTIVE
        self._active = None
        self.applied += 1
        self._recent.append(product)
        if self._index is not None:
            if current is not None and current.status == ACTIVE:
                self._stale += 1
            if product.status == ACTIVE:
                self._index_one(product)
            if self._stale > max(100, len(self._products) // 10):
                self._index = self._by_term = None  # rebuilt at the next lookup
        return True

    def _index_one(self, p: Product, add: Callable[[list[Product], Product], None] | None = None) -> None:
        """Add ``p`` to its lists, keeping each in product-id order (``add`` appends when building)."""
        assert self._index is not None and self._by_term is not None
        put = add or (lambda lst, x: insort(lst, x, key=_product_id))
        amounts = range(_amount_bucket(p.amount_min_fen), _amount_bucket(p.amount_max_fen) + 1)
        for t in range(_term_bucket(p.term_min_months), _term_bucket(p.term_max_months) + 1):
            for key in ((p.loan_category, t), (ANY, t)):
                put(self._by_term.setdefault(key, []), p)
                for a in amounts:
                    put(self._index.setdefault((*key, a), []), p)

    def candidates(self, demand: Demand) -> list[Product]:
        """The active products whose category, term bucket and amount bucket can fit ``demand`` (a
        superset of the eligible ones)."""
        if self._index is None or self._by_term is None:
            self._index, self._by_term, self._stale = {}, {}, 0
            for p in sorted(self.active(), key=_product_id):
                self._index_one(p, list.append)
        cat = ANY if demand.loan_category == UNSPECIFIED else demand.loan_category
        t = _term_bucket(demand.term_months)
        if demand.least_amount < demand.amount_fen:  # a range of amounts: the term's list
            found = self._by_term.get((cat, t), [])
        else:
            found = self._index.get((cat, t, _amount_bucket(demand.amount_fen)), [])
        if self._stale:
            current = self._products
            return [p for p in found if current.get(p.product_id) is p]
        return found

    def get(self, product_id: str) -> Product | None:
        return self._products.get(product_id)

    def applied_since(self, mark: int) -> list[Product]:
        """The products changed since ``applied`` was ``mark``, each once, in its current version, in
        the order they first changed (every product, if more changed than are remembered)."""
        n = self.applied - mark
        if n <= 0:
            return []
        if n > len(self._recent):
            return list(self._products.values())
        latest = {p.product_id: p for p in list(self._recent)[-n:]}
        return [p for p in latest.values() if self._products.get(p.product_id) is p]

    def changed_after(self, at: int) -> list[Product]:
        """The products (any status) stored after ``at`` (epoch seconds), oldest first."""
        return sorted((p for p in self._products.values() if p.updated_at > at), key=lambda p: p.updated_at)

    def active(self) -> tuple[Product, ...]:
        if self._active is None:
            self._active = tuple(p for p in self._products.values() if p.status == ACTIVE)
        return self._active

    def match(self, demand: Demand, *, responsiveness: Mapping[str, Responsiveness] | None = None,
              **kw: object) -> MatchResult:
        """:func:`match` over the indexed candidates (in product-id order, so the scan may stop
        early); explanations and hints over every active product."""
        return match(self.candidates(demand), demand, hints_from=self.active(), responsiveness=responsiveness,
                     sorted_by_id=True, responsiveness_cap=self._responsiveness_cap(responsiveness),
                     **kw)  # type: ignore[arg-type]

    def _responsiveness_cap(self, responsiveness: Mapping[str, Responsiveness] | None) -> int:
        """The best responsiveness points of any institution (cached per responsiveness map)."""
        if responsiveness is None:
            return responsiveness_points(None)
        cached = self._cap
        if cached is not None and cached[0] is responsiveness:
            return cached[1]
        cap = max((responsiveness_points(r) for r in responsiveness.values()), default=0)
        cap = max(cap, responsiveness_points(None))  # institutions without a record score as average
        self._cap = (responsiveness, cap)
        return cap

    def __len__(self) -> int:
        return len(self._products)

    @property
    def checksum(self) -> int:
        return self._checksum
