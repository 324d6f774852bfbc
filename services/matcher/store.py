"""SQL of the matcher: products, matches and leads (schema ``matcher``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from meshkit import outbox
from meshkit.paging import Page
from services.matcher.mapping import EncodedLead


@dataclass(frozen=True)
class StoredProduct:
    version: int
    content_hash: str
    institution_id: str
    product: bytes


async def lock_product(conn: asyncpg.Connection, product_id: str) -> None:
    """Serialise writers of one product until the end of the transaction."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('product:' || $1, 0))", product_id)


async def product_row(conn: asyncpg.Connection | asyncpg.Pool, product_id: str) -> StoredProduct | None:
    row = await conn.fetchrow(
        "SELECT version, content_hash, institution_id, product FROM products WHERE product_id = $1", product_id
    )
    return StoredProduct(row["version"], row["content_hash"], row["institution_id"], row["product"]) if row else None


async def save_product(conn: asyncpg.Connection, *, product_id: str, institution_id: str, version: int, status: str,
                       content_hash: str, product: bytes, updated_at: datetime, loan_category: str = "",
                       programme_tags: list[str] | None = None, industries: list[str] | None = None) -> None:
    await conn.execute(
        "INSERT INTO products (product_id, institution_id, version, status, content_hash, product, updated_at,"
        " loan_category, programme_tags, industries)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        " ON CONFLICT (product_id) DO UPDATE SET institution_id = EXCLUDED.institution_id,"
        " version = EXCLUDED.version, status = EXCLUDED.status, content_hash = EXCLUDED.content_hash,"
        " product = EXCLUDED.product, updated_at = EXCLUDED.updated_at, loan_category = EXCLUDED.loan_category,"
        " programme_tags = EXCLUDED.programme_tags, industries = EXCLUDED.industries",
        product_id, institution_id, version, status, content_hash, product, updated_at, loan_category,
        programme_tags or [], industries or [],
    )


@dataclass(frozen=True)
class ProductFilter:
    institution_id: str = ""
    loan_category: str = ""
    status: str = ""
    programme_tag: str = ""
    industry: str = ""  # products open to it: listing it, or open to every industry


async def list_products(pool: asyncpg.Pool, f: ProductFilter, page: Page) -> list[bytes]:
    """``page.size + 1`` products at most (so the caller knows whether there is a next page)."""
    rows = await pool.fetch(
        "SELECT product FROM products WHERE ($1 = '' OR institution_id = $1) AND ($2 = '' OR loan_category = $2)"
        " AND ($3 = '' OR status = $3) AND ($4 = '' OR $4 = ANY(programme_tags))"
        " AND ($5 = '' OR industries = '{}' OR $5 = ANY(industries))"
        " ORDER BY product_id LIMIT $6 OFFSET $7",
        f.institution_id, f.loan_category, f.status, f.programme_tag, f.industry, page.size + 1, page.offset,
    )
    return [r["product"] for r in rows]


async def all_products(conn: asyncpg.Connection | asyncpg.Pool) -> list[bytes]:
    return [r["product"] for r in await conn.fetch("SELECT product FROM products")]


async def count_and_checksum(conn: asyncpg.Connection | asyncpg.Pool) -> tuple[int, int]:
    """The number of products and the XOR of ``domain.row_hash(product_id, version)`` over them."""
    row = await conn.fetchrow(
        "SELECT count(*) AS n, coalesce(bit_xor(('x' || substr(md5(product_id || ':' || version::text), 1, 16))"
        "::bit(64)::bigint), 0) AS checksum FROM products"
    )
    return row["n"], row["checksum"]


async def record_match(conn: asyncpg.Connection, *, demand_id: str, enterprise_uscc: str, leads: int,
                       candidates: int, explanation: str, rules_version: str) -> bool:
    """Record that ``demand_id`` was matched; False if it already was (a replay)."""
    status = await conn.execute(
        "INSERT INTO matches (demand_id, enterprise_uscc, leads, candidates_considered, no_match_explanation,"
        " rules_version) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        demand_id, enterprise_uscc, leads, candidates, explanation, rules_version,
    )
    return status == "INSERT 0 1"


async def claim_events(conn: asyncpg.Connection, consumer: str, event_ids: list[str]) -> set[str]:
    """The inbox claim of several events at once: the ids not handled before (now claimed)."""
    rows = await conn.fetch(
        "INSERT INTO inbox (consumer, event_id) SELECT $1, e FROM unnest($2::text[]) AS e"
        " ON CONFLICT DO NOTHING RETURNING event_id", consumer, event_ids,
    )
    return {r["event_id"] for r in rows}


@dataclass(frozen=True)
class MatchRow:
    demand_id: str
    enterprise_uscc: str
    leads: int
    candidates: int
    explanation: str


# -- open demands -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenDemandRow:
    demand_id: str
    part: int
    demand: bytes
    docking_mode: str
    consent: bool
    active_leads: int
    tried: list[str]
    valid_until: datetime | None
    matched_at: datetime
    open: bool = True


def _open_row(r: asyncpg.Record) -> OpenDemandRow:
    return OpenDemandRow(r["demand_id"], r["part"], r["demand"], r["docking_mode"], r["consent"], r["active_leads"],
                         list(r["tried"]), r["valid_until"], r["matched_at"], r["open"])


_OPEN_COLUMNS = "demand_id, part, demand, docking_mode, consent, active_leads, tried, valid_until, matched_at, open"


async def open_demands_of(conn: asyncpg.Connection | asyncpg.Pool, parts: list[int]) -> list[OpenDemandRow]:
    rows = await conn.fetch(f"SELECT {_OPEN_COLUMNS} FROM open_demands WHERE open AND part = ANY($1::int[])", parts)
    return [_open_row(r) for r in rows]


async def lock_open_demands(conn: asyncpg.Connection, demand_ids: list[str]) -> dict[str, OpenDemandRow]:
    """The rows of ``demand_ids`` (open or not), locked until the end of the transaction."""
    rows = await conn.fetch(
        f"SELECT {_OPEN_COLUMNS} FROM open_demands WHERE demand_id = ANY($1::text[]) ORDER BY demand_id FOR UPDATE",
        demand_ids,
    )
    return {r["demand_id"]: _open_row(r) for r in rows}


async def add_leads_to_demands(conn: asyncpg.Connection, added: dict[str, list[str]]) -> None:
    """Count new active leads and record their institutions as tried, per demand."""
    if not added:
        return
    await conn.execute(
        "UPDATE open_demands o SET active_leads = o.active_leads + x.n,"
        " tried = o.tried || string_to_array(x.i, ',')"
        " FROM unnest($1::text[], $2::int[], $3::text[]) AS x(d, n, i) WHERE o.demand_id = x.d",
        list(added), [len(v) for v in added.values()], [",".join(v) for v in added.values()],
    )


async def close_demand(conn: asyncpg.Connection, demand_id: str, reason: str) -> bool:
    status = await conn.execute(
        "UPDATE open_demands SET open = false, closed_reason = $2 WHERE demand_id = $1 AND open", demand_id, reason)
    return status == "UPDATE 1"


async def pool_demands(conn: asyncpg.Connection | asyncpg.Pool, limit: int) -> list[OpenDemandRow]:
    """Open demands with room that may be shown to institutions (consenting, not enterprise-active)."""
    rows = await conn.fetch(
        f"SELECT {_OPEN_COLUMNS} FROM open_demands WHERE open AND consent AND active_leads < 3"
        " AND docking_mode <> 'ENTERPRISE_ACTIVE' AND (valid_until IS NULL OR valid_until > now())"
        " ORDER BY matched_at DESC, demand_id LIMIT $1", limit,
    )
    return [_open_row(r) for r in rows]


# -- leads' outcomes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeadState:
    lead_id: str
    demand_id: str
    institution_id: str
    active: bool
    status: str
    created_at: datetime


async def lead_state(conn: asyncpg.Connection, lead_id: str) -> LeadState | None:
    r = await conn.fetchrow(
        "SELECT lead_id, demand_id, institution_id, active, status, created_at FROM leads WHERE lead_id = $1", lead_id)
    return LeadState(r["lead_id"], r["demand_id"], r["institution_id"], r["active"], r["status"],
                     r["created_at"]) if r else None


async def set_lead_status(conn: asyncpg.Connection, lead_id: str, status: str, active: bool) -> None:
    await conn.execute("UPDATE leads SET status = $2, active = $3 WHERE lead_id = $1", lead_id, status, active)


async def release_lead(conn: asyncpg.Connection, demand_id: str) -> None:
    await conn.execute(
        "UPDATE open_demands SET active_leads = greatest(active_leads - 1, 0) WHERE demand_id = $1", demand_id)


async def record_outcome(conn: asyncpg.Connection, institution_id: str, *, contact_seconds: int | None = None,
                         breached: bool = False, decided: bool = False, approved: bool = False) -> None:
    """Count one lead's outcome in its institution's record."""
    contacted = contact_seconds is not None
    await conn.execute(
        "INSERT INTO institution_stats AS s (institution_id, leads, contacted, decided, approved, contact_seconds)"
        " VALUES ($1, $2, $3, $4, $5, CASE WHEN $6::int IS NULL THEN '{}'::int[] ELSE ARRAY[$6::int] END)"
        " ON CONFLICT (institution_id) DO UPDATE SET leads = s.leads + EXCLUDED.leads,"
        " contacted = s.contacted + EXCLUDED.contacted, decided = s.decided + EXCLUDED.decided,"
        " approved = s.approved + EXCLUDED.approved,"
        " contact_seconds = (s.contact_seconds || EXCLUDED.contact_seconds)[greatest(1,"
        " cardinality(s.contact_seconds) + cardinality(EXCLUDED.contact_seconds) - 199):]",
        institution_id, int(contacted or breached), int(contacted), int(decided), int(approved), contact_seconds,
    )


async def institution_stats(conn: asyncpg.Connection | asyncpg.Pool) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT institution_id, leads, contacted, decided, approved, contact_seconds FROM institution_stats")


# -- subscriptions ---------------------------------------------------------------------------------------


async def save_subscription(conn: asyncpg.Connection | asyncpg.Pool, subscription_id: str, institution_id: str,
                            subscription: bytes) -> None:
    await conn.execute(
        "INSERT INTO subscriptions (subscription_id, institution_id, subscription) VALUES ($1, $2, $3)"
        " ON CONFLICT (subscription_id) DO UPDATE SET subscription = EXCLUDED.subscription",
        subscription_id, institution_id, subscription,
    )


async def subscriptions(conn: asyncpg.Connection | asyncpg.Pool, institution_id: str = "") -> list[bytes]:
    rows = await conn.fetch(
        "SELECT subscription FROM subscriptions WHERE $1 = '' OR institution_id = $1 ORDER BY subscription_id",
        institution_id)
    return [r["subscription"] for r in rows]


async def delete_subscription(conn: asyncpg.Connection | asyncpg.Pool, subscription_id: str,
                              institution_id: str) -> bool:
    status = await conn.execute(
        "DELETE FROM subscriptions WHERE subscription_id = $1 AND institution_id = $2", subscription_id,
        institution_id)
    return status == "DELETE 1"


async def insert_leads(conn: asyncpg.Connection, leads: Sequence[EncodedLead], *, rules_version: str,
                       created_at: datetime) -> set[str]:
    """Insert the leads that do not exist yet; returns the ids inserted."""
    if not leads:
        return set()
    inserted = await conn.fetch(
        "INSERT INTO leads (lead_id, demand_id, institution_id, product_id, product_version, score, rank,"
        " rules_version, lead, created_at, contact_due_at, origin)"
        " SELECT l, d, i, p, v, s, r, $11, b, $12, due, o FROM unnest($1::text[], $2::text[], $3::text[],"
        " $4::text[], $5::bigint[], $6::int[], $7::int[], $8::bytea[], $9::text[], $10::timestamptz[])"
        " AS x(l, d, i, p, v, s, r, b, o, due)"
        " ON CONFLICT DO NOTHING RETURNING lead_id",
        *(list(col) for col in zip(*[
            (x.lead_id, x.demand_id, x.institution_id, x.product_id, x.product_version, x.score, x.rank, x.data,
             x.origin, x.contact_due_at) for x in leads
        ], strict=True)),
        rules_version, created_at,
    )
    return {r["lead_id"] for r in inserted}


# -- a batch of demands matched in memory, stored in one round trip -------------------------------------------


async def record_match_batch(
    conn: asyncpg.Connection | asyncpg.Pool, *, consumer: str, events: dict[str, str], matches: Sequence[MatchRow],
    open_rows: Sequence[OpenDemandRow], leads: Sequence[EncodedLead],
    outbox_events: Sequence[tuple[str, outbox.Encoded]],
    rules_version: str, now: datetime, schema: str,
) -> set[str]:
    """Store a batch (one transaction, one round trip: the SQL function ``record_match_batch_v2``):
    claim ``events`` (event id -> demand id) in the inbox; record the demands whose event is new
    and that were not matched before; for those only, keep their ``open_rows``, insert their
    ``leads`` and append their ``outbox_events`` (demand id, event), in order. Returns the demand
    ids recorded now (none for a replay)."""
    if not matches:
        return set()
    fresh = await conn.fetchval(
        "SELECT record_match_batch_v2($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,"
        " $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33, $34, $35)",
        consumer, list(events), list(events.values()), rules_version, now,
        [m.demand_id for m in matches], [m.enterprise_uscc for m in matches], [m.leads for m in matches],
        [m.candidates for m in matches], [m.explanation for m in matches],
        [r.demand_id for r in open_rows], [r.part for r in open_rows], [r.demand for r in open_rows],
        [r.docking_mode for r in open_rows], [r.consent for r in open_rows], [r.active_leads for r in open_rows],
        [",".join(r.tried) for r in open_rows], [r.valid_until for r in open_rows],
        [x.lead_id for x in leads], [x.demand_id for x in leads], [x.institution_id for x in leads],
        [x.product_id for x in leads], [x.product_version for x in leads], [x.score for x in leads],
        [x.rank for x in leads], [x.data for x in leads], [x.origin for x in leads],
        [x.contact_due_at for x in leads],
        [d for d, _ in outbox_events], *outbox.columns([e for _, e in outbox_events]), outbox.channel(schema),
    )
    return set(fresh)
