"""SQL of the matcher: products, matches and leads (schema ``matcher``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from meshkit.paging import Page


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
                       content_hash: str, product: bytes, updated_at: datetime) -> None:
    await conn.execute(
        "INSERT INTO products (product_id, institution_id, version, status, content_hash, product, updated_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)"
        " ON CONFLICT (product_id) DO UPDATE SET institution_id = EXCLUDED.institution_id,"
        " version = EXCLUDED.version, status = EXCLUDED.status, content_hash = EXCLUDED.content_hash,"
        " product = EXCLUDED.product, updated_at = EXCLUDED.updated_at",
        product_id, institution_id, version, status, content_hash, product, updated_at,
    )


async def list_products(pool: asyncpg.Pool, institution_id: str, page: Page) -> list[bytes]:
    """``page.size + 1`` products at most (so the caller knows whether there is a next page)."""
    rows = await pool.fetch(
        "SELECT product FROM products WHERE ($1 = '' OR institution_id = $1)"
        " ORDER BY product_id LIMIT $2 OFFSET $3",
        institution_id, page.size + 1, page.offset,
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


@dataclass(frozen=True)
class LeadRow:
    lead_id: str
    demand_id: str
    institution_id: str
    product_id: str
    product_version: int
    score: int
    rank: int
    rules_version: str
    lead: bytes
    created_at: datetime
    contact_due_at: datetime


async def insert_leads(conn: asyncpg.Connection, rows: list[LeadRow]) -> set[str]:
    """Insert the leads that do not exist yet; returns the ids inserted."""
    if not rows:
        return set()
    inserted = await conn.fetch(
        "INSERT INTO leads (lead_id, demand_id, institution_id, product_id, product_version, score, rank,"
        " rules_version, lead, created_at, contact_due_at)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::int[], $7::int[],"
        " $8::text[], $9::bytea[], $10::timestamptz[], $11::timestamptz[])"
        " ON CONFLICT DO NOTHING RETURNING lead_id",
        *(list(col) for col in zip(*[
            (r.lead_id, r.demand_id, r.institution_id, r.product_id, r.product_version, r.score, r.rank,
             r.rules_version, r.lead, r.created_at, r.contact_due_at) for r in rows
        ], strict=True)),
    )
    return {r["lead_id"] for r in inserted}
