"""The loan book's SQL (table ``loans``, migration 015)."""

from __future__ import annotations

from datetime import date, datetime

import asyncpg

from services.demand.loans import domain as ln


def _loan(row: asyncpg.Record) -> ln.Loan:
    return ln.Loan(lead_id=row["lead_id"], demand_id=row["demand_id"], enterprise_uscc=row["enterprise_uscc"],
                   institution_id=row["institution_id"], amount_fen=row["amount_fen"], rate_bps=row["rate_bps"],
                   term_months=row["term_months"], disbursed_at=row["disbursed_at"], first_loan=row["first_loan"])


async def record(conn: asyncpg.Connection, loan: ln.Loan) -> bool:
    """Keep a disbursed loan (once: False if it was kept before)."""
    done = await conn.execute(
        "INSERT INTO loans (lead_id, demand_id, enterprise_uscc, institution_id, amount_fen, rate_bps, term_months,"
        " disbursed_at, first_loan, matures_on, warn_on) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        " ON CONFLICT (lead_id) DO NOTHING",
        loan.lead_id, loan.demand_id, loan.enterprise_uscc, loan.institution_id, loan.amount_fen, loan.rate_bps,
        loan.term_months, loan.disbursed_at, loan.first_loan, loan.matures_on, loan.warn_on)
    return done.endswith(" 1")


async def due_for_warning(conn: asyncpg.Connection, today: date, limit: int) -> list[ln.Loan]:
    """Loans whose renewal warning is due and not sent, locked (rows another replica holds are skipped)."""
    rows = await conn.fetch("SELECT * FROM loans WHERE warned_at IS NULL AND settled_at IS NULL AND warn_on <= $1"
                            " ORDER BY warn_on, lead_id LIMIT $2 FOR UPDATE SKIP LOCKED", today, limit)
    return [_loan(row) for row in rows]


async def lender_locked(conn: asyncpg.Connection, lead_id: str) -> tuple[str, datetime | None] | None:
    """The lender of the loan of ``lead_id`` and when it was recorded repaid, its row locked (None:
    no such loan in the book)."""
    row = await conn.fetchrow("SELECT institution_id, settled_at FROM loans WHERE lead_id = $1 FOR UPDATE", lead_id)
    return None if row is None else (row["institution_id"], row["settled_at"])


async def lead_lender(conn: asyncpg.Connection, lead_id: str, status: int) -> str | None:
    """The institution of ``lead_id`` if the lead is in ``status``, else None."""
    return await conn.fetchval("SELECT institution_id FROM leads WHERE lead_id = $1 AND status = $2", lead_id, status)


async def mark_settled(conn: asyncpg.Connection, lead_id: str, at: datetime) -> None:
    await conn.execute("UPDATE loans SET settled_at = $2 WHERE lead_id = $1 AND settled_at IS NULL", lead_id, at)


async def warned(conn: asyncpg.Connection, lead_ids: list[str], at: datetime) -> None:
    await conn.execute("UPDATE loans SET warned_at = $2 WHERE lead_id = ANY($1::text[])", lead_ids, at)
