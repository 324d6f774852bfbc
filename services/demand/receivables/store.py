"""The receivable registry's SQL (table ``receivables``, migration 013)."""

from __future__ import annotations

from datetime import date, datetime

import asyncpg

from finmesh.receivable.v1 import receivable_pb2 as rpb
from services.demand.receivables import domain as r
from services.demand.receivables import mapping

_NOT_LIVE = [int(s) for s in set(r.Status) - r.LIVE]


def _columns(x: r.Receivable, now: datetime) -> tuple[object, ...]:
    u = x.upload
    return (x.receivable_id, u.supplier_uscc, u.debtor_uscc, x.fingerprint, r.normalised_number(u.document_number),
            date.fromisoformat(u.document_date), u.face_amount_fen, int(x.status), x.financier, r.next_check(x),
            mapping.to_pb(x).SerializeToString(), now)


async def insert(conn: asyncpg.Connection, x: r.Receivable, now: datetime) -> None:
    await conn.execute(
        "INSERT INTO receivables (receivable_id, supplier_uscc, debtor_uscc, fingerprint, number_norm, document_date,"
        " face_amount_fen, status, financier_id, next_check, body, updated_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)", *_columns(x, now))


async def save(conn: asyncpg.Connection, x: r.Receivable, now: datetime) -> None:
    columns = _columns(x, now)
    await conn.execute(
        "UPDATE receivables SET status = $2, financier_id = $3, next_check = $4, body = $5, updated_at = $6"
        " WHERE receivable_id = $1", columns[0], *columns[7:])


def _of(body: bytes) -> r.Receivable:
    return mapping.from_pb(rpb.Receivable.FromString(body))


async def load(conn: asyncpg.Connection | asyncpg.Pool, receivable_id: str, *, lock: bool = False
               ) -> r.Receivable | None:
    body = await conn.fetchval("SELECT body FROM receivables WHERE receivable_id = $1"
                               + (" FOR UPDATE" if lock else ""), receivable_id)
    return None if body is None else _of(body)


async def live_with_fingerprint(conn: asyncpg.Connection, fingerprint: str) -> str | None:
    return await conn.fetchval("SELECT receivable_id FROM receivables WHERE fingerprint = $1"
                               " AND status <> ALL($2::smallint[])", fingerprint, _NOT_LIVE)


async def similar(conn: asyncpg.Connection, u: r.Upload) -> list[r.Receivable]:
    """The live receivables of ``u``'s debtor and supplier with its document number, or with its
    amount and document date (candidates for :func:`domain.near_duplicates`)."""
    rows = await conn.fetch(
        "SELECT body FROM receivables WHERE debtor_uscc = $1 AND supplier_uscc = $2"
        " AND status <> ALL($3::smallint[])"
        " AND (number_norm = $4 OR (face_amount_fen = $5 AND document_date = $6)) ORDER BY receivable_id LIMIT 50",
        u.debtor_uscc, u.supplier_uscc, _NOT_LIVE, r.normalised_number(u.document_number), u.face_amount_fen,
        date.fromisoformat(u.document_date))
    return [_of(row["body"]) for row in rows]


async def due_for_maturity(conn: asyncpg.Connection, today: date, limit: int) -> list[r.Receivable]:
    """Receivables the maturity pass must look at today, locked (rows another replica holds are skipped)."""
    rows = await conn.fetch("SELECT body FROM receivables WHERE next_check <= $1 ORDER BY next_check, receivable_id"
                            " LIMIT $2 FOR UPDATE SKIP LOCKED", today, limit)
    return [_of(row["body"]) for row in rows]


async def find(pool: asyncpg.Pool, *, supplier_uscc: str, debtor_uscc: str, financier_id: str, status: int,
               limit: int, offset: int) -> list[r.Receivable]:
    rows = await pool.fetch(
        "SELECT body FROM receivables WHERE ($1 = '' OR supplier_uscc = $1) AND ($2 = '' OR debtor_uscc = $2)"
        " AND ($3 = '' OR financier_id = $3) AND ($4 = 0 OR status = $4)"
        " ORDER BY receivable_id LIMIT $5 OFFSET $6",
        supplier_uscc, debtor_uscc, financier_id, status, limit, offset)
    return [_of(row["body"]) for row in rows]
