"""The demand service's pure core: enterprises, institutions, demands, their validation,
the USCC check character and the demand life cycle. No I/O and no protobuf here.

Enumerations mirror the contracts' numbering (``finmesh.*.v1``) so that mapping is a plain
``int`` conversion; ``tests/unit/test_demand_domain.py`` checks that they stay in step.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import IntEnum

from meshkit.errors import FailedPrecondition, Violations
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


# -- enterprises ---------------------------------------------------------------------------------

_REGION = re.compile(r"^\d{6}$")
_REGION_OR_PROVINCE = re.compile(r"^(\d{2}|\d{6})$")
_INDUSTRY_CODE = re.compile(r"^[A-T]?\d{2,4}$")  # GB/T 4754: section letter + 2..4 digits
TAX_CREDIT_GRADES = frozenset({"", "A", "B", "M", "C", "D"})
EARLIEST_FOUNDED_YEAR = 1800
MAX_NAME_CHARS = 200


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

    def same_content(self, other: Enterprise) -> bool:
        """Equal apart from when each was registered."""
        return replace(self, registered_at=None) == replace(other, registered_at=None)

    def to_json(self) -> dict:
        d = asdict(self)
        d["special_zones"] = list(self.special_zones)
        d["registered_at"] = self.registered_at.isoformat() if self.registered_at else None
        return d

    @classmethod
    def from_json(cls, d: dict) -> Enterprise:
        d = dict(d)
        d["special_zones"] = tuple(d.get("special_zones") or ())
        at = d.get("registered_at")
        d["registered_at"] = datetime.fromisoformat(at) if at else None
        return cls(**d)


def check_enterprise(v: Violations, e: Enterprise, *, now: datetime, prefix: str = "enterprise") -> None:
    """Add a violation for every wrong field of ``e``."""
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


def validate_enterprise(e: Enterprise, *, now: datetime) -> Enterprise:
    v = Violations()
    check_enterprise(v, e, now=now)
    v.raise_if_any()
    return e


# -- institutions --------------------------------------------------------------------------------

DEFAULT_CONTACT_SLA_HOURS = 72
MAX_CONTACT_SLA_HOURS = 720


@dataclass(frozen=True)
class Institution:
    institution_id: str
    name: str
    type: int
    regions_served: tuple[str, ...] = ()
    contact_sla_hours: int = 0
    lead_topic: str = ""
    registered_at: datetime | None = None

    def same_content(self, other: Institution) -> bool:
        return replace(self, registered_at=None) == replace(other, registered_at=None)


def validate_institution(i: Institution, *, prefix: str = "institution") -> Institution:
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
    sla = i.contact_sla_hours or DEFAULT_CONTACT_SLA_HOURS
    v.check(1 <= sla <= MAX_CONTACT_SLA_HOURS, f"{prefix}.contact_sla_hours",
            f"must be between 1 and {MAX_CONTACT_SLA_HOURS} hours (0 = {DEFAULT_CONTACT_SLA_HOURS})")
    v.raise_if_any()
    return replace(i, contact_sla_hours=sla)


# -- demands -------------------------------------------------------------------------------------

MAX_AMOUNT_FEN = 10_000_000_000_000  # 100 billion yuan
MAX_TERM_MONTHS = 360
MAX_RATE_BPS = 3600
MAX_KEY_CHARS = 128
DEFAULT_VALIDITY = timedelta(days=90)


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
    if not key.strip():
        v.add(field_name, "is required")
    elif len(key) > MAX_KEY_CHARS:
        v.add(field_name, f"must be at most {MAX_KEY_CHARS} characters")


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
    both = set(d.preferred_institution_ids) & set(d.excluded_institution_ids)
    v.check(not both, f"{prefix}.excluded_institution_ids", f"also preferred: {', '.join(sorted(both))}")
    v.check(d.valid_until is None or d.valid_until > now, f"{prefix}.valid_until", "must be in the future")
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
class Criterion:
    criterion: str
    demand_value: str
    product_value: str
    verdict: int
    points: int
    critical: bool


@dataclass(frozen=True)
class Lead:
    """A lead as the matcher issued it (the demand service records it; the matcher decides it)."""

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


# -- the demand life cycle (DOMAIN.md) -----------------------------------------------------------

S = DemandStatus
TERMINAL: frozenset[DemandStatus] = frozenset({S.CLOSED, S.WITHDRAWN, S.EXPIRED})
_CLOSING = frozenset({S.WITHDRAWN, S.EXPIRED})  # from any open state
TRANSITIONS: dict[DemandStatus, frozenset[DemandStatus]] = {
    S.SUBMITTED: frozenset({S.MATCHING, S.NEEDS_INFO}) | _CLOSING,
    S.NEEDS_INFO: frozenset({S.SUBMITTED}) | _CLOSING,
    S.MATCHING: frozenset({S.LEADS_ISSUED, S.NO_MATCH}) | _CLOSING,
    S.LEADS_ISSUED: frozenset({S.IN_CONTACT}) | _CLOSING,
    S.NO_MATCH: _CLOSING,
    S.IN_CONTACT: frozenset({S.IN_PROCESS}) | _CLOSING,
    S.IN_PROCESS: frozenset({S.FUNDED, S.ALL_DECLINED}) | _CLOSING,
    S.ALL_DECLINED: frozenset({S.MATCHING}) | _CLOSING,  # re-match, excluding institutions already tried
    S.FUNDED: frozenset({S.CLOSED}),
    S.CLOSED: frozenset(),
    S.WITHDRAWN: frozenset(),
    S.EXPIRED: frozenset(),
}
OPEN: frozenset[DemandStatus] = frozenset(s for s, nxt in TRANSITIONS.items() if _CLOSING <= nxt)


def can_transition(current: DemandStatus, to: DemandStatus) -> bool:
    return to in TRANSITIONS.get(current, frozenset())


def check_transition(current: DemandStatus, to: DemandStatus) -> None:
    """Raise :class:`FailedPrecondition` unless ``current -> to`` is a transition of the life cycle."""
    if not can_transition(current, to):
        allowed = ", ".join(s.name for s in sorted(TRANSITIONS.get(current, ()))) or "none (final state)"
        raise FailedPrecondition(f"a demand cannot go from {current.name} to {to.name} (allowed: {allowed})")


def transition(demand: Demand, to: DemandStatus, *, at: datetime, actor: str, reason: str) -> Demand:
    check_transition(demand.status, to)
    return replace(demand, status=to, history=(*demand.history, StatusChange(to, at, actor, reason)))


SERVICE_ACTOR = "demand"


def accept(*, demand_id: str, request: DemandRequest, channel: Channel, idempotency_key: str, actor: str,
           enterprise: Enterprise, now: datetime) -> Demand:
    """A validated demand as accepted: SUBMITTED by ``actor``, then MATCHING, stamped ``now``."""
    submitted = Demand(
        demand_id=demand_id,
        request=with_defaults(request, now=now),
        channel=channel,
        idempotency_key=idempotency_key,
        content_hash=request.content_hash(),
        status=S.SUBMITTED,
        submitted_at=now,
        enterprise=enterprise,
        history=(StatusChange(S.SUBMITTED, now, actor, f"received via {channel.label}"),),
    )
    return transition(submitted, S.MATCHING, at=now, actor=SERVICE_ACTOR, reason="validated; matching requested")


@dataclass(frozen=True)
class MatchOutcome:
    status: DemandStatus
    change: StatusChange
    no_match_explanation: str = ""
    leads: tuple[Lead, ...] = field(default=())


def match_outcome(current: DemandStatus, leads: tuple[Lead, ...], explanation: str, *, at: datetime,
                  actor: str = "matcher") -> MatchOutcome:
    """MATCHING -> LEADS_ISSUED (with leads) or NO_MATCH (with the explanation)."""
    if leads:
        institutions = len({lead.institution_id for lead in leads})
        to = S.LEADS_ISSUED
        reason = f"{len(leads)} lead(s) issued to {institutions} institution(s)"
        explanation = ""
    else:
        to = S.NO_MATCH
        explanation = explanation.strip() or "no eligible product"
        reason = explanation
    check_transition(current, to)
    return MatchOutcome(status=to, change=StatusChange(to, at, actor, reason), no_match_explanation=explanation,
                        leads=leads)
