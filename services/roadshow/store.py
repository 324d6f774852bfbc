"""SQL of the roadshow service: rows ⇄ domain objects. Every function runs on the caller's
connection, so the caller decides the transaction."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

import asyncpg

from services.demand.domain import OPEN as OPEN_DEMAND
from services.demand.domain import Channel
from services.roadshow import domain as r

Conn = asyncpg.Connection | asyncpg.Pool

# -- roadshows ----------------------------------------------------------------------------------------

_ROW = ("roadshow_id, month, theme, theme_kind, theme_industry, theme_zone, city, held_at, applications_open_at,"
        " applications_close_at, capacity, status, automatic, created_at, version")
_PRESENTERS = "SELECT count(*) FROM applications a WHERE a.roadshow_id = {} AND a.status = 3"
_COLS = f"{_ROW}, ({_PRESENTERS.format('roadshows.roadshow_id')}) AS presenters"


def _roadshow(x: asyncpg.Record) -> r.Roadshow:
    return r.Roadshow(
        roadshow_id=x["roadshow_id"], month=x["month"],
        theme=r.Theme(r.ThemeKind(x["theme_kind"]), x["theme"], x["theme_industry"], x["theme_zone"]),
        city=x["city"], held_at=x["held_at"], applications_open_at=x["applications_open_at"],
        applications_close_at=x["applications_close_at"], capacity=x["capacity"], status=r.Status(x["status"]),
        automatic=x["automatic"], presenters=x["presenters"], created_at=x["created_at"], version=x["version"],
    )


async def insert_roadshow(conn: Conn, x: r.Roadshow, now: datetime, *, request_id: str | None = None
                          ) -> r.Roadshow | None:
    """Insert ``x``; None if its id, its month (automatic) or its request id is taken already."""
    row = await conn.fetchrow(
        "INSERT INTO roadshows (roadshow_id, month, theme, theme_kind, theme_industry, theme_zone, city, held_at,"
        " applications_open_at, applications_close_at, capacity, status, automatic, request_id, created_at,"
        " updated_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15)"
        f" ON CONFLICT DO NOTHING RETURNING {_COLS}",
        x.roadshow_id, x.month, x.theme.title, int(x.theme.kind), int(x.theme.industry), x.theme.zone, x.city,
        x.held_at, x.applications_open_at, x.applications_close_at, x.capacity, int(x.status), x.automatic,
        request_id, now,
    )
    return _roadshow(row) if row else None


async def get_roadshow(conn: Conn, roadshow_id: str, *, lock: bool = False) -> r.Roadshow | None:
    """The roadshow (``lock``: its row locked until the transaction ends). Locked, its presenters
    are counted in a second statement, after the lock is granted: under READ COMMITTED a count in
    the locking statement would see the snapshot taken before it waited for the lock, and miss
    presenters selected by the transaction that held it."""
    if not lock:
        row = await conn.fetchrow(f"SELECT {_COLS} FROM roadshows WHERE roadshow_id = $1", roadshow_id)
        return _roadshow(row) if row else None
    row = await conn.fetchrow(f"SELECT {_ROW}, 0 AS presenters FROM roadshows WHERE roadshow_id = $1 FOR UPDATE",
                              roadshow_id)
    if row is None:
        return None
    presenters = await conn.fetchval(_PRESENTERS.format("$1"), roadshow_id)
    return replace(_roadshow(row), presenters=presenters)


async def roadshow_by_request(conn: Conn, request_id: str) -> r.Roadshow | None:
    row = await conn.fetchrow(f"SELECT {_COLS} FROM roadshows WHERE request_id = $1", request_id)
    return _roadshow(row) if row else None


async def update_roadshow(conn: Conn, x: r.Roadshow, now: datetime) -> r.Roadshow:
    row = await conn.fetchrow(
        "UPDATE roadshows SET month = $2, theme = $3, theme_kind = $4, theme_industry = $5, theme_zone = $6,"
        " city = $7, held_at = $8, applications_open_at = $9, applications_close_at = $10, capacity = $11,"
        f" version = version + 1, updated_at = $12 WHERE roadshow_id = $1 RETURNING {_COLS}",
        x.roadshow_id, x.month, x.theme.title, int(x.theme.kind), int(x.theme.industry), x.theme.zone, x.city,
        x.held_at, x.applications_open_at, x.applications_close_at, x.capacity, now,
    )
    return _roadshow(row)


async def set_status(conn: Conn, roadshow_id: str, to: r.Status, now: datetime) -> None:
    await conn.execute("UPDATE roadshows SET status = $2, version = version + 1, updated_at = $3"
                       " WHERE roadshow_id = $1", roadshow_id, int(to), now)


async def list_roadshows(conn: Conn, month: str, limit: int, offset: int) -> list[r.Roadshow]:
    rows = await conn.fetch(f"SELECT {_COLS} FROM roadshows WHERE ($1 = '' OR month = $1)"
                            " ORDER BY held_at DESC, roadshow_id LIMIT $2 OFFSET $3", month, limit, offset)
    return [_roadshow(x) for x in rows]


async def due(conn: asyncpg.Connection, now: datetime, limit: int = 20) -> list[r.Roadshow]:
    """Roadshows whose status the clock has overtaken, locked; rows another replica holds are skipped."""
    rows = await conn.fetch(
        f"SELECT {_COLS} FROM roadshows WHERE"
        " (status = 1 AND applications_open_at <= $1)"
        " OR (status IN (1, 2) AND applications_close_at <= $1)"
        " OR (status = 3 AND held_at <= $1)"
        " ORDER BY held_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        now, limit,
    )
    return [_roadshow(x) for x in rows]


async def open_roadshows(conn: Conn) -> list[r.Roadshow]:
    rows = await conn.fetch(f"SELECT {_COLS} FROM roadshows WHERE status = 2")
    return [_roadshow(x) for x in rows]


# -- read models -----------------------------------------------------------------------------------------


async def upsert_enterprise(conn: Conn, e: r.EnterpriseView, version: int) -> None:
    await conn.execute(
        "INSERT INTO enterprises (uscc, name, key_industry, srdi_tier, has_borrowed, special_zones, version)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (uscc) DO UPDATE SET name = excluded.name,"
        " key_industry = excluded.key_industry, srdi_tier = excluded.srdi_tier,"
        " has_borrowed = excluded.has_borrowed, special_zones = excluded.special_zones, version = excluded.version"
        " WHERE enterprises.version < excluded.version",
        e.uscc, e.name, e.key_industry, e.srdi_tier, e.has_borrowed, list(e.special_zones), version,
    )


def _enterprise(x: asyncpg.Record) -> r.EnterpriseView:
    return r.EnterpriseView(x["uscc"], x["name"], x["key_industry"], x["srdi_tier"], x["has_borrowed"],
                            tuple(x["special_zones"]))


async def get_enterprise(conn: Conn, uscc: str) -> r.EnterpriseView | None:
    row = await conn.fetchrow("SELECT * FROM enterprises WHERE uscc = $1", uscc)
    return _enterprise(row) if row else None


async def upsert_institution(conn: Conn, institution_id: str, name: str, type_: int, version: int) -> None:
    await conn.execute(
        "INSERT INTO institutions (institution_id, name, type, version) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (institution_id) DO UPDATE SET name = excluded.name, type = excluded.type,"
        " version = excluded.version WHERE institutions.version < excluded.version",
        institution_id, name, type_, version,
    )


async def get_institution(conn: Conn, institution_id: str) -> tuple[str, int] | None:
    row = await conn.fetchrow("SELECT name, type FROM institutions WHERE institution_id = $1", institution_id)
    return (row["name"], row["type"]) if row else None


async def upsert_demand_status(conn: Conn, demand_id: str, uscc: str, channel: int, status: int, seq: int) -> None:
    await conn.execute(
        "INSERT INTO demand_status (demand_id, uscc, channel, status, seq) VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (demand_id) DO UPDATE SET status = excluded.status, seq = excluded.seq"
        " WHERE demand_status.seq < excluded.seq",
        demand_id, uscc, channel, status, seq,
    )


async def invitable(conn: Conn, x: r.Roadshow) -> list[str]:
    """SRDI enterprises (provincial or little giant) fitting ``x``'s theme with an open demand (not
    one made of a roadshow intent), not yet invited and not applied."""
    rows = await conn.fetch(
        "SELECT e.uscc FROM enterprises e WHERE e.srdi_tier = ANY($2::int[])"
        " AND (($3 <> 0 AND e.key_industry = $3) OR ($4 <> '' AND $4 = ANY(e.special_zones)))"
        " AND EXISTS (SELECT 1 FROM demand_status s WHERE s.uscc = e.uscc AND s.status = ANY($5::int[])"
        "  AND s.channel <> $6)"
        " AND NOT EXISTS (SELECT 1 FROM invitations i WHERE i.roadshow_id = $1 AND i.uscc = e.uscc)"
        " AND NOT EXISTS (SELECT 1 FROM applications a WHERE a.roadshow_id = $1 AND a.uscc = e.uscc)"
        " ORDER BY e.uscc",
        x.roadshow_id, [int(t) for t in r.ELIGIBLE_TIERS], int(x.theme.industry), x.theme.zone,
        [int(s) for s in OPEN_DEMAND], int(Channel.ROADSHOW),
    )
    return [x["uscc"] for x in rows]


async def insert_invitations(conn: asyncpg.Connection, roadshow_id: str, usccs: Sequence[str], now: datetime
                             ) -> list[str]:
    """Record invitations; returns those that are new (another replica may have sent some)."""
    rows = await conn.fetch(
        "INSERT INTO invitations (roadshow_id, uscc, invited_at) SELECT $1, u, $3 FROM unnest($2::text[]) AS u"
        " ON CONFLICT DO NOTHING RETURNING uscc", roadshow_id, list(usccs), now,
    )
    return sorted(x["uscc"] for x in rows)


# -- applications -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Application:
    roadshow_id: str
    uscc: str
    status: r.ApplicationStatus
    amount_sought_fen: int
    purpose: int
    pitch: str
    applied_at: datetime
    updated_at: datetime
    refusal_reasons: tuple[str, ...] = ()
    score: int = 0
    rank: int = 0
    ranking: tuple[r.Criterion, ...] = field(default=())
    selection_reason: str = ""
    override_by: str = ""
    overrides: int = 0
    attempts: int = 1
    invited: bool = False


_APP_COLS = ("a.roadshow_id, a.uscc, a.status, a.amount_sought_fen, a.purpose, a.pitch, a.applied_at, a.updated_at,"
             " a.refusal_reasons, a.score, a.rank, a.ranking, a.selection_reason, a.override_by, a.overrides,"
             " a.attempts, EXISTS (SELECT 1 FROM invitations i WHERE i.roadshow_id = a.roadshow_id"
             " AND i.uscc = a.uscc) AS invited")


def _application(x: asyncpg.Record) -> Application:
    return Application(
        roadshow_id=x["roadshow_id"], uscc=x["uscc"], status=r.ApplicationStatus(x["status"]),
        amount_sought_fen=x["amount_sought_fen"], purpose=x["purpose"], pitch=x["pitch"], applied_at=x["applied_at"],
        updated_at=x["updated_at"], refusal_reasons=tuple(x["refusal_reasons"]), score=x["score"], rank=x["rank"],
        ranking=tuple(r.Criterion(**c) for c in json.loads(x["ranking"])), selection_reason=x["selection_reason"],
        override_by=x["override_by"], overrides=x["overrides"], attempts=x["attempts"], invited=x["invited"],
    )


async def get_application(conn: Conn, roadshow_id: str, uscc: str, *, lock: bool = False) -> Application | None:
    row = await conn.fetchrow(f"SELECT {_APP_COLS} FROM applications a WHERE a.roadshow_id = $1 AND a.uscc = $2"
                              + (" FOR UPDATE" if lock else ""), roadshow_id, uscc)
    return _application(row) if row else None


async def save_application(conn: Conn, a: Application) -> Application:
    """Insert or replace an application (a new attempt after a refusal counts one more)."""
    await conn.execute(
        "INSERT INTO applications (roadshow_id, uscc, status, amount_sought_fen, purpose, pitch, refusal_reasons,"
        " applied_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)"
        " ON CONFLICT (roadshow_id, uscc) DO UPDATE SET status = excluded.status,"
        " amount_sought_fen = excluded.amount_sought_fen, purpose = excluded.purpose, pitch = excluded.pitch,"
        " refusal_reasons = excluded.refusal_reasons, applied_at = excluded.applied_at,"
        " updated_at = excluded.updated_at, attempts = applications.attempts + 1",
        a.roadshow_id, a.uscc, int(a.status), a.amount_sought_fen, a.purpose, a.pitch, list(a.refusal_reasons),
        a.applied_at,
    )
    saved = await get_application(conn, a.roadshow_id, a.uscc)
    assert saved is not None
    return saved


async def applications(conn: Conn, roadshow_id: str, status: int = 0, limit: int = 10_000, offset: int = 0
                       ) -> list[Application]:
    rows = await conn.fetch(
        f"SELECT {_APP_COLS} FROM applications a WHERE a.roadshow_id = $1 AND ($2 = 0 OR a.status = $2)"
        " ORDER BY (a.rank = 0), a.rank, a.uscc LIMIT $3 OFFSET $4", roadshow_id, status, limit, offset,
    )
    return [_application(x) for x in rows]


async def enterprises_of(conn: Conn, usccs: Sequence[str]) -> dict[str, r.EnterpriseView]:
    rows = await conn.fetch("SELECT * FROM enterprises WHERE uscc = ANY($1::text[])", list(usccs))
    return {x["uscc"]: _enterprise(x) for x in rows}


async def save_selection(conn: asyncpg.Connection, roadshow_id: str, ranked: Sequence[r.Ranked], now: datetime
                         ) -> None:
    await conn.executemany(
        "UPDATE applications SET status = $3, score = $4, rank = $5, ranking = $6, selection_reason = $7,"
        " updated_at = $8 WHERE roadshow_id = $1 AND uscc = $2",
        [(roadshow_id, x.uscc, int(r.ApplicationStatus.SELECTED if x.selected else r.ApplicationStatus.NOT_SELECTED),
          x.score, x.rank, json.dumps([c.__dict__ for c in x.criteria]), x.reason, now) for x in ranked],
    )


async def override(conn: asyncpg.Connection, roadshow_id: str, uscc: str, selected: bool, reason: str,
                   operator_id: str, now: datetime) -> None:
    await conn.execute(
        "UPDATE applications SET status = $3, selection_reason = $4, override_by = $5,"
        " overrides = overrides + 1, updated_at = $6 WHERE roadshow_id = $1 AND uscc = $2",
        roadshow_id, uscc, int(r.ApplicationStatus.SELECTED if selected else r.ApplicationStatus.NOT_SELECTED),
        reason, operator_id, now,
    )


# -- investors and intents -----------------------------------------------------------------------------------


async def insert_investor(conn: Conn, roadshow_id: str, institution_id: str, name: str, type_: int, now: datetime
                          ) -> bool:
    status = await conn.execute(
        "INSERT INTO investors (roadshow_id, institution_id, name, institution_type, registered_at)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING", roadshow_id, institution_id, name, type_, now,
    )
    return status == "INSERT 0 1"


async def get_investor(conn: Conn, roadshow_id: str, institution_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM investors WHERE roadshow_id = $1 AND institution_id = $2",
                               roadshow_id, institution_id)


@dataclass(frozen=True)
class Intent:
    intent_id: str
    roadshow_id: str
    institution_id: str
    uscc: str
    intended_amount_fen: int
    instrument: int
    note: str
    term_months: int
    purpose: int
    recorded_at: datetime
    demand_id: str
    lead_id: str
    lead_status: int = 0
    approved_amount_fen: int = 0
    granted_amount_fen: int = 0

    def same_request(self, other: Intent) -> bool:
        return (self.intended_amount_fen, self.instrument, self.note, self.term_months) == \
            (other.intended_amount_fen, other.instrument, other.note, other.term_months)


_INTENT_COLS = ("intent_id, roadshow_id, institution_id, uscc, intended_amount_fen, instrument, note, term_months,"
                " purpose, recorded_at, demand_id, lead_id, lead_status, approved_amount_fen, granted_amount_fen")


def _intent(x: asyncpg.Record) -> Intent:
    return Intent(**{k: x[k] for k in x.keys()})


async def insert_intent(conn: Conn, i: Intent) -> bool:
    status = await conn.execute(
        "INSERT INTO intents (intent_id, roadshow_id, institution_id, uscc, intended_amount_fen, instrument, note,"
        " term_months, purpose, recorded_at, demand_id, lead_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,"
        " $11, $12) ON CONFLICT DO NOTHING",
        i.intent_id, i.roadshow_id, i.institution_id, i.uscc, i.intended_amount_fen, i.instrument, i.note,
        i.term_months, i.purpose, i.recorded_at, i.demand_id, i.lead_id,
    )
    return status == "INSERT 0 1"


async def get_intent(conn: Conn, intent_id: str) -> Intent | None:
    row = await conn.fetchrow(f"SELECT {_INTENT_COLS} FROM intents WHERE intent_id = $1", intent_id)
    return _intent(row) if row else None


async def list_intents(conn: Conn, roadshow_id: str, limit: int, offset: int) -> list[Intent]:
    rows = await conn.fetch(f"SELECT {_INTENT_COLS} FROM intents WHERE roadshow_id = $1"
                            " ORDER BY recorded_at, intent_id LIMIT $2 OFFSET $3", roadshow_id, limit, offset)
    return [_intent(x) for x in rows]


async def record_lead(conn: Conn, lead_id: str, status: int, seq: int, offer_fen: int, disbursed_fen: int) -> bool:
    """A status change of an intent's lead (later changes only); False if the lead is not an intent's."""
    done = await conn.execute(
        "UPDATE intents SET lead_status = $2, lead_seq = $3,"
        " approved_amount_fen = CASE WHEN $4 > 0 THEN $4 ELSE approved_amount_fen END,"
        " granted_amount_fen = CASE WHEN $5 > 0 THEN $5 ELSE granted_amount_fen END"
        " WHERE lead_id = $1 AND lead_seq < $3",
        lead_id, status, seq, offer_fen, disbursed_fen,
    )
    return done != "UPDATE 0"


# -- the report ----------------------------------------------------------------------------------------------

GROUP_KEYS = {1: "r.roadshow_id", 2: "r.theme", 3: "r.city", 4: "r.theme_industry::text"}
APPROVED_STATUSES = (5, 6)  # LEAD_STATUS_APPROVED, LEAD_STATUS_DISBURSED
DISBURSED = 6


async def report(conn: Conn, *, roadshow_id: str, held_from: datetime | None, held_to: datetime | None,
                 group_by: int) -> list[asyncpg.Record]:
    """One row per group (``group_by`` 0: one row, key ''), with the figures of the roadshows chosen."""
    key = GROUP_KEYS.get(group_by, "''")
    return await conn.fetch(
        f"SELECT {key} AS key, count(*) AS roadshows,"
        " coalesce(sum(a.applicants), 0) AS applicants, coalesce(sum(a.refused), 0) AS refused,"
        " coalesce(sum(a.presenters), 0) AS presenters, coalesce(sum(v.investors), 0) AS investors,"
        " coalesce(sum(i.intents), 0) AS intents, coalesce(sum(i.intended), 0) AS intended_amount_fen,"
        " coalesce(sum(i.approved), 0) AS leads_approved, coalesce(sum(i.approved_fen), 0) AS approved_amount_fen,"
        " coalesce(sum(i.disbursed), 0) AS leads_disbursed, coalesce(sum(i.granted_fen), 0) AS granted_amount_fen"
        " FROM roadshows r"
        " LEFT JOIN (SELECT roadshow_id, count(*) FILTER (WHERE status <> 2) AS applicants,"
        "  count(*) FILTER (WHERE status = 2) AS refused, count(*) FILTER (WHERE status = 3) AS presenters"
        "  FROM applications GROUP BY roadshow_id) a ON a.roadshow_id = r.roadshow_id"
        " LEFT JOIN (SELECT roadshow_id, count(*) AS investors FROM investors GROUP BY roadshow_id) v"
        "  ON v.roadshow_id = r.roadshow_id"
        " LEFT JOIN (SELECT roadshow_id, count(*) AS intents, sum(intended_amount_fen) AS intended,"
        "  count(*) FILTER (WHERE lead_status = ANY($4::int[])) AS approved,"
        "  sum(approved_amount_fen) FILTER (WHERE lead_status = ANY($4::int[])) AS approved_fen,"
        "  count(*) FILTER (WHERE lead_status = $5) AS disbursed,"
        "  sum(granted_amount_fen) FILTER (WHERE lead_status = $5) AS granted_fen"
        "  FROM intents GROUP BY roadshow_id) i ON i.roadshow_id = r.roadshow_id"
        " WHERE ($1 = '' OR r.roadshow_id = $1) AND ($2::timestamptz IS NULL OR r.held_at >= $2)"
        " AND ($3::timestamptz IS NULL OR r.held_at < $3)"
        f" GROUP BY 1 ORDER BY 1",
        roadshow_id, held_from, held_to, list(APPROVED_STATUSES), DISBURSED,
    )
