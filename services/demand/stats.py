"""Platform statistics: the figures the platform publishes, from the demand service's records.

Two halves: a pure part (the request's range and dimension, the ratios in basis points,
growth year on year, turning per-group aggregates into :class:`Figures`) and the SQL that
reads the aggregates (:func:`load`), one statement per family of figures, grouped by the
requested dimension. Percentiles are computed by PostgreSQL (``percentile_disc``: the
nearest-rank definition), so no duration list ever leaves the database.

Attribution (see ``protos/finmesh/stats/v1/stats.proto``): each figure falls in a range by
the time of its own event — registration, acceptance, lead issue, approval, disbursement.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from enum import IntEnum

import asyncpg

from meshkit.errors import Violations

BPS = 10_000
MEDIUM_LONG_TERM_MONTHS = 12  # a loan on a term over this is medium or long-term
APPROVED = 5  # finmesh.lead.v1.LeadStatus.LEAD_STATUS_APPROVED


class Dimension(IntEnum):
    """Numbered as ``finmesh.stats.v1.Dimension``."""

    NONE = 0
    PILOT_CITY = 1
    SPECIAL_ZONE = 2
    KEY_INDUSTRY = 3
    SRDI_TIER = 4
    CHANNEL = 5
    INSTITUTION = 6


# -- pure helpers -----------------------------------------------------------------------------------


def ratio_bps(part: int, whole: int) -> int:
    """``part / whole`` in basis points, rounded half up; 0 when ``whole`` is 0."""
    if whole <= 0:
        return 0
    return (part * BPS * 2 + whole) // (whole * 2)


def growth_bps(current: int, previous: int) -> int | None:
    """Growth from ``previous`` to ``current`` in basis points (rounded half away from zero);
    None when there was nothing before to grow from."""
    if previous <= 0:
        return None
    change = (current - previous) * BPS
    sign = -1 if change < 0 else 1
    return sign * ((abs(change) * 2 + previous) // (previous * 2))


def mean_rounded(total: int, count: int) -> int:
    """``total / count`` rounded half up; 0 for no values."""
    if count <= 0:
        return 0
    return (total * 2 + count) // (count * 2)


def year_earlier(at: datetime) -> datetime:
    """The same moment one calendar year earlier (29 February becomes 28 February)."""
    try:
        return at.replace(year=at.year - 1)
    except ValueError:
        return at.replace(year=at.year - 1, day=28)


@dataclass(frozen=True)
class Range:
    """The half-open range ``[start, end)``; ``start`` None means since the beginning."""

    start: datetime | None
    end: datetime

    def year_earlier(self) -> Range:
        return Range(year_earlier(self.start) if self.start else None, year_earlier(self.end))


def check_query(start: datetime | None, end: datetime | None, dimension: int, *, now: datetime) -> Range:
    """The range asked for (end defaults to ``now``); raises naming every wrong field."""
    v = Violations()
    v.check(dimension in Dimension._value2member_map_, "dimension", "is not a known dimension")
    if start is not None and end is not None:
        v.check(start < end, "end_time", "must be after start_time")
    elif start is not None:
        v.check(start < now, "start_time", "must be in the past when end_time is not given")
    v.check(start is None or start.year > 1, "start_time", "is too early")
    v.check(end is None or end.year > 1, "end_time", "is too early")
    v.raise_if_any()
    return Range(start, end or now)


@dataclass(frozen=True)
class Aggregates:
    """What the SQL returns for one group; every field defaults to nothing."""

    enterprises: int = 0
    institutions: int = 0
    demands: int = 0
    amount_fen: int = 0
    demands_before: int = 0  # the same range a year earlier
    amount_fen_before: int = 0
    leads: int = 0
    contacted: int = 0
    contact_seconds_total: int = 0
    contact_seconds_p90: int = 0
    approvals: int = 0
    loans: int = 0
    disbursed_fen: int = 0
    disbursed_long_fen: int = 0  # of which on terms over 12 months
    first_time_borrowers: int = 0


@dataclass(frozen=True)
class Figures:
    enterprises_registered: int
    institutions_registered: int
    demands: int
    amount_requested_fen: int
    leads_issued: int
    leads_contacted: int
    take_up_bps: int
    time_to_contact_avg_seconds: int
    time_to_contact_p90_seconds: int
    approvals: int
    loans_disbursed: int
    amount_disbursed_fen: int
    medium_long_term_share_bps: int
    first_time_borrowers: int
    demands_yoy_growth_bps: int | None
    amount_requested_yoy_growth_bps: int | None


def figures(a: Aggregates) -> Figures:
    return Figures(
        enterprises_registered=a.enterprises,
        institutions_registered=a.institutions,
        demands=a.demands,
        amount_requested_fen=a.amount_fen,
        leads_issued=a.leads,
        leads_contacted=a.contacted,
        take_up_bps=ratio_bps(a.contacted, a.leads),
        time_to_contact_avg_seconds=mean_rounded(a.contact_seconds_total, a.contacted),
        time_to_contact_p90_seconds=a.contact_seconds_p90,
        approvals=a.approvals,
        loans_disbursed=a.loans,
        amount_disbursed_fen=a.disbursed_fen,
        medium_long_term_share_bps=ratio_bps(a.disbursed_long_fen, a.disbursed_fen),
        first_time_borrowers=a.first_time_borrowers,
        demands_yoy_growth_bps=growth_bps(a.demands, a.demands_before),
        amount_requested_yoy_growth_bps=growth_bps(a.amount_fen, a.amount_fen_before),
    )


@dataclass(frozen=True)
class Stats:
    range: Range
    dimension: Dimension
    totals: Figures
    groups: tuple[tuple[str, Figures], ...]  # (key as stored, figures); enumerations by number
    computed_at: datetime


# -- SQL --------------------------------------------------------------------------------------------
# Lead outcomes as the institutions report them (migrations/002_lifecycles_outcomes.sql): the first
# contact's time on the lead, the approval as an APPROVED entry of its history, the disbursement on
# the lead; the term is the approved offer's, else the one asked for.
_ISSUED_AT = "COALESCE(l.created_at, l.stored_at)"
_CONTACTED_AT = "l.contacted_at"
_APPROVED_AT = "h.at"
_DISBURSED_AT = "l.disbursed_at"
_DISBURSED_FEN = "l.disbursed_amount_fen"
_LOAN_TERM = "COALESCE(NULLIF(l.offer_term_months, 0), d.term_months)"
# A first-time borrower: the demand was for a first loan, or the enterprise had never borrowed then.
_FIRST_TIME = "(d.first_loan OR NOT COALESCE((d.enterprise ->> 'has_borrowed')::boolean, false))"
# A demand that repeats another one (the same need through another channel) is not counted again.
_COUNTED = "d.duplicate_of = ''"

_ZONES = (" CROSS JOIN LATERAL unnest(CASE WHEN cardinality(e.special_zones) = 0 THEN ARRAY['']::text[]"
          " ELSE e.special_zones END) AS z(zone)")
# dimension -> (key expression over e/d/l, extra FROM clause for enterprises)
_ENTERPRISE_KEYS = {
    Dimension.NONE: ("''", ""),
    Dimension.PILOT_CITY: ("e.city", ""),
    Dimension.SPECIAL_ZONE: ("z.zone", _ZONES),
    Dimension.KEY_INDUSTRY: ("e.key_industry::text", ""),
    Dimension.SRDI_TIER: ("e.srdi_tier::text", ""),
}


def _in(column: str, lo: int, hi: int) -> str:
    """``column`` in the range of parameters ``$lo`` (NULL = open) and ``$hi``."""
    return f"(${lo}::timestamptz IS NULL OR {column} >= ${lo}) AND {column} < ${hi}"


def _key(dimension: Dimension) -> tuple[str, str]:
    if dimension in _ENTERPRISE_KEYS:
        return _ENTERPRISE_KEYS[dimension]
    if dimension == Dimension.CHANNEL:
        return "d.channel::text", ""
    return "l.institution_id", ""


def _int(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, Decimal):
        return int(value.to_integral_value())
    return int(value)  # type: ignore[call-overload]


async def _enterprises(conn: asyncpg.Connection, dim: Dimension, r: Range) -> dict[str, dict[str, int]]:
    if dim not in _ENTERPRISE_KEYS:
        return {}
    key, joins = _ENTERPRISE_KEYS[dim]
    rows = await conn.fetch(
        f"SELECT {key} AS k, count(*) AS n FROM enterprises e{joins}"
        f" WHERE {_in('e.registered_at', 1, 2)} GROUP BY 1", r.start, r.end,
    )
    return {row["k"]: {"enterprises": row["n"]} for row in rows}


async def _institutions(conn: asyncpg.Connection, dim: Dimension, r: Range) -> dict[str, dict[str, int]]:
    if dim not in (Dimension.NONE, Dimension.INSTITUTION):
        return {}
    key = "''" if dim == Dimension.NONE else "i.institution_id"
    rows = await conn.fetch(
        f"SELECT {key} AS k, count(*) AS n FROM institutions i WHERE {_in('i.registered_at', 1, 2)} GROUP BY 1",
        r.start, r.end,
    )
    return {row["k"]: {"institutions": row["n"]} for row in rows}


async def _demands(conn: asyncpg.Connection, dim: Dimension, r: Range) -> dict[str, dict[str, int]]:
    before = r.year_earlier()
    now_in, before_in = _in("d.submitted_at", 1, 2), _in("d.submitted_at", 3, 4)
    if dim == Dimension.INSTITUTION:
        # a demand counts once for each institution it has a lead of
        source = ("(SELECT DISTINCT l.institution_id AS k, x.demand_id, x.amount_fen, x.submitted_at, x.duplicate_of"
                  " FROM demands x JOIN leads l ON l.demand_id = x.demand_id) d")
        key = "d.k"
    else:
        key, joins = _key(dim)
        source = f"demands d JOIN enterprises e ON e.uscc = d.enterprise_uscc{joins}"
    rows = await conn.fetch(
        f"SELECT {key} AS k,"
        f" count(*) FILTER (WHERE {now_in}) AS demands,"
        f" COALESCE(sum(d.amount_fen) FILTER (WHERE {now_in}), 0) AS amount_fen,"
        f" count(*) FILTER (WHERE {before_in}) AS demands_before,"
        f" COALESCE(sum(d.amount_fen) FILTER (WHERE {before_in}), 0) AS amount_fen_before"
        f" FROM {source} WHERE {_COUNTED} AND (({now_in}) OR ({before_in})) GROUP BY 1",
        r.start, r.end, before.start, before.end,
    )
    return {row["k"]: {f: _int(row[f]) for f in ("demands", "amount_fen", "demands_before", "amount_fen_before")}
            for row in rows}


async def _leads(conn: asyncpg.Connection, dim: Dimension, r: Range) -> dict[str, dict[str, int]]:
    key, joins = _key(dim)
    issued, disbursed = _in(_ISSUED_AT, 1, 2), _in(_DISBURSED_AT, 1, 2)
    approved = "a.lead_id IS NOT NULL"
    approvals = (f" LEFT JOIN (SELECT DISTINCT lead_id FROM lead_history h WHERE status = {APPROVED}"
                 f" AND {_in(_APPROVED_AT, 1, 2)}) a ON a.lead_id = l.lead_id")
    wait = f"greatest(0, extract(epoch FROM {_CONTACTED_AT} - {_ISSUED_AT}))"
    rows = await conn.fetch(
        f"SELECT {key} AS k,"
        f" count(*) FILTER (WHERE {issued}) AS leads,"
        f" count({_CONTACTED_AT}) FILTER (WHERE {issued}) AS contacted,"
        f" COALESCE(sum({wait}) FILTER (WHERE {issued}), 0) AS contact_seconds_total,"
        f" percentile_disc(0.9) WITHIN GROUP (ORDER BY {wait}) FILTER (WHERE {issued}) AS contact_seconds_p90,"
        f" count(*) FILTER (WHERE {approved}) AS approvals,"
        f" count(*) FILTER (WHERE {disbursed}) AS loans,"
        f" COALESCE(sum({_DISBURSED_FEN}) FILTER (WHERE {disbursed}), 0) AS disbursed_fen,"
        f" COALESCE(sum({_DISBURSED_FEN}) FILTER (WHERE {disbursed} AND {_LOAN_TERM} > {MEDIUM_LONG_TERM_MONTHS}),"
        f"  0) AS disbursed_long_fen,"
        f" count(DISTINCT d.enterprise_uscc) FILTER (WHERE {disbursed} AND {_FIRST_TIME}) AS first_time_borrowers"
        f" FROM leads l JOIN demands d ON d.demand_id = l.demand_id JOIN enterprises e ON e.uscc = d.enterprise_uscc"
        f"{approvals}{joins} WHERE ({issued}) OR ({approved}) OR ({disbursed}) GROUP BY 1",
        r.start, r.end,
    )
    fields = ("leads", "contacted", "contact_seconds_total", "contact_seconds_p90", "approvals", "loans",
              "disbursed_fen", "disbursed_long_fen", "first_time_borrowers")
    return {row["k"]: {f: _int(row[f]) for f in fields} for row in rows}


async def aggregates(conn: asyncpg.Connection, dimension: Dimension, r: Range) -> dict[str, Aggregates]:
    """Every aggregate of ``r`` by group key of ``dimension`` (one group, key "", without one)."""
    out: dict[str, Aggregates] = {}
    for part in (await _enterprises(conn, dimension, r), await _institutions(conn, dimension, r),
                 await _demands(conn, dimension, r), await _leads(conn, dimension, r)):
        for key, values in part.items():
            out[key] = replace(out.get(key, Aggregates()), **values)
    return out


async def load(pool: asyncpg.Pool, r: Range, dimension: Dimension, *, now: datetime | None = None) -> Stats:
    """The platform's figures for ``r``: totals, and by ``dimension`` if one is given."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        totals = (await aggregates(conn, Dimension.NONE, r)).get("", Aggregates())  # one snapshot for all
        by_key = await aggregates(conn, dimension, r) if dimension != Dimension.NONE else {}
    groups = tuple((k, figures(a)) for k, a in by_key.items())
    return Stats(range=r, dimension=dimension, totals=figures(totals), groups=groups,
                 computed_at=now or datetime.now(UTC))
