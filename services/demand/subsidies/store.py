"""The subsidy funds' SQL (tables ``subsidy_funds`` and ``subsidy_grants``, migration 014)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import asyncpg

from finmesh.subsidy.v1 import subsidy_pb2 as spb
from services.demand.subsidies import domain as s
from services.demand.subsidies import mapping

Conn = asyncpg.Connection | asyncpg.Pool


def _fund(row: asyncpg.Record) -> s.Fund:
    return replace(mapping.fund_from_pb(spb.Fund.FromString(row["terms"])), reserved_fen=row["reserved_fen"],
                   utilised_fen=row["utilised_fen"], created_at=row["created_at"])


async def insert_fund(conn: Conn, f: s.Fund, now: datetime) -> bool:
    """False if a fund with its id exists."""
    done = await conn.execute(
        "INSERT INTO subsidy_funds (fund_id, terms, quota_fen, created_at) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (fund_id) DO NOTHING",
        f.fund_id, mapping.fund_to_pb(f.terms()).SerializeToString(), f.quota_fen, now)
    return done.endswith(" 1")


async def fund(conn: Conn, fund_id: str, *, lock: bool = False) -> s.Fund | None:
    row = await conn.fetchrow("SELECT * FROM subsidy_funds WHERE fund_id = $1" + (" FOR UPDATE" if lock else ""),
                              fund_id)
    return None if row is None else _fund(row)


async def funds(conn: Conn, *, limit: int | None = None, offset: int = 0) -> list[s.Fund]:
    """Funds by id (all of them without ``limit``)."""
    rows = await conn.fetch("SELECT * FROM subsidy_funds ORDER BY fund_id LIMIT $1 OFFSET $2", limit, offset)
    return [_fund(row) for row in rows]


async def save_ledger(conn: asyncpg.Connection, f: s.Fund) -> None:
    await conn.execute("UPDATE subsidy_funds SET reserved_fen = $2, utilised_fen = $3 WHERE fund_id = $1",
                       f.fund_id, f.reserved_fen, f.utilised_fen)


async def grant_of_lead(conn: Conn, lead_id: str, *, lock: bool = False) -> s.Grant | None:
    body = await conn.fetchval("SELECT body FROM subsidy_grants WHERE lead_id = $1"
                               + (" FOR UPDATE" if lock else ""), lead_id)
    return None if body is None else mapping.grant_from_pb(spb.Grant.FromString(body))


async def reserved_before(conn: asyncpg.Connection, before: datetime, limit: int) -> list[s.Grant]:
    """Grants reserved before ``before``, locked (rows another replica holds are skipped)."""
    rows = await conn.fetch(f"SELECT body FROM subsidy_grants WHERE status = {int(s.GrantStatus.RESERVED)}"
                            " AND updated_at < $1 ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED", before, limit)
    return [mapping.grant_from_pb(spb.Grant.FromString(row["body"])) for row in rows]


async def save_grant(conn: asyncpg.Connection, g: s.Grant) -> None:
    await conn.execute(
        "INSERT INTO subsidy_grants (grant_id, lead_id, fund_id, enterprise_uscc, institution_id, status, body,"
        " updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        " ON CONFLICT (grant_id) DO UPDATE SET status = excluded.status, body = excluded.body,"
        " updated_at = excluded.updated_at",
        g.grant_id, g.loan.lead_id, g.fund_id, g.loan.enterprise_uscc, g.loan.institution_id, int(g.status),
        mapping.grant_to_pb(g).SerializeToString(), g.updated_at)


async def grants(conn: Conn, *, fund_id: str, enterprise_uscc: str, status: int, limit: int, offset: int
                 ) -> list[s.Grant]:
    rows = await conn.fetch(
        "SELECT body FROM subsidy_grants WHERE ($1 = '' OR fund_id = $1) AND ($2 = '' OR enterprise_uscc = $2)"
        " AND ($3 = 0 OR status = $3) ORDER BY grant_id LIMIT $4 OFFSET $5",
        fund_id, enterprise_uscc, status, limit, offset)
    return [mapping.grant_from_pb(spb.Grant.FromString(row["body"])) for row in rows]
