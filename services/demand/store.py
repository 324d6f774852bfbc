"""SQL of the demand service: rows ⇄ domain objects. Every function runs on the caller's
connection, so the caller decides the transaction."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime

import asyncpg

from services.demand import domain as d

# -- enterprises ------------------------------------------------------------------------------------

_ENTERPRISE_COLS = (
    "uscc, name, region_code, city, industry_code, key_industry, size, srdi_tier, high_tech, founded_year,"
    " annual_revenue_fen, employees, tax_credit_grade, has_borrowed, special_zones, registered_at"
)


def _enterprise(r: asyncpg.Record) -> d.Enterprise:
    return d.Enterprise(
        uscc=r["uscc"], name=r["name"], region_code=r["region_code"], city=r["city"],
        industry_code=r["industry_code"], key_industry=r["key_industry"], size=r["size"], srdi_tier=r["srdi_tier"],
        high_tech=r["high_tech"], founded_year=r["founded_year"], annual_revenue_fen=r["annual_revenue_fen"],
        employees=r["employees"], tax_credit_grade=r["tax_credit_grade"], has_borrowed=r["has_borrowed"],
        special_zones=tuple(r["special_zones"]), registered_at=r["registered_at"],
    )


async def get_enterprise(conn: asyncpg.Connection, uscc: str, *, for_update: bool = False) -> d.Enterprise | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(f"SELECT {_ENTERPRISE_COLS} FROM enterprises WHERE uscc = $1{lock}", uscc)
    return _enterprise(row) if row else None


async def save_enterprise(conn: asyncpg.Connection, e: d.Enterprise, now: datetime) -> d.Enterprise:
    """Insert ``e`` or update the stored one (keeping its registration time); returns it as stored."""
    row = await conn.fetchrow(
        f"INSERT INTO enterprises ({_ENTERPRISE_COLS}, updated_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $16)"
        " ON CONFLICT (uscc) DO UPDATE SET name = EXCLUDED.name, region_code = EXCLUDED.region_code,"
        " city = EXCLUDED.city, industry_code = EXCLUDED.industry_code, key_industry = EXCLUDED.key_industry,"
        " size = EXCLUDED.size, srdi_tier = EXCLUDED.srdi_tier, high_tech = EXCLUDED.high_tech,"
        " founded_year = EXCLUDED.founded_year, annual_revenue_fen = EXCLUDED.annual_revenue_fen,"
        " employees = EXCLUDED.employees, tax_credit_grade = EXCLUDED.tax_credit_grade,"
        " has_borrowed = EXCLUDED.has_borrowed, special_zones = EXCLUDED.special_zones,"
        " updated_at = EXCLUDED.updated_at"
        f" RETURNING {_ENTERPRISE_COLS}",
        e.uscc, e.name, e.region_code, e.city, e.industry_code, e.key_industry, e.size, e.srdi_tier, e.high_tech,
        e.founded_year, e.annual_revenue_fen, e.employees, e.tax_credit_grade, e.has_borrowed,
        list(e.special_zones), now,
    )
    return _enterprise(row)


# -- institutions -----------------------------------------------------------------------------------

_INSTITUTION_COLS = "institution_id, name, type, regions_served, contact_sla_hours, lead_topic, registered_at"


def _institution(r: asyncpg.Record) -> d.Institution:
    return d.Institution(
        institution_id=r["institution_id"], name=r["name"], type=r["type"], regions_served=tuple(r["regions_served"]),
        contact_sla_hours=r["contact_sla_hours"], lead_topic=r["lead_topic"], registered_at=r["registered_at"],
    )


async def get_institution(conn: asyncpg.Connection | asyncpg.Pool, institution_id: str, *,
                          for_update: bool = False) -> d.Institution | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(f"SELECT {_INSTITUTION_COLS} FROM institutions WHERE institution_id = $1{lock}",
                              institution_id)
    return _institution(row) if row else None


async def save_institution(conn: asyncpg.Connection, i: d.Institution, now: datetime) -> d.Institution:
    row = await conn.fetchrow(
        f"INSERT INTO institutions ({_INSTITUTION_COLS}, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)"
        " ON CONFLICT (institution_id) DO UPDATE SET name = EXCLUDED.name, type = EXCLUDED.type,"
        " regions_served = EXCLUDED.regions_served, contact_sla_hours = EXCLUDED.contact_sla_hours,"
        " lead_topic = EXCLUDED.lead_topic, updated_at = EXCLUDED.updated_at"
        f" RETURNING {_INSTITUTION_COLS}",
        i.institution_id, i.name, i.type, list(i.regions_served), i.contact_sla_hours, i.lead_topic, now,
    )
    return _institution(row)


async def list_institutions(conn: asyncpg.Connection | asyncpg.Pool, limit: int, offset: int
                            ) -> list[d.Institution]:
    rows = await conn.fetch(
        f"SELECT {_INSTITUTION_COLS} FROM institutions ORDER BY institution_id LIMIT $1 OFFSET $2", limit, offset
    )
    return [_institution(r) for r in rows]


# -- demands ----------------------------------------------------------------------------------------


async def intake_context(conn: asyncpg.Connection, uscc: str, demand_id: str
                         ) -> tuple[d.Enterprise | None, str | None]:
    """In one round trip: the enterprise (or None) and the content hash of a demand already stored
    under ``demand_id`` (or None)."""
    row = await conn.fetchrow(
        f"SELECT (SELECT content_hash FROM demands WHERE demand_id = $2) AS existing_hash, e.*"
        f" FROM (SELECT 1) AS one LEFT JOIN (SELECT {_ENTERPRISE_COLS} FROM enterprises WHERE uscc = $1) AS e ON true",
        uscc, demand_id,
    )
    enterprise = _enterprise(row) if row["uscc"] is not None else None
    return enterprise, row["existing_hash"]


async def content_hash(conn: asyncpg.Connection, demand_id: str) -> str | None:
    return await conn.fetchval("SELECT content_hash FROM demands WHERE demand_id = $1", demand_id)


def _enterprise_json(e: d.Enterprise) -> str:
    return json.dumps(e.to_json(), separators=(",", ":"))


async def insert_demand(conn: asyncpg.Connection, x: d.Demand) -> bool:
    """Store a new demand and its history in one statement; False if ``demand_id`` was already taken."""
    r = x.request
    status = await conn.execute(
        "WITH ins AS ("
        " INSERT INTO demands (demand_id, channel, idempotency_key, content_hash, enterprise_uscc, amount_fen,"
        "  least_acceptable_amount_fen, term_months, max_rate_bps, loan_category, purpose, collateral_offered,"
        "  first_loan, preferred_institution_ids, excluded_institution_ids, consent_to_share, valid_until,"
        "  docking_mode, product_id, status, submitted_at, updated_at, no_match_explanation, enterprise)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21,"
        "  $21, $22, $23::jsonb)"
        " ON CONFLICT DO NOTHING RETURNING demand_id)"
        " INSERT INTO demand_history (demand_id, seq, status, at, actor, reason)"
        " SELECT ins.demand_id, h.seq, h.status, h.at, h.actor, h.reason FROM ins,"
        " unnest($24::int[], $25::int[], $26::timestamptz[], $27::text[], $28::text[]) AS h(seq, status, at, actor,"
        " reason)",
        x.demand_id, int(x.channel), x.idempotency_key, x.content_hash, r.enterprise_uscc, r.amount_fen,
        r.least_acceptable_amount_fen, r.term_months, r.max_rate_bps, r.loan_category, r.purpose,
        list(r.collateral_offered), r.first_loan, list(r.preferred_institution_ids),
        list(r.excluded_institution_ids), r.consent_to_share, r.valid_until, r.docking_mode, r.product_id,
        int(x.status), x.submitted_at, x.no_match_explanation, _enterprise_json(x.enterprise),
        list(range(1, len(x.history) + 1)), [int(h.status) for h in x.history], [h.at for h in x.history],
        [h.actor for h in x.history], [h.reason for h in x.history],
    )
    return status != "INSERT 0 0"


async def lock_demand(conn: asyncpg.Connection, demand_id: str) -> tuple[d.DemandStatus, datetime] | None:
    """The demand's status and acceptance time, locked for the rest of the transaction."""
    row = await conn.fetchrow(
        "SELECT status, submitted_at FROM demands WHERE demand_id = $1 FOR UPDATE", demand_id
    )
    return (d.DemandStatus(row["status"]), row["submitted_at"]) if row else None


async def record_status(conn: asyncpg.Connection, demand_id: str, change: d.StatusChange, *,
                        no_match_explanation: str | None = None) -> None:
    """Set the demand's status and append the change to its history (one round trip)."""
    await conn.execute(
        "WITH upd AS ("
        " UPDATE demands SET status = $2, updated_at = $3,"
        "  no_match_explanation = COALESCE($6, no_match_explanation)"
        " WHERE demand_id = $1 RETURNING demand_id)"
        " INSERT INTO demand_history (demand_id, seq, status, at, actor, reason)"
        " SELECT upd.demand_id,"
        "  (SELECT COALESCE(max(seq), 0) + 1 FROM demand_history WHERE demand_id = $1), $2, $3, $4, $5 FROM upd",
        demand_id, int(change.status), change.at, change.actor, change.reason, no_match_explanation,
    )


def _criteria_json(lead: d.Lead) -> str:
    return json.dumps([asdict(c) for c in lead.explanation], separators=(",", ":"))


async def insert_leads(conn: asyncpg.Connection, leads: tuple[d.Lead, ...]) -> None:
    if not leads:
        return
    await conn.executemany(
        "INSERT INTO leads (lead_id, demand_id, institution_id, product_id, product_version, origin, score, rank,"
        " explanation, rules_version, status, created_at, contact_due_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11, $12, $13) ON CONFLICT (lead_id) DO NOTHING",
        [
            (x.lead_id, x.demand_id, x.institution_id, x.product_id, x.product_version, x.origin, x.score, x.rank,
             _criteria_json(x), x.rules_version, x.status, x.created_at, x.contact_due_at)
            for x in leads
        ],
    )


async def load_demand(conn: asyncpg.Connection | asyncpg.Pool, demand_id: str) -> d.Demand | None:
    row = await conn.fetchrow("SELECT * FROM demands WHERE demand_id = $1", demand_id)
    if row is None:
        return None
    history = await conn.fetch(
        "SELECT status, at, actor, reason FROM demand_history WHERE demand_id = $1 ORDER BY seq", demand_id
    )
    leads = await conn.fetch("SELECT * FROM leads WHERE demand_id = $1 ORDER BY rank, lead_id", demand_id)
    request = d.DemandRequest(
        enterprise_uscc=row["enterprise_uscc"], amount_fen=row["amount_fen"],
        least_acceptable_amount_fen=row["least_acceptable_amount_fen"], term_months=row["term_months"],
        max_rate_bps=row["max_rate_bps"], loan_category=row["loan_category"], purpose=row["purpose"],
        collateral_offered=tuple(row["collateral_offered"]), first_loan=row["first_loan"],
        preferred_institution_ids=tuple(row["preferred_institution_ids"]),
        excluded_institution_ids=tuple(row["excluded_institution_ids"]), consent_to_share=row["consent_to_share"],
        valid_until=row["valid_until"], docking_mode=row["docking_mode"], product_id=row["product_id"],
    )
    return d.Demand(
        demand_id=row["demand_id"], request=request, channel=d.Channel(row["channel"]),
        idempotency_key=row["idempotency_key"], content_hash=row["content_hash"],
        status=d.DemandStatus(row["status"]), submitted_at=row["submitted_at"],
        enterprise=d.Enterprise.from_json(json.loads(row["enterprise"])),
        history=tuple(d.StatusChange(d.DemandStatus(h["status"]), h["at"], h["actor"], h["reason"]) for h in history),
        leads=tuple(
            d.Lead(
                lead_id=x["lead_id"], demand_id=x["demand_id"], institution_id=x["institution_id"],
                product_id=x["product_id"], product_version=x["product_version"], origin=x["origin"],
                score=x["score"], rank=x["rank"],
                explanation=tuple(d.Criterion(**c) for c in json.loads(x["explanation"])),
                rules_version=x["rules_version"], status=x["status"], created_at=x["created_at"],
                contact_due_at=x["contact_due_at"],
            )
            for x in leads
        ),
        no_match_explanation=row["no_match_explanation"],
    )
