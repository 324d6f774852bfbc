"""The demand service's pure core: enterprises, institutions, demands, their validation
(against the reference data of ``reference/``, handed in as a :class:`Reference`), the USCC
check character, the demand and lead life cycles with their transition tables, intake
(window filings, cross-channel duplicates) and lead outcomes. No I/O and no protobuf here.

Enumerations mirror the contracts' numbering (``finmesh.*.v1``) so that mapping is a plain
``int`` conversion; ``tests/unit/test_demand_domain.py`` checks that they stay in step.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from enum import IntEnum

from meshkit.contact_sla import DEFAULT_CONTACT_SLA_HOURS, MAX_CONTACT_SLA_HOURS
from meshkit.errors import MAX_ID_CHARS, FailedPrecondition, PermissionDenied, Violations
from meshkit.topics import valid_institution_id

# -- vocabulary (numbering as in the .proto files) --------------------------------------------


class LoanCategory(IntEnum):
    UNSPECIFIED = 0  # on a demand: any category
    CREDIT = 1
    MORTGAGE = 2
    PLEDGE = 3
    GUARANTEED = 4
    RECEIVABLES = 5
    EQUIPMENT = 6
    TECH_TRANSFORMATION = 7
    PILOT_STAGE = 8
    FIRST_LOAN = 9
    RENEWAL = 10


class Collateral(IntEnum):
    UNSPECIFIED = 0
    NONE = 1
    PROPERTY = 2
    EQUIPMENT = 3
    RECEIVABLES = 4
    IP = 5
    GUARANTEE = 6


class KeyIndustry(IntEnum):
    UNSPECIFIED = 0
    INTEGRATED_CIRCUITS = 1
    NEV_DEVICES = 2
    INTELLIGENT_EQUIPMENT = 3
    PETROCHEMICAL = 4
    ELECTRONIC_COMPONENTS = 5
    BIOMEDICINE = 6
    ARTIFICIAL_INTELLIGENCE = 7
    NEW_MATERIALS = 8
    INDUSTRIAL_INTERNET_5G = 9
    AEROSPACE = 10


class EnterpriseSize(IntEnum):
    UNSPECIFIED = 0
    MICRO = 1
    SMALL = 2
    MEDIUM = 3
    LARGE = 4


class SrdiTier(IntEnum):
    UNSPECIFIED = 0
    NONE = 1
    INNOVATIVE_SME = 2
    PROVINCIAL = 3
    LITTLE_GIANT = 4


class InstitutionType(IntEnum):
    UNSPECIFIED = 0
    BANK = 1
    INSURER = 2
    FUND = 3
    GUARANTOR = 4
    LEASING = 5
    FACTOR = 6


class Channel(IntEnum):
    UNSPECIFIED = 0
    ONLINE_PORTAL = 1
    OFFLINE_WINDOW = 2
    API = 3
    ROADSHOW = 4
    CORE_ENTERPRISE = 5

    @property
    def label(self) -> str:
        """The channel's name in ids and metric labels, e.g. ``online_portal``."""
        return self.name.lower()


class DockingMode(IntEnum):
    UNSPECIFIED = 0  # taken as INTELLIGENT
    INTELLIGENT = 1
    ENTERPRISE_ACTIVE = 2
    INSTITUTION_ACTIVE = 3


class Purpose(IntEnum):
    UNSPECIFIED = 0
    WORKING_CAPITAL = 1
    EQUIPMENT_RENEWAL = 2
    TECHNOLOGY_UPGRADE = 3
    RESEARCH_AND_DEVELOPMENT = 4
    MARKET_EXPANSION = 5
    RECEIVABLES = 6


class DemandStatus(IntEnum):
    UNSPECIFIED = 0
    SUBMITTED = 1
    NEEDS_INFO = 2
    MATCHING = 3
    LEADS_ISSUED = 4
    NO_MATCH = 5
    IN_CONTACT = 6
    IN_PROCESS = 7
    FUNDED = 8
    ALL_DECLINED = 9
    CLOSED = 10
    WITHDRAWN = 11
    EXPIRED = 12
    DUPLICATE = 13


class LeadStatus(IntEnum):
    UNSPECIFIED = 0
    CREATED = 1
    DELIVERED = 2
    CONTACTED = 3
    UNDER_REVIEW = 4
    APPROVED = 5
    DISBURSED = 6
    DECLINED = 7
    WITHDRAWN = 8
    SLA_BREACHED = 9
    EXPIRED = 10


class ContactMethod(IntEnum):
    UNSPECIFIED = 0
    PHONE = 1
    VISIT = 2
    VIDEO_CALL = 3
    EMAIL = 4
    SMS = 5
    ONLINE_MESSAGE = 6


class DeclineReason(IntEnum):
    UNSPECIFIED = 0
    CREDIT_HISTORY = 1
    INSUFFICIENT_COLLATERAL = 2
    INSUFFICIENT_REVENUE = 3
    HIGH_LEVERAGE = 4
    OUTSIDE_RISK_APPETITE = 5
    INCOMPLETE_DOCUMENTS = 6
    ENTERPRISE_UNREACHABLE = 7
    ENTERPRISE_DECLINED_OFFER = 8
    PRODUCT_CRITERIA_NOT_MET = 9
    OTHER = 10


def _known(enum: type[IntEnum], value: int, *, unspecified_ok: bool = False) -> bool:
    return value in enum._value2member_map_ and (unspecified_ok or value != 0)


# -- the unified social credit code (GB 32100-2015) --------------------------------------------

USCC_CHARSET = "0123456789ABCDEFGHJKLMNPQRTUWXY"  # 31 characters: no I, O, S, V, Z
USCC_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)


def uscc_check_char(first17: str) -> str:
    """The check character of a code whose first 17 characters are ``first17``."""
    if len(first17) != 17:
        raise ValueError("a USCC has 17 characters before its check character")
    total = 0
    for char, weight in zip(first17, USCC_WEIGHTS, strict=True):
        value = USCC_CHARSET.find(char)
        if value < 0:
            raise ValueError(f"{char!r} is not a USCC character")
        total += value * weight
    check = 31 - total % 31
    return USCC_CHARSET[0 if check == 31 else check]


def uscc_problem(code: str) -> str | None:
    """Why ``code`` is not a valid unified social credit code, or None if it is."""
    if len(code) != 18:
        return f"must be 18 characters, got {len(code)}"
    bad = sorted({c for c in code if c not in USCC_CHARSET})
    if bad:
        return f"contains characters outside {USCC_CHARSET}: {''.join(bad)!r}"
    expected = uscc_check_char(code[:17])
    if code[17] != expected:
        return f"check character {code[17]!r} is wrong (expected {expected!r})"
    return None


def valid_uscc(code: str) -> bool:
    return uscc_problem(code) is None


# -- reference data (loaded from reference/ by services.demand.reference) --------------------------


@dataclass(frozen=True)
class City:
    region_code: str
    name: str
    name_zh: str


@dataclass(frozen=True)
class Reference:
    """The code lists enterprises and institutions are checked against."""

    key_industries: frozenset[int]
    special_zones: frozenset[str]
    pilot_cities: dict[str, City]  # by 6-digit region code
    provinces: frozenset[str]  # 2-digit prefixes
    sizes: frozenset[int]
    srdi_tiers: frozenset[int]

    def city_named(self, name: str) -> City | None:
        wanted = name.strip().casefold()
        return next((c for c in self.pilot_cities.values() if wanted in (c.name.casefold(), c.name_zh)), None)


# -- enterprises ---------------------------------------------------------------------------------

_REGION = re.compile(r"^\d{6}$")
_REGION_OR_PROVINCE = re.compile(r"^(\d{2}|\d{6})$")
_INDUSTRY_CODE = re.compile(r"^[A-T]?\d{2,4}$")  # GB/T 4754: section letter + 2..4 digits
TAX_CREDIT_GRADES = frozenset({"", "A", "B", "M", "C", "D"})
EARLIEST_FOUNDED_YEAR = 1800
MAX_NAME_CHARS = 200
MAX_CITY_CHARS = 64
MAX_ZONES = 24


@dataclass(frozen=True)
class Enterprise:
    uscc: str
    name: str
    region_code: str
    city: str = ""
    industry_code: str = ""
    key_industry: int = KeyIndustry.UNSPECIFIED
    size: int = EnterpriseSize.UNSPECIFIED
    srdi_tier: int = SrdiTier.UNSPECIFIED
    high_tech: bool = False
    founded_year: int = 0
    annual_revenue_fen: int = 0
    employees: int = 0
    tax_credit_grade: str = ""
    has_borrowed: bool = False
    special_zones: tuple[str, ...] = ()
    registered_at: datetime | None = None
    version: int = 0
    updated_at: datetime | None = None

    def content(self) -> Enterprise:
        """The fields an enterprise supplies (without what the platform stamps)."""
        return replace(self, registered_at=None, version=0, updated_at=None)

    def same_content(self, other: Enterprise) -> bool:
        """Equal apart from when each was registered or changed."""
        return self.content() == other.content()

    def to_json(self) -> dict:
        d = asdict(self)
        d["special_zones"] = list(self.special_zones)
        for k in ("registered_at", "updated_at"):
            at = getattr(self, k)
            d[k] = at.isoformat() if at else None
        return d

    @classmethod
    def from_json(cls, d: dict) -> Enterprise:
        d = dict(d)
        d["special_zones"] = tuple(d.get("special_zones") or ())
        for k in ("registered_at", "updated_at"):
            at = d.get(k)
            d[k] = datetime.fromisoformat(at) if at else None
        return cls(**d)


# What UpdateEnterprise may change (the update mask's paths).
ENTERPRISE_UPDATABLE: tuple[str, ...] = tuple(
    f.name for f in fields(Enterprise) if f.name not in {"uscc", "registered_at", "version", "updated_at"}
)


def updated_enterprise(current: Enterprise, incoming: Enterprise, paths: Sequence[str]) -> Enterprise:
    """``current`` with the fields named by ``paths`` (all updatable ones when empty) taken from ``incoming``."""
    v = Violations()
    unknown = sorted(set(paths) - set(ENTERPRISE_UPDATABLE))
    v.check(not unknown, "update_mask", f"cannot update {', '.join(unknown)}; updatable: "
            f"{', '.join(ENTERPRISE_UPDATABLE)}")
    v.raise_if_any()
    chosen = paths or ENTERPRISE_UPDATABLE
    return replace(current, **{p: getattr(incoming, p) for p in chosen})


def check_enterprise(v: Violations, e: Enterprise, *, now: datetime, ref: Reference | None = None,
                     prefix: str = "enterprise") -> None:
    """Add a violation for every wrong field of ``e`` (with ``ref``: also against the reference data)."""
    problem = uscc_problem(e.uscc)
    v.check(problem is None, f"{prefix}.uscc", problem or "")
    v.check(bool(e.name.strip()), f"{prefix}.name", "is required")
    v.check(len(e.name) <= MAX_NAME_CHARS, f"{prefix}.name", f"must be at most {MAX_NAME_CHARS} characters")
    v.check(bool(_REGION.match(e.region_code)), f"{prefix}.region_code",
            "must be a 6-digit administrative division code")
    v.check(not e.industry_code or bool(_INDUSTRY_CODE.match(e.industry_code)), f"{prefix}.industry_code",
            "must be a GB/T 4754 code such as C3985 or 3985")
    v.check(_known(KeyIndustry, e.key_industry), f"{prefix}.key_industry", "must be one of the ten key industries")
    v.check(_known(EnterpriseSize, e.size), f"{prefix}.size", "must be micro, small, medium or large")
    v.check(_known(SrdiTier, e.srdi_tier), f"{prefix}.srdi_tier",
            "must be specified (none, innovative SME, provincial or little giant)")
    v.check(EARLIEST_FOUNDED_YEAR <= e.founded_year <= now.year, f"{prefix}.founded_year",
            f"must be between {EARLIEST_FOUNDED_YEAR} and {now.year}")
    v.check(e.annual_revenue_fen >= 0, f"{prefix}.annual_revenue_fen", "must not be negative")
    v.check(e.employees >= 0, f"{prefix}.employees", "must not be negative")
    v.check(e.tax_credit_grade in TAX_CREDIT_GRADES, f"{prefix}.tax_credit_grade",
            "must be one of A, B, M, C, D (or empty)")
    v.check(all(z.strip() for z in e.special_zones), f"{prefix}.special_zones", "must not contain empty names")
    v.check(len(e.special_zones) <= MAX_ZONES, f"{prefix}.special_zones", f"must name at most {MAX_ZONES} zones")
    v.check(len(set(e.special_zones)) == len(e.special_zones), f"{prefix}.special_zones", "must not repeat a zone")
    v.check(len(e.city) <= MAX_CITY_CHARS, f"{prefix}.city", f"must be at most {MAX_CITY_CHARS} characters")
    if ref is None:
        return
    city = ref.pilot_cities.get(e.region_code)
    if _REGION.match(e.region_code):
        v.check(city is not None, f"{prefix}.region_code",
                "is not the region code of one of the 66 pilot cities (reference/pilot_cities.csv)")
    if city is not None and e.city.strip():
        v.check(e.city.strip().casefold() in (city.name.casefold(), city.name_zh), f"{prefix}.city",
                f"region {e.region_code} is {city.name} ({city.name_zh}), not {e.city!r}")
    if _known(KeyIndustry, e.key_industry):
        v.check(e.key_industry in ref.key_industries, f"{prefix}.key_industry",
                "is not in reference/key_industries.csv")
    if _known(EnterpriseSize, e.size):
        v.check(e.size in ref.sizes, f"{prefix}.size", "is not in reference/enterprise_sizes.csv")
    if _known(SrdiTier, e.srdi_tier):
        v.check(e.srdi_tier in ref.srdi_tiers, f"{prefix}.srdi_tier", "is not in reference/srdi_tiers.csv")
    unknown = sorted(z for z in set(e.special_zones) if z.strip() and z not in ref.special_zones)
    v.check(not unknown, f"{prefix}.special_zones",
            f"unknown zone(s) {', '.join(unknown)[:200]} (see reference/special_zones.csv)")


def validate_enterprise(e: Enterprise, *, now: datetime, ref: Reference | None = None) -> Enterprise:
    """``e`` as stored: validated, its city named as in the reference when left empty."""
    v = Violations()
    check_enterprise(v, e, now=now, ref=ref)
    v.raise_if_any()
    if ref is not None:  # one spelling of the city, whichever was sent (or none)
        e = replace(e, city=ref.pilot_cities[e.region_code].name)
    return e


# -- institutions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Institution:
    institution_id: str
    name: str
    type: int
    regions_served: tuple[str, ...] = ()
    contact_sla_hours: int = 0
    lead_topic: str = ""
    registered_at: datetime | None = None
    version: int = 0
    updated_at: datetime | None = None

    def same_content(self, other: Institution) -> bool:
        def bare(i: Institution) -> Institution:
            return replace(i, registered_at=None, version=0, updated_at=None)
        return bare(self) == bare(other)


MAX_REGIONS_SERVED = 100


def validate_institution(i: Institution, *, ref: Reference | None = None, prefix: str = "institution"
                         ) -> Institution:
    """``i`` with its defaults filled in (contact SLA 72 hours); raises naming every wrong field."""
    v = Violations()
    v.check(valid_institution_id(i.institution_id), f"{prefix}.institution_id",
            "must be 2-63 lower-case letters, digits or '-', starting with a letter or digit")
    v.check(bool(i.name.strip()), f"{prefix}.name", "is required")
    v.check(len(i.name) <= MAX_NAME_CHARS, f"{prefix}.name", f"must be at most {MAX_NAME_CHARS} characters")
    v.check(_known(InstitutionType, i.type), f"{prefix}.type",
            "must be bank, insurer, fund, guarantor, leasing or factor")
    v.check(all(_REGION_OR_PROVINCE.match(r) for r in i.regions_served), f"{prefix}.regions_served",
            "each must be a 6-digit region code or a 2-digit province prefix")
    v.check(len(i.regions_served) <= MAX_REGIONS_SERVED, f"{prefix}.regions_served",
            f"must list at most {MAX_REGIONS_SERVED} regions")
    if ref is not None:
        unknown = sorted(r for r in set(i.regions_served)
                         if _REGION_OR_PROVINCE.match(r) and r[:2] not in ref.provinces)
        v.check(not unknown, f"{prefix}.regions_served",
                f"unknown province(s) {', '.join(unknown)[:200]} (see reference/provinces.csv)")
    sla = i.contact_sla_hours or DEFAULT_CONTACT_SLA_HOURS
    v.check(1 <= sla <= MAX_CONTACT_SLA_HOURS, f"{prefix}.contact_sla_hours",
            f"must be between 1 and {MAX_CONTACT_SLA_HOURS} hours (0 = {DEFAULT_CONTACT_SLA_HOURS})")
    v.raise_if_any()
    return replace(i, contact_sla_hours=sla)


# -- demands -------------------------------------------------------------------------------------

MAX_AMOUNT_FEN = 10_000_000_000_000  # 100 billion yuan
MAX_TERM_MONTHS = 360
MAX_RATE_BPS = 3600
MAX_KEY_CHARS = MAX_ID_CHARS
MAX_INSTITUTION_IDS = 20  # preferred, and excluded, institutions per demand
MAX_REASON_CHARS = 500
DEFAULT_VALIDITY = timedelta(days=90)
MAX_VALIDITY = timedelta(days=366)
# The same need from the same enterprise within this window is a duplicate (see find_duplicate).
DUPLICATE_WINDOW = timedelta(hours=72)


@dataclass(frozen=True)
class DemandRequest:
    """What an enterprise asks for, as submitted."""

    enterprise_uscc: str
    amount_fen: int
    least_acceptable_amount_fen: int = 0
    term_months: int = 0
    max_rate_bps: int = 0
    loan_category: int = LoanCategory.UNSPECIFIED
    purpose: int = Purpose.UNSPECIFIED
    collateral_offered: tuple[int, ...] = ()
    first_loan: bool = False
    preferred_institution_ids: tuple[str, ...] = ()
    excluded_institution_ids: tuple[str, ...] = ()
    consent_to_share: bool = False
    valid_until: datetime | None = None
    docking_mode: int = DockingMode.UNSPECIFIED
    product_id: str = ""

    def content_hash(self) -> str:
        """A digest of the content as submitted: a reused idempotency key must bring the same."""
        d = asdict(self)
        d["valid_until"] = self.valid_until.astimezone(UTC).isoformat() if self.valid_until else None
        for k in ("collateral_offered", "preferred_institution_ids", "excluded_institution_ids"):
            d[k] = list(d[k])
        canonical = json.dumps(d, sort_keys=True, separators=(",", ":"), default=int)
        return hashlib.sha256(canonical.encode()).hexdigest()


def check_key(v: Violations, field_name: str, key: str) -> None:
    """An idempotency key (request id, portal id, portal demand id): required, at most 128 characters."""
    v.require(field_name, key, MAX_KEY_CHARS)


def check_demand(v: Violations, d: DemandRequest, *, now: datetime, prefix: str = "demand") -> None:
    """Add a violation for every wrong field of ``d`` (the enterprise's existence is checked by the caller)."""
    problem = uscc_problem(d.enterprise_uscc)
    v.check(problem is None, f"{prefix}.enterprise_uscc", problem or "")
    if d.amount_fen <= 0 or d.amount_fen > MAX_AMOUNT_FEN:
        v.add(f"{prefix}.amount_fen", f"must be more than 0 and at most {MAX_AMOUNT_FEN} fen (100 billion yuan)")
    v.check(0 <= d.least_acceptable_amount_fen <= max(d.amount_fen, 0), f"{prefix}.least_acceptable_amount_fen",
            "must be between 0 (the full amount) and amount_fen")
    v.check(1 <= d.term_months <= MAX_TERM_MONTHS, f"{prefix}.term_months",
            f"must be between 1 and {MAX_TERM_MONTHS} months")
    v.check(0 <= d.max_rate_bps <= MAX_RATE_BPS, f"{prefix}.max_rate_bps",
            f"must be between 0 and {MAX_RATE_BPS} basis points")
    v.check(_known(LoanCategory, d.loan_category, unspecified_ok=True), f"{prefix}.loan_category",
            "is not a known loan category")
    v.check(_known(Purpose, d.purpose), f"{prefix}.purpose", "must be a known purpose")
    v.check(all(_known(Collateral, c) for c in d.collateral_offered), f"{prefix}.collateral_offered",
            "each must be a known, specified collateral")
    v.check(len(set(d.collateral_offered)) == len(d.collateral_offered), f"{prefix}.collateral_offered",
            "must not repeat a collateral")
    for name in ("preferred_institution_ids", "excluded_institution_ids"):
        ids = getattr(d, name)
        v.check(all(valid_institution_id(i) for i in ids), f"{prefix}.{name}", "each must be a valid institution id")
        v.check(len(ids) <= MAX_INSTITUTION_IDS, f"{prefix}.{name}",
                f"must list at most {MAX_INSTITUTION_IDS} institutions")
    both = set(d.preferred_institution_ids) & set(d.excluded_institution_ids)
    v.check(not both, f"{prefix}.excluded_institution_ids", f"also preferred: {', '.join(sorted(both))}")
    v.check(d.valid_until is None or now < d.valid_until <= now + MAX_VALIDITY, f"{prefix}.valid_until",
            f"must be in the future, at most {MAX_VALIDITY.days} days ahead")
    v.check(_known(DockingMode, d.docking_mode, unspecified_ok=True), f"{prefix}.docking_mode",
            "is not a known docking mode")
    if d.docking_mode == DockingMode.ENTERPRISE_ACTIVE:
        v.check(bool(d.product_id.strip()), f"{prefix}.product_id", "is required in enterprise-active docking mode")
    v.check(len(d.product_id) <= MAX_KEY_CHARS, f"{prefix}.product_id", f"must be at most {MAX_KEY_CHARS} characters")


def with_defaults(d: DemandRequest, *, now: datetime) -> DemandRequest:
    """The request as stored: valid 90 days unless said otherwise, intelligent docking by default."""
    return replace(
        d,
        valid_until=d.valid_until or now + DEFAULT_VALIDITY,
        docking_mode=d.docking_mode or DockingMode.INTELLIGENT,
    )


@dataclass(frozen=True)
class StatusChange:
    status: DemandStatus
    at: datetime
    actor: str
    reason: str


@dataclass(frozen=True)
class LeadChange:
    status: LeadStatus
    at: datetime
    actor: str
    reason: str


@dataclass(frozen=True)
class Criterion:
    criterion: str
    demand_value: str
    product_value: str
    verdict: int
    points: int
    critical: bool


@dataclass(frozen=True, kw_only=True)
class Reported:
    """What an institution has reported of a lead: the contact, the offer, the disbursement or why
    it declined (each set by the outcome of that status, the others left as they were)."""

    contact_method: int = ContactMethod.UNSPECIFIED
    contacted_at: datetime | None = None
    offer_amount_fen: int = 0
    offer_rate_bps: int = 0
    offer_term_months: int = 0
    disbursed_amount_fen: int = 0
    disbursed_at: datetime | None = None
    decline_reason: int = DeclineReason.UNSPECIFIED
    decline_text: str = ""


@dataclass(frozen=True)
class Lead:
    """A lead as the matcher issued it, with what happened to it since (the demand service is its
    system of record: status, history and what the institution reported)."""

    lead_id: str
    demand_id: str
    institution_id: str
    product_id: str
    product_version: int
    origin: int
    score: int
    rank: int
    explanation: tuple[Criterion, ...]
    rules_version: str
    status: int
    created_at: datetime | None
    contact_due_at: datetime | None
    history: tuple[LeadChange, ...] = ()
    reported: Reported = Reported()
    updated_at: datetime | None = None

    def reached(self) -> frozenset[LeadStatus]:
        """Every status the lead has been in (the lead life cycle has no cycles)."""
        return frozenset({LeadStatus(self.status), *(h.status for h in self.history)})


@dataclass(frozen=True)
class Demand:
    demand_id: str
    request: DemandRequest
    channel: Channel
    idempotency_key: str
    content_hash: str
    status: DemandStatus
    submitted_at: datetime
    enterprise: Enterprise
    history: tuple[StatusChange, ...] = ()
    leads: tuple[Lead, ...] = ()
    no_match_explanation: str = ""
    no_match_hints: tuple[str, ...] = ()
    duplicate_of: str = ""
    operator_id: str = ""
    updated_at: datetime | None = None


# -- the demand life cycle (DOMAIN.md) -----------------------------------------------------------

S = DemandStatus
TERMINAL: frozenset[DemandStatus] = frozenset({S.CLOSED, S.WITHDRAWN, S.EXPIRED, S.DUPLICATE})
_CLOSING = frozenset({S.WITHDRAWN, S.EXPIRED})  # from any open state
TRANSITIONS: dict[DemandStatus, frozenset[DemandStatus]] = {
    S.SUBMITTED: frozenset({S.MATCHING, S.NEEDS_INFO, S.DUPLICATE}) | _CLOSING,
    S.NEEDS_INFO: frozenset({S.SUBMITTED}) | _CLOSING,
    S.MATCHING: frozenset({S.LEADS_ISSUED, S.NO_MATCH}) | _CLOSING,
    # Beyond DOMAIN.md's drawing: leads may all be declined before any review (straight from
    # DELIVERED or CONTACTED), so ALL_DECLINED is reachable from LEADS_ISSUED and IN_CONTACT too.
    S.LEADS_ISSUED: frozenset({S.IN_CONTACT, S.ALL_DECLINED}) | _CLOSING,
    S.NO_MATCH: frozenset({S.MATCHING}) | _CLOSING,  # beyond DOMAIN.md: a new product fits the open demand
    S.IN_CONTACT: frozenset({S.IN_PROCESS, S.ALL_DECLINED}) | _CLOSING,
    S.IN_PROCESS: frozenset({S.FUNDED, S.ALL_DECLINED}) | _CLOSING,
    S.ALL_DECLINED: frozenset({S.MATCHING}) | _CLOSING,  # re-match, excluding institutions already tried
    S.FUNDED: frozenset({S.CLOSED}),
    S.CLOSED: frozenset(),
    S.WITHDRAWN: frozenset(),
    S.EXPIRED: frozenset(),
    S.DUPLICATE: frozenset(),
}
OPEN: frozenset[DemandStatus] = frozenset(s for s, nxt in TRANSITIONS.items() if _CLOSING <= nxt)
# Demands a new, equal one would duplicate: still on their way to money.
LIVE: frozenset[DemandStatus] = frozenset({S.SUBMITTED, S.NEEDS_INFO, S.MATCHING, S.LEADS_ISSUED, S.IN_CONTACT,
                                           S.IN_PROCESS})


def can_transition(current: DemandStatus, to: DemandStatus) -> bool:
    return to in TRANSITIONS.get(current, frozenset())


def check_transition(current: DemandStatus, to: DemandStatus) -> None:
    """Raise :class:`FailedPrecondition` unless ``current -> to`` is a transition of the life cycle."""
    if not can_transition(current, to):
        allowed = ", ".join(s.name for s in sorted(TRANSITIONS.get(current, ()))) or "none (final state)"
        raise FailedPrecondition(f"a demand cannot go from {current.name} to {to.name} (allowed: {allowed})")


def transition(demand: Demand, to: DemandStatus, *, at: datetime, actor: str, reason: str) -> Demand:
    check_transition(demand.status, to)
    return replace(demand, status=to, history=(*demand.history, StatusChange(to, at, actor, reason)),
                   updated_at=at)


SERVICE_ACTOR = "demand"


@dataclass(frozen=True)
class RecentDemand:
    """What duplicate detection needs to know of an enterprise's recent demands."""

    demand_id: str
    enterprise_uscc: str
    amount_fen: int
    term_months: int
    loan_category: int
    status: DemandStatus
    submitted_at: datetime
    channel: Channel


def find_duplicate(request: DemandRequest, channel: Channel, recent: Iterable[RecentDemand], *, now: datetime
                   ) -> str | None:
    """The earliest live demand of the same enterprise for the same need (amount, term and loan
    category) that arrived through another channel within :data:`DUPLICATE_WINDOW`, or None.

    Within one channel, the channel's idempotency key tells a retry from a new request, so two
    keys there are two requests. A demand made of a roadshow intent (channel ROADSHOW) is an
    investor's offer, not a request: it neither is nor makes a duplicate. A demand that is over
    (withdrawn, expired, funded, no match, all declined) does not count either: asking again after
    it is a new request."""
    if channel == Channel.ROADSHOW:  # an investor's intent, not the enterprise asking again
        return None
    same = [
        r for r in recent
        if r.channel != Channel.ROADSHOW
        and r.enterprise_uscc == request.enterprise_uscc and r.amount_fen == request.amount_fen
        and r.term_months == request.term_months and r.loan_category == request.loan_category
        and r.channel != channel and r.status in LIVE and now - DUPLICATE_WINDOW <= r.submitted_at <= now
    ]
    return min(same, key=lambda r: (r.submitted_at, r.demand_id)).demand_id if same else None


def accept(*, demand_id: str, request: DemandRequest, channel: Channel, idempotency_key: str, actor: str,
           enterprise: Enterprise, now: datetime, operator_id: str = "", duplicate_of: str = "") -> Demand:
    """A validated demand as accepted: SUBMITTED by ``actor``, then, stamped ``now``,

    - DUPLICATE when it repeats ``duplicate_of`` (final: it is stored and linked, never matched);
    - NEEDS_INFO when filed at a service window (it waits for the enterprise's confirmation);
    - MATCHING otherwise.
    """
    via = f"received via {channel.label}" + (f", filed by operator {operator_id}" if operator_id else "")
    submitted = Demand(
        demand_id=demand_id,
        request=with_defaults(request, now=now),
        channel=channel,
        idempotency_key=idempotency_key,
        content_hash=request.content_hash(),
        status=S.SUBMITTED,
        submitted_at=now,
        enterprise=enterprise,
        history=(StatusChange(S.SUBMITTED, now, actor, via),),
        operator_id=operator_id,
        updated_at=now,
    )
    if duplicate_of:
        return replace(transition(submitted, S.DUPLICATE, at=now, actor=SERVICE_ACTOR,
                                  reason=f"same need as demand {duplicate_of} (same amount, term and category "
                                         f"through another channel within "
                                         f"{int(DUPLICATE_WINDOW.total_seconds() // 3600)} h); not matched again"),
                       duplicate_of=duplicate_of)
    if channel == Channel.OFFLINE_WINDOW:
        return transition(submitted, S.NEEDS_INFO, at=now, actor=SERVICE_ACTOR,
                          reason="filed at a service window: waiting for the enterprise's confirmation")
    return transition(submitted, S.MATCHING, at=now, actor=SERVICE_ACTOR, reason="validated; matching requested")


def confirm(demand: Demand, *, uscc: str, at: datetime) -> Demand:
    """The enterprise confirms a window filing: NEEDS_INFO -> SUBMITTED -> MATCHING."""
    if uscc != demand.request.enterprise_uscc:
        raise PermissionDenied("only the demand's own enterprise can confirm it")
    actor = f"enterprise:{uscc}"
    confirmed = transition(demand, S.SUBMITTED, at=at, actor=actor, reason="confirmed by the enterprise")
    return transition(confirmed, S.MATCHING, at=at, actor=SERVICE_ACTOR, reason="validated; matching requested")


@dataclass(frozen=True)
class MatchOutcome:
    status: DemandStatus
    changes: tuple[StatusChange, ...]  # in order; empty when the demand's status stays
    no_match_explanation: str | None = None  # None: leave it as it is
    leads: tuple[Lead, ...] = field(default=())
    no_match_hints: tuple[str, ...] | None = None  # with the explanation: what would make products eligible


# Where leads added to a demand matched before take it (DemandMatched with `additional`).
_REOPENED = {S.NO_MATCH: "a product now fits the open demand", S.ALL_DECLINED: "re-match after the declines"}
_WORKING = frozenset({S.LEADS_ISSUED, S.IN_CONTACT, S.IN_PROCESS})


def match_outcome(current: DemandStatus, leads: tuple[Lead, ...], explanation: str, *, at: datetime,
                  actor: str = "matcher", additional: bool = False, hints: Sequence[str] = ()) -> MatchOutcome:
    """The matcher's outcome for a demand in ``current``; its leads are recorded as delivered.

    First match: MATCHING -> LEADS_ISSUED (with leads) or NO_MATCH (with the explanation and the
    ``hints``: what would make products eligible), else
    :class:`FailedPrecondition`. Leads added later (``additional``: a new product, a re-match
    after declines or a missed contact clock, a subscription): a demand being worked keeps its
    status; MATCHING goes to LEADS_ISSUED; NO_MATCH and ALL_DECLINED go back through MATCHING to
    LEADS_ISSUED; a withdrawn demand's new leads are withdrawn at once; any other state keeps
    its status and the leads are recorded as the institutions received them."""
    delivered = tuple(deliver(lead, at=at, actor=actor) for lead in leads)
    institutions = len({lead.institution_id for lead in leads})
    issued = f"{len(leads)} lead(s) issued to {institutions} institution(s)"
    if not additional:
        if leads:
            check_transition(current, S.LEADS_ISSUED)
            return MatchOutcome(S.LEADS_ISSUED, (StatusChange(S.LEADS_ISSUED, at, actor, issued),), "", delivered,
                                no_match_hints=())
        explanation = explanation.strip() or "no eligible product"
        check_transition(current, S.NO_MATCH)
        return MatchOutcome(S.NO_MATCH, (StatusChange(S.NO_MATCH, at, actor, explanation),), explanation,
                            no_match_hints=tuple(h.strip() for h in hints if h.strip()))
    if not leads or current in _WORKING:
        return MatchOutcome(current, (), None, delivered)
    if current == S.WITHDRAWN:
        withdrawn = tuple(lead_transition(lead, L.WITHDRAWN, at=at, actor=SERVICE_ACTOR,
                                          reason="the demand was withdrawn before this lead arrived")
                          for lead in delivered)
        return MatchOutcome(current, (), None, withdrawn)
    changes: list[StatusChange] = []
    if current in _REOPENED:
        check_transition(current, S.MATCHING)
        changes.append(StatusChange(S.MATCHING, at, actor, _REOPENED[current]))
        current = S.MATCHING
    if current == S.MATCHING:
        changes.append(StatusChange(S.LEADS_ISSUED, at, actor, issued))
        return MatchOutcome(S.LEADS_ISSUED, tuple(changes), "", delivered)
    return MatchOutcome(current, (), None, delivered)


# -- the lead life cycle (DOMAIN.md) ---------------------------------------------------------------

L = LeadStatus
LEAD_TRANSITIONS: dict[LeadStatus, frozenset[LeadStatus]] = {
    L.CREATED: frozenset({L.DELIVERED}),
    L.DELIVERED: frozenset({L.CONTACTED, L.SLA_BREACHED, L.DECLINED, L.WITHDRAWN}),
    L.CONTACTED: frozenset({L.UNDER_REVIEW, L.DECLINED, L.WITHDRAWN}),
    L.UNDER_REVIEW: frozenset({L.APPROVED, L.DECLINED, L.WITHDRAWN}),
    L.APPROVED: frozenset({L.DISBURSED}),
    L.DISBURSED: frozenset(),
    L.DECLINED: frozenset(),
    L.WITHDRAWN: frozenset(),
    L.SLA_BREACHED: frozenset({L.EXPIRED}),  # a new lead goes to the next-ranked institution
    L.EXPIRED: frozenset(),
}
LEAD_TERMINAL: frozenset[LeadStatus] = frozenset(s for s, nxt in LEAD_TRANSITIONS.items() if not nxt)
# What an institution may report (the rest is the platform's: delivery, SLA, withdrawal).
REPORTABLE: tuple[LeadStatus, ...] = (L.CONTACTED, L.UNDER_REVIEW, L.APPROVED, L.DISBURSED, L.DECLINED)


def check_lead_transition(current: LeadStatus, to: LeadStatus) -> None:
    """Raise :class:`FailedPrecondition` unless ``current -> to`` is a transition of the lead life cycle."""
    if to not in LEAD_TRANSITIONS.get(current, frozenset()):
        allowed = ", ".join(s.name for s in sorted(LEAD_TRANSITIONS.get(current, ()))) or "none (final state)"
        raise FailedPrecondition(f"a lead cannot go from {current.name} to {to.name} (allowed: {allowed})")


def lead_transition(lead: Lead, to: LeadStatus, *, at: datetime, actor: str, reason: str, **reported: object) -> Lead:
    """``lead`` gone to ``to``, with the ``reported`` details that go with it (fields of :class:`Reported`)."""
    check_lead_transition(LeadStatus(lead.status), to)
    return replace(lead, status=to, history=(*lead.history, LeadChange(to, at, actor, reason)), updated_at=at,
                   reported=replace(lead.reported, **reported) if reported else lead.reported)  # type: ignore[arg-type]


def deliver(lead: Lead, *, at: datetime, actor: str = "matcher") -> Lead:
    """A lead from the matcher, recorded as CREATED then DELIVERED: the matcher publishes it on the
    institution's lead topic in the same transaction as the match outcome that brings it here."""
    created = replace(lead, status=L.CREATED, history=(LeadChange(
        L.CREATED, lead.created_at or at, actor,
        f"matched product {lead.product_id} v{lead.product_version}: score {lead.score}, rank {lead.rank}"),))
    return lead_transition(created, L.DELIVERED, at=at, actor=actor,
                           reason=f"published on the lead topic of {lead.institution_id}")


def intent_lead(*, lead_id: str, demand_id: str, institution_id: str, at: datetime, contact_sla_hours: int,
                roadshow_id: str, intent: str) -> Lead:
    """The lead an investor's intent at a roadshow makes (origin ROADSHOW, no product, rank 1), as
    CREATED; :func:`match_outcome` records it delivered, as it does the matcher's."""
    return Lead(lead_id=lead_id, demand_id=demand_id, institution_id=institution_id, product_id="",
                product_version=0, origin=ORIGIN_ROADSHOW, score=0, rank=1,
                explanation=(Criterion("roadshow_intent", intent, f"roadshow {roadshow_id}", 1, 0, False),),
                rules_version="roadshow", status=L.CREATED, created_at=at,
                contact_due_at=at + timedelta(hours=contact_sla_hours))


ORIGIN_ROADSHOW = 4  # finmesh.lead.v1.LEAD_ORIGIN_ROADSHOW


@dataclass(frozen=True, kw_only=True)
class Outcome(Reported):
    """What an institution reports about one of its leads: a status, the details that go with it,
    and a note."""

    status: int
    note: str = ""


MAX_NOTE_CHARS = 1000
CLOCK_SKEW = timedelta(minutes=5)


def check_outcome(v: Violations, o: Outcome, *, now: datetime, prefix: str = "outcome") -> None:
    """Add a violation for every wrong field of ``o``."""
    if o.status not in REPORTABLE:
        v.add(f"{prefix}.status", "must be CONTACTED, UNDER_REVIEW, APPROVED, DISBURSED or DECLINED")
    if o.status == L.CONTACTED:
        v.check(_known(ContactMethod, o.contact_method), f"{prefix}.contact.method", "must be a known contact method")
        v.check(o.contacted_at is None or o.contacted_at <= now + CLOCK_SKEW, f"{prefix}.contact.contacted_at",
                "must not be in the future")
    if o.status == L.APPROVED:
        if not 0 < o.offer_amount_fen <= MAX_AMOUNT_FEN:
            v.add(f"{prefix}.offer.amount_fen", f"must be more than 0 and at most {MAX_AMOUNT_FEN} fen")
        v.check(0 <= o.offer_rate_bps <= MAX_RATE_BPS, f"{prefix}.offer.rate_bps",
                f"must be between 0 and {MAX_RATE_BPS} basis points")
        v.check(1 <= o.offer_term_months <= MAX_TERM_MONTHS, f"{prefix}.offer.term_months",
                f"must be between 1 and {MAX_TERM_MONTHS} months")
    if o.status == L.DISBURSED:
        if not 0 < o.disbursed_amount_fen <= MAX_AMOUNT_FEN:
            v.add(f"{prefix}.disbursement.amount_fen", f"must be more than 0 and at most {MAX_AMOUNT_FEN} fen")
        v.check(o.disbursed_at is not None and o.disbursed_at <= now + CLOCK_SKEW,
                f"{prefix}.disbursement.disbursed_at", "is required and must not be in the future")
    if o.status == L.DECLINED:
        v.check(_known(DeclineReason, o.decline_reason), f"{prefix}.decline.reason_code",
                "must be one of the decline reasons of finmesh.lead.v1.DeclineReason")
        v.check(o.decline_reason != DeclineReason.OTHER or bool(o.decline_text.strip()), f"{prefix}.decline.text",
                "is required when the reason is OTHER")
        v.check(len(o.decline_text) <= MAX_NOTE_CHARS, f"{prefix}.decline.text",
                f"must be at most {MAX_NOTE_CHARS} characters")
    v.check(len(o.note) <= MAX_NOTE_CHARS, f"{prefix}.note", f"must be at most {MAX_NOTE_CHARS} characters")


def _yuan(fen: int) -> str:
    return f"{fen // 100:,}.{fen % 100:02d} yuan"


def _outcome_details(o: Outcome, at: datetime) -> tuple[dict[str, object], str]:
    """The lead fields an outcome sets, and the history's reason for it."""
    s = LeadStatus(o.status)
    if s == L.CONTACTED:
        method = ContactMethod(o.contact_method)
        return ({"contact_method": int(method), "contacted_at": o.contacted_at or at},
                f"contacted by {method.name.lower().replace('_', ' ')}")
    if s == L.APPROVED:
        return ({"offer_amount_fen": o.offer_amount_fen, "offer_rate_bps": o.offer_rate_bps,
                 "offer_term_months": o.offer_term_months},
                f"approved: {_yuan(o.offer_amount_fen)} at {o.offer_rate_bps / 100:.2f}% for "
                f"{o.offer_term_months} months")
    if s == L.DISBURSED:
        return ({"disbursed_amount_fen": o.disbursed_amount_fen, "disbursed_at": o.disbursed_at},
                f"disbursed {_yuan(o.disbursed_amount_fen)}")
    if s == L.DECLINED:
        reason = DeclineReason(o.decline_reason)
        text = f": {o.decline_text.strip()}" if o.decline_text.strip() else ""
        return ({"decline_reason": int(reason), "decline_text": o.decline_text.strip()},
                f"declined ({reason.name}){text}")
    return {}, "under review"


def apply_outcome(lead: Lead, o: Outcome, *, at: datetime, actor: str) -> tuple[Lead, bool]:
    """``lead`` after the institution's report ``o``, and whether anything changed.

    Reporting a status the lead already reached, with the same details, changes nothing (a
    repeated report); with other details it is refused. Otherwise the transition must be one of
    the lead life cycle, else :class:`FailedPrecondition` and nothing is applied."""
    to = LeadStatus(o.status)
    details, reason = _outcome_details(o, at)
    if to in lead.reached():
        if to == L.CONTACTED and o.contacted_at is None:
            details.pop("contacted_at")  # "when reported" is not a different detail
        if all(getattr(lead.reported, k) == v for k, v in details.items()):
            return lead, False
        raise FailedPrecondition(f"lead {lead.lead_id} was already reported {to.name} with other details")
    note = f" — {o.note.strip()}" if o.note.strip() else ""
    return lead_transition(lead, to, at=at, actor=actor, reason=reason + note, **details), True


def withdrawable(lead: Lead) -> bool:
    return L.WITHDRAWN in LEAD_TRANSITIONS.get(LeadStatus(lead.status), frozenset())


def withdraw(demand: Demand, *, uscc: str, reason: str, at: datetime) -> Demand:
    """The enterprise withdraws its demand (any open state) and, with it, every lead still open."""
    if uscc != demand.request.enterprise_uscc:
        raise PermissionDenied("only the demand's own enterprise can withdraw it")
    v = Violations()
    v.check(len(reason) <= MAX_REASON_CHARS, "reason", f"must be at most {MAX_REASON_CHARS} characters")
    v.raise_if_any()
    actor = f"enterprise:{uscc}"
    why = reason.strip() or "withdrawn by the enterprise"
    withdrawn = transition(demand, S.WITHDRAWN, at=at, actor=actor, reason=why)
    return replace(withdrawn, leads=close_leads(demand.leads, at=at, actor=actor, reason=f"demand withdrawn: {why}"))


def close_leads(leads: Sequence[Lead], *, at: datetime, actor: str, reason: str) -> tuple[Lead, ...]:
    """``leads`` once their demand is over (withdrawn, expired, funded): each one still being worked
    (delivered, contacted, under review) is WITHDRAWN with ``reason``, which stops its contact clock
    and tells its institution; one whose clock ran out (SLA_BREACHED) is EXPIRED; an approved offer
    and the closed ones stay as they are."""
    return tuple(
        lead_transition(lead, L.WITHDRAWN, at=at, actor=actor, reason=reason) if withdrawable(lead)
        else lead_transition(lead, L.EXPIRED, at=at, actor=actor, reason=reason) if lead.status == L.SLA_BREACHED
        else lead
        for lead in leads
    )


def sla_breach_reason(consent_to_share: bool) -> str:
    """Why a lead's clock ran out, as the enterprise is told: its demand goes on only with its consent."""
    if consent_to_share:
        return "contact deadline passed; the demand goes to the next-best institution that fits"
    return ("contact deadline passed; the demand goes to no other institution without the enterprise's consent "
            "to share it (consent_to_share)")


def rerouted(leads: Sequence[Lead], new: Sequence[Lead], *, at: datetime, actor: str) -> tuple[Lead, ...]:
    """``leads`` (a demand's) once ``new`` leads went out for it: each lead whose contact clock ran out
    (SLA_BREACHED) is EXPIRED, the demand having gone on to other institutions."""
    if not new:
        return tuple(leads)
    to = ", ".join(sorted({lead.institution_id for lead in new}))
    return tuple(lead_transition(lead, L.EXPIRED, at=at, actor=actor, reason=f"re-routed: the demand went on to {to}")
                 if lead.status == L.SLA_BREACHED else lead for lead in leads)


_PROGRESS = (S.LEADS_ISSUED, S.IN_CONTACT, S.IN_PROCESS, S.FUNDED)
NOT_TAKEN_UP = frozenset({L.DECLINED, L.SLA_BREACHED, L.EXPIRED})  # what leaves a demand ALL_DECLINED


def demand_progress(current: DemandStatus, leads: Sequence[Lead], *, amount_fen: int,
                    least_acceptable_amount_fen: int) -> list[DemandStatus]:
    """The demand statuses its leads' outcomes lead to, in order (empty: no change).

    First contact -> IN_CONTACT; under review or approved -> IN_PROCESS; disbursed in total at
    least the least acceptable amount (the full amount when 0) -> FUNDED; every lead declined,
    or gone without contact (its clock ran out: SLA_BREACHED or EXPIRED) -> ALL_DECLINED, from
    where a re-match opens the demand again. Only forward, from LEADS_ISSUED, IN_CONTACT or
    IN_PROCESS; a demand withdrawn, expired or funded is not moved."""
    if current not in _PROGRESS[:-1] or not leads:
        return []
    reached = frozenset().union(*(lead.reached() for lead in leads))
    threshold = least_acceptable_amount_fen or amount_fen
    disbursed = sum(lead.reported.disbursed_amount_fen for lead in leads if lead.status == L.DISBURSED)
    if disbursed >= threshold:
        target = S.FUNDED
    elif all(lead.status in NOT_TAKEN_UP for lead in leads):
        return [S.ALL_DECLINED]
    elif reached & {L.UNDER_REVIEW, L.APPROVED, L.DISBURSED}:
        target = S.IN_PROCESS
    elif L.CONTACTED in reached:
        target = S.IN_CONTACT
    else:
        return []
    here, there = _PROGRESS.index(current), _PROGRESS.index(target)
    return list(_PROGRESS[here + 1: there + 1])


def progress_reason(to: DemandStatus, lead: Lead) -> str:
    return {
        S.IN_CONTACT: f"first contact by {lead.institution_id}",
        S.IN_PROCESS: f"{lead.institution_id} is reviewing or has approved the application",
        S.FUNDED: f"disbursed by {lead.institution_id}: at least the least acceptable amount",
        S.ALL_DECLINED: "no institution took it up: each declined or did not make contact in time",
    }.get(to, to.name)
