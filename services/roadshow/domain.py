"""The roadshow service's pure core: the monthly plan (theme rotation, city, dates), the
roadshow's validation and life cycle, applicants' eligibility, the selection ranking and
intents' validation. No I/O and no protobuf here.

Vocabulary (SRDI tiers, key industries, purposes, institution types) and reference data
(special zones, pilot cities) are the demand service's (``services.demand.domain`` and
``reference/``): reused, not copied. Enumerations share the contracts' numbering.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import IntEnum

from meshkit.errors import FailedPrecondition, Violations
from services.demand.domain import (
    MAX_AMOUNT_FEN,
    MAX_TERM_MONTHS,
    InstitutionType,
    KeyIndustry,
    Purpose,
    Reference,
    SrdiTier,
    uscc_problem,
)

# -- vocabulary (numbering as in finmesh/roadshow/v1) ----------------------------------------------


class Status(IntEnum):
    UNSPECIFIED = 0
    PLANNED = 1
    OPEN_FOR_APPLICATIONS = 2
    SELECTION = 3
    HELD = 4
    CANCELLED = 5


class ThemeKind(IntEnum):
    UNSPECIFIED = 0
    KEY_INDUSTRY = 1
    SPECIAL_ZONE = 2
    SUPPLY_CHAIN = 3


class ApplicationStatus(IntEnum):
    UNSPECIFIED = 0
    APPLIED = 1
    REFUSED = 2
    SELECTED = 3
    NOT_SELECTED = 4


class Instrument(IntEnum):
    UNSPECIFIED = 0
    LOAN = 1
    EQUITY = 2
    OTHER = 3


INVESTOR_TYPES = frozenset({InstitutionType.BANK, InstitutionType.INSURER, InstitutionType.FUND})
ELIGIBLE_TIERS = frozenset({SrdiTier.PROVINCIAL, SrdiTier.LITTLE_GIANT})
BEFORE_SELECTION = frozenset({Status.PLANNED, Status.OPEN_FOR_APPLICATIONS})

DEFAULT_CAPACITY = 12
MAX_CAPACITY = 200
MAX_TITLE_CHARS = 200
MAX_PITCH_CHARS = 2000
MAX_NOTE_CHARS = 1000
MAX_REASON_CHARS = 500
DEFAULT_INTENT_TERM_MONTHS = 12
DEFAULT_CLOSE_BEFORE = timedelta(days=7)  # an extra roadshow's window closes a week before it is held
_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


@dataclass(frozen=True)
class Theme:
    kind: ThemeKind
    title: str
    industry: int = KeyIndustry.UNSPECIFIED  # KEY_INDUSTRY, SUPPLY_CHAIN
    zone: str = ""  # SPECIAL_ZONE (optional for SUPPLY_CHAIN)


@dataclass(frozen=True)
class Roadshow:
    roadshow_id: str
    month: str
    theme: Theme
    city: str
    held_at: datetime
    applications_open_at: datetime
    applications_close_at: datetime
    capacity: int
    status: Status = Status.PLANNED
    automatic: bool = False
    presenters: int = 0
    created_at: datetime | None = None
    version: int = 1

    def window_open(self, now: datetime) -> bool:
        return self.status in BEFORE_SELECTION and self.applications_open_at <= now < self.applications_close_at

    @property
    def title(self) -> str:
        return f"{self.theme.title} ({self.month})"


@dataclass(frozen=True)
class EnterpriseView:
    """What the roadshow knows of an enterprise (from ``demand.enterprise-changed.v1``)."""

    uscc: str
    name: str = ""
    key_industry: int = KeyIndustry.UNSPECIFIED
    srdi_tier: int = SrdiTier.UNSPECIFIED
    has_borrowed: bool = False
    special_zones: tuple[str, ...] = ()


# -- months and the monthly plan ---------------------------------------------------------------------


def month_of(at: datetime) -> str:
    at = at.astimezone(UTC)
    return f"{at.year:04d}-{at.month:02d}"


def _first_day(month: str, shift: int = 0) -> datetime:
    year, mon = int(month[:4]), int(month[5:])
    index = year * 12 + mon - 1 + shift
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def next_month(month: str) -> str:
    return month_of(_first_day(month, 1))


def _month_index(month: str) -> int:
    return int(month[:4]) * 12 + int(month[5:]) - 1


# The rotation of themes over the months: the ten key industries, five special zones and two
# supply chains (a key industry's chain, with the zone of stable industrial and supply chains).
_K, _Z, _S = ThemeKind.KEY_INDUSTRY, ThemeKind.SPECIAL_ZONE, ThemeKind.SUPPLY_CHAIN
THEME_ROTATION: tuple[Theme, ...] = (
    Theme(_K, "Integrated circuits", KeyIndustry.INTEGRATED_CIRCUITS),
    Theme(_Z, "Advanced manufacturing clusters", zone="advanced-manufacturing-cluster"),
    Theme(_K, "New-energy-vehicle devices and accessories", KeyIndustry.NEV_DEVICES),
    Theme(_K, "Intelligent manufacturing equipment", KeyIndustry.INTELLIGENT_EQUIPMENT),
    Theme(_S, "New-energy-vehicle supply chain", KeyIndustry.NEV_DEVICES, "supply-chain-stability"),
    Theme(_K, "Petrochemical and chemical", KeyIndustry.PETROCHEMICAL),
    Theme(_K, "New electronic components", KeyIndustry.ELECTRONIC_COMPONENTS),
    Theme(_Z, "Industrial internet", zone="industrial-internet"),
    Theme(_K, "Biomedicine and medical equipment", KeyIndustry.BIOMEDICINE),
    Theme(_K, "Artificial intelligence", KeyIndustry.ARTIFICIAL_INTELLIGENCE),
    Theme(_Z, "Industrial green development", zone="industrial-green-development"),
    Theme(_K, "Cutting-edge new materials", KeyIndustry.NEW_MATERIALS),
    Theme(_S, "Integrated-circuit supply chain", KeyIndustry.INTEGRATED_CIRCUITS, "key-industrial-chains"),
    Theme(_K, "5G + industrial internet", KeyIndustry.INDUSTRIAL_INTERNET_5G),
    Theme(_Z, "Equipment renewal", zone="equipment-renewal"),
    Theme(_K, "Aerospace", KeyIndustry.AEROSPACE),
    Theme(_Z, "Intelligent manufacturing", zone="intelligent-manufacturing"),
)
HELD_DAY, HELD_HOUR_UTC = 15, 6  # the 15th, 14:00 Beijing time
CLOSE_DAY = 8  # applications close at the start of the 8th
AUTOMATIC_CAPACITY = DEFAULT_CAPACITY


def plan_month(month: str, *, roadshow_id: str, ref: Reference) -> Roadshow:
    """The automatic roadshow of ``month``: the theme and the pilot city rotate with the month
    (cities in region-code order); held on the 15th at 06:00 UTC; applications from the 1st of
    the month before to the 8th."""
    index = _month_index(month)
    cities = sorted(ref.pilot_cities.values(), key=lambda c: c.region_code)
    first = _first_day(month)
    return Roadshow(
        roadshow_id=roadshow_id, month=month, theme=THEME_ROTATION[index % len(THEME_ROTATION)],
        city=cities[index % len(cities)].name,
        held_at=first.replace(day=HELD_DAY, hour=HELD_HOUR_UTC),
        applications_open_at=_first_day(month, -1),
        applications_close_at=_applications_close(month),
        capacity=AUTOMATIC_CAPACITY, automatic=True,
    )


def _applications_close(month: str) -> datetime:
    return _first_day(month).replace(day=CLOSE_DAY)


def months_to_plan(now: datetime) -> tuple[str, ...]:
    """The schedule keeps this month's roadshow and next month's (open for applications) in place;
    this month's only while its applications are still open (a service first started after the
    8th does not create a roadshow nobody could apply to)."""
    this = month_of(now)
    return tuple(m for m in (this, next_month(this)) if now < _applications_close(m))


# -- validation ---------------------------------------------------------------------------------------


def check_theme(v: Violations, t: Theme, ref: Reference, prefix: str = "roadshow") -> None:
    v.check(bool(t.title.strip()) and len(t.title) <= MAX_TITLE_CHARS, f"{prefix}.theme",
            f"is required, at most {MAX_TITLE_CHARS} characters")
    if t.kind not in ThemeKind._value2member_map_ or t.kind == ThemeKind.UNSPECIFIED:
        v.add(f"{prefix}.theme_kind", "must be KEY_INDUSTRY, SPECIAL_ZONE or SUPPLY_CHAIN")
        return
    needs_industry = t.kind in (ThemeKind.KEY_INDUSTRY, ThemeKind.SUPPLY_CHAIN)
    if needs_industry:
        v.check(t.industry in ref.key_industries, f"{prefix}.theme_industry",
                f"a {t.kind.name} theme needs one of the ten key industries")
    else:
        v.check(t.industry == KeyIndustry.UNSPECIFIED, f"{prefix}.theme_industry",
                "must be unspecified for a SPECIAL_ZONE theme")
    if t.kind == ThemeKind.SPECIAL_ZONE:
        v.check(t.zone in ref.special_zones, f"{prefix}.theme_zone",
                "a SPECIAL_ZONE theme needs a special zone of reference/special_zones.csv")
    elif t.kind == ThemeKind.SUPPLY_CHAIN:
        v.check(t.zone == "" or t.zone in ref.special_zones, f"{prefix}.theme_zone",
                "is not a special zone of reference/special_zones.csv")
    else:
        v.check(t.zone == "", f"{prefix}.theme_zone", "must be empty for a KEY_INDUSTRY theme")


def validate_roadshow(r: Roadshow, ref: Reference, prefix: str = "roadshow", *, v: Violations | None = None,
                      close_defaulted: bool = False) -> Roadshow:
    """``r`` as it may be stored (the city's canonical name, the month of ``held_at``), else
    :class:`ValidationFailed` naming every wrong field (with those already in ``v``). When the
    caller derived ``applications_close_at`` from ``held_at`` (``close_defaulted``), a window
    that would close too early is ``held_at``'s fault."""
    v = v or Violations()
    check_theme(v, r.theme, ref, prefix)
    city = ref.city_named(r.city) if r.city.strip() else None
    v.check(city is not None, f"{prefix}.city", "must be one of the pilot cities (reference/pilot_cities.csv)")
    v.check(1 <= r.capacity <= MAX_CAPACITY, f"{prefix}.capacity", f"must be between 1 and {MAX_CAPACITY}")
    v.check(r.month == "" or bool(_MONTH.match(r.month)), f"{prefix}.month", "must look like 2026-11")
    if r.month and _MONTH.match(r.month):
        v.check(month_of(r.held_at) == r.month, f"{prefix}.month", "must be the month of held_at (UTC)")
    if close_defaulted:
        held = f"{prefix}.held_at"
        if held not in v.fields():  # e.g. missing: said already
            v.check(r.applications_open_at < r.applications_close_at, held,
                    f"is too soon: applications close {DEFAULT_CLOSE_BEFORE.days} days before it (no "
                    "applications_close_at given), which must be after applications_open_at")
    else:
        v.check(r.applications_open_at < r.applications_close_at, f"{prefix}.applications_close_at",
                "must be after applications_open_at")
        v.check(r.applications_close_at <= r.held_at, f"{prefix}.applications_close_at",
                "must be at or before held_at")
    v.raise_if_any()
    assert city is not None
    return replace(r, city=city.name, month=month_of(r.held_at))


# What UpdateRoadshow may change, and what may change once presenters are selected.
UPDATABLE = ("theme", "city", "held_at", "capacity", "applications_open_at", "applications_close_at")
FROZEN_AFTER_SELECTION = frozenset({"theme", "capacity", "applications_open_at", "applications_close_at"})


def updated(current: Roadshow, incoming: Roadshow, paths: Sequence[str], ref: Reference) -> Roadshow:
    """``current`` with the fields of ``paths`` from ``incoming``, validated; :class:`FailedPrecondition`
    for a change a roadshow past its window no longer allows."""
    v = Violations()
    v.check(bool(paths), "update_mask", f"name the fields to change: {', '.join(UPDATABLE)}")
    for p in paths:
        v.check(p in UPDATABLE, "update_mask", f"{p!r} cannot be changed (only {', '.join(UPDATABLE)})")
    v.raise_if_any()
    if current.status in (Status.HELD, Status.CANCELLED):
        raise FailedPrecondition(f"roadshow {current.roadshow_id} is {current.status.name}: it can no longer change")
    late = sorted(set(paths) & FROZEN_AFTER_SELECTION)
    if current.status not in BEFORE_SELECTION and late:
        raise FailedPrecondition(f"presenters are selected: {', '.join(late)} can no longer change")
    fields: dict[str, object] = {}
    for p in paths:
        fields[p] = incoming.theme if p == "theme" else getattr(incoming, p)
    changed = replace(current, month="", **fields)  # type: ignore[arg-type]
    if current.automatic:  # the month's roadshow: another month has its own (one per month)
        v.check(month_of(changed.held_at) == current.month, "roadshow.held_at",
                f"must stay in {current.month}: an automatic roadshow is that month's roadshow")
    return validate_roadshow(changed, ref, "roadshow", v=v)


# -- eligibility and ranking -------------------------------------------------------------------------


def _tier_name(tier: int) -> str:
    return SrdiTier(tier).name if tier in SrdiTier._value2member_map_ else str(tier)


def _industry_name(industry: int) -> str:
    return KeyIndustry(industry).name if industry in KeyIndustry._value2member_map_ else str(industry)


def theme_fit(e: EnterpriseView, t: Theme) -> tuple[bool, bool]:
    """(in the theme's key industry, in the theme's special zone)."""
    industry = t.industry != KeyIndustry.UNSPECIFIED and e.key_industry == t.industry
    zone = bool(t.zone) and t.zone in e.special_zones
    return industry, zone


def refusal_reasons(e: EnterpriseView, t: Theme) -> list[str]:
    """Why ``e`` may not present at a roadshow on ``t`` (empty: eligible). An enterprise must be a
    provincial SRDI enterprise or a national little giant, in the theme's key industry or in its
    special zone."""
    reasons = []
    if e.srdi_tier not in ELIGIBLE_TIERS:
        reasons.append(f"SRDI tier is {_tier_name(e.srdi_tier)}: a provincial SRDI enterprise or a national "
                       "\"little giant\" is required")
    if not any(theme_fit(e, t)):
        wanted = []
        if t.industry != KeyIndustry.UNSPECIFIED:
            wanted.append(f"in the key industry {_industry_name(t.industry)} "
                          f"(the enterprise's is {_industry_name(e.key_industry)})")
        if t.zone:
            wanted.append(f"in the special zone {t.zone} (the enterprise's zones: "
                          f"{', '.join(e.special_zones) or 'none'})")
        reasons.append(f"outside the theme {t.title!r}: it must be " + " or ".join(wanted))
    return reasons


@dataclass(frozen=True)
class Candidate:
    enterprise: EnterpriseView
    amount_sought_fen: int
    applied_at: datetime


@dataclass(frozen=True)
class Criterion:
    criterion: str
    value: str
    points: int


@dataclass(frozen=True)
class Ranked:
    uscc: str
    eligible: bool
    selected: bool
    score: int
    rank: int  # 1 = best; 0 = not eligible
    criteria: tuple[Criterion, ...]
    reason: str


TIER_POINTS = {SrdiTier.LITTLE_GIANT: 40, SrdiTier.PROVINCIAL: 25}
INDUSTRY_POINTS = 20
ZONE_POINTS = 20
YUAN = 100
AMOUNT_BANDS = ((50_000_000 * YUAN, 20), (10_000_000 * YUAN, 15), (1_000_000 * YUAN, 10), (0, 5))
FIRST_TIME_POINTS = 15


def score(c: Candidate, t: Theme) -> tuple[int, tuple[Criterion, ...]]:
    """The ranking's points for ``c``, criterion by criterion (README: the selection ranking)."""
    e = c.enterprise
    industry, zone = theme_fit(e, t)
    amount_points = next(p for floor, p in AMOUNT_BANDS if c.amount_sought_fen >= floor)
    criteria = (
        Criterion("srdi_tier", _tier_name(e.srdi_tier), TIER_POINTS.get(e.srdi_tier, 0)),
        Criterion("theme_industry", _industry_name(e.key_industry), INDUSTRY_POINTS if industry else 0),
        Criterion("theme_zone", t.zone if zone else "-", ZONE_POINTS if zone else 0),
        Criterion("amount_sought", f"{c.amount_sought_fen // YUAN} yuan", amount_points),
        Criterion("first_time_borrower", "yes" if not e.has_borrowed else "no",
                  FIRST_TIME_POINTS if not e.has_borrowed else 0),
    )
    return sum(x.points for x in criteria), criteria


def select(candidates: Sequence[Candidate], t: Theme, capacity: int) -> list[Ranked]:
    """Rank the eligible candidates by points (ties: earlier application, then lower USCC) and
    select the first ``capacity``; ineligible ones (the enterprise or the theme changed since
    they applied) are listed last, not selected, with the reasons. Independent of input order."""
    eligible, ineligible = [], []
    for c in candidates:
        (ineligible if refusal_reasons(c.enterprise, t) else eligible).append(c)
    scored = sorted(((score(c, t), c) for c in eligible),
                    key=lambda sc: (-sc[0][0], sc[1].applied_at, sc[1].enterprise.uscc))
    n = len(scored)
    out: list[Ranked] = []
    for rank, ((points, criteria), c) in enumerate(scored, start=1):
        chosen = rank <= capacity
        why = (f"ranked {rank} of {n} eligible applicants with {points} points; "
               + (f"within the capacity of {capacity}" if chosen else f"the capacity of {capacity} was reached"))
        out.append(Ranked(c.enterprise.uscc, True, chosen, points, rank, criteria, why))
    for c in sorted(ineligible, key=lambda c: c.enterprise.uscc):
        why = "no longer eligible: " + "; ".join(refusal_reasons(c.enterprise, t))
        out.append(Ranked(c.enterprise.uscc, False, False, 0, 0, (), why))
    return out


# -- the life cycle (driven by the clock) --------------------------------------------------------------


def due_status(r: Roadshow, now: datetime) -> Status:
    """Where the clock says ``r`` should be (selection itself moves it past the window)."""
    if r.status == Status.CANCELLED:
        return r.status
    if now >= r.held_at:
        return Status.HELD
    if now >= r.applications_close_at:
        return Status.SELECTION
    if now >= r.applications_open_at:
        return Status.OPEN_FOR_APPLICATIONS
    return Status.PLANNED


# -- requests ------------------------------------------------------------------------------------------


def check_uscc(v: Violations, field_name: str, uscc: str) -> None:
    problem = uscc_problem(uscc)
    v.check(problem is None, field_name, problem or "")


def check_application(v: Violations, *, uscc: str, amount_sought_fen: int, purpose: int, pitch: str) -> None:
    check_uscc(v, "enterprise_uscc", uscc)
    v.check(0 < amount_sought_fen <= MAX_AMOUNT_FEN, "amount_sought_fen",
            f"must be more than 0 and at most {MAX_AMOUNT_FEN} fen")
    v.check(purpose in Purpose._value2member_map_ and purpose != 0, "purpose", "must be a known purpose")
    v.check(len(pitch) <= MAX_PITCH_CHARS, "pitch", f"must be at most {MAX_PITCH_CHARS} characters")


@dataclass(frozen=True)
class IntentRequest:
    roadshow_id: str
    institution_id: str
    enterprise_uscc: str
    intended_amount_fen: int
    instrument: int
    note: str = ""
    term_months: int = 0


def check_intent(v: Violations, r: IntentRequest) -> IntentRequest:
    """Add every wrong field of ``r``; returns it with the default term."""
    v.check(bool(r.roadshow_id.strip()), "roadshow_id", "is required")
    v.check(bool(r.institution_id.strip()), "institution_id", "is required")
    check_uscc(v, "enterprise_uscc", r.enterprise_uscc)
    v.check(0 < r.intended_amount_fen <= MAX_AMOUNT_FEN, "intended_amount_fen",
            f"must be more than 0 and at most {MAX_AMOUNT_FEN} fen")
    v.check(r.instrument in Instrument._value2member_map_ and r.instrument != 0, "instrument",
            "must be LOAN, EQUITY or OTHER")
    v.check(len(r.note) <= MAX_NOTE_CHARS, "note", f"must be at most {MAX_NOTE_CHARS} characters")
    v.check(0 <= r.term_months <= MAX_TERM_MONTHS, "term_months", f"must be between 0 (12) and {MAX_TERM_MONTHS}")
    return replace(r, term_months=r.term_months or DEFAULT_INTENT_TERM_MONTHS)


def investor_refusal(institution_type: int) -> str | None:
    """Why an institution of this type may not register as an investor (None: it may)."""
    if institution_type in INVESTOR_TYPES:
        return None
    name = InstitutionType(institution_type).name if institution_type in InstitutionType._value2member_map_ \
        else str(institution_type)
    return f"institution type {name}: roadshow investors are banks, insurers and funds"
