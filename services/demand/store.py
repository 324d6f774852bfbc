"""SQL of the demand service: rows ⇄ domain objects. Every function runs on the caller's
connection, so the caller decides the transaction."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime

import asyncpg

from services.demand import domain as d

Conn = asyncpg.Connection | asyncpg.Pool

# -- enterprises ------------------------------------------------------------------------------------

_ENTERPRISE_COLS = (
    "uscc, name, region_code, city, industry_code, key_industry, size, srdi_tier, high_tech, founded_year,"
    " annual_revenue_fen, employees, tax_credit_grade, has_borrowed, special_zones, registered_at, version,"
    " updated_at"
)


def _enterprise(r: asyncpg.Record) -> d.Enterprise:
    return d.Enterprise(
        uscc=r["uscc"], name=r["name"], region_code=r["region_code"], city=r["city"],
        industry_code=r["industry_code"], key_industry=r["key_industry"], size=r["size"], srdi_tier=r["srdi_tier"],
        high_tech=r["high_tech"], founded_year=r["founded_year"], annual_revenue_fen=r["annual_revenue_fen"],
        employees=r["employees"], tax_credit_grade=r["tax_credit_grade"], has_borrowed=r["has_borrowed"],
        special_zones=tuple(r["special_zones"]), registered_at=r["registered_at"], version=r["version"],
        updated_at=r["updated_at"],
    )


async def get_enterprise(conn: Conn, uscc: str, *, for_update: bool = False) -> d.Enterprise | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(f"SELECT {_ENTERPRISE_COLS} FROM enterprises WHERE uscc = $1{lock}", uscc)
    return _enterprise(row) if row else None


def _enterprise_args(e: d.Enterprise) -> tuple:
    return (e.uscc, e.name, e.region_code, e.city, e.industry_code, e.key_industry, e.size, e.srdi_tier,
            e.high_tech, e.founded_year, e.annual_revenue_fen, e.employees, e.tax_credit_grade, e.has_borrowed,
            list(e.special_zones))


async def insert_enterprise(conn: asyncpg.Connection, e: d.Enterprise, now: datetime) -> d.Enterprise | None:
    """Insert ``e`` as version 1; None if its USCC is already registered."""
    row = await conn.fetchrow(
        f"INSERT INTO enterprises ({_ENTERPRISE_COLS})"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, 1, $16)"
        f" ON CONFLICT (uscc) DO NOTHING RETURNING {_ENTERPRISE_COLS}",
        *_enterprise_args(e), now,
    )
    return _enterprise(row) if row else None


async def update_enterprise(conn: asyncpg.Connection, e: d.Enterprise, now: datetime) -> d.Enterprise:
    """Store ``e``'s fields over the registered enterprise, one version up."""
    row = await conn.fetchrow(
        "UPDATE enterprises SET name = $2, region_code = $3, city = $4, industry_code = $5, key_industry = $6,"
        " size = $7, srdi_tier = $8, high_tech = $9, founded_year = $10, annual_revenue_fen = $11,"
        " employees = $12, tax_credit_grade = $13, has_borrowed = $14, special_zones = $15,"
        " version = version + 1, updated_at = $16"
        f" WHERE uscc = $1 RETURNING {_ENTERPRISE_COLS}",
        *_enterprise_args(e), now,
    )
    return _enterprise(row)


async def mark_borrowed(conn: asyncpg.Connection, uscc: str, now: datetime) -> d.Enterprise | None:
    """The enterprise has borrowed (a loan of its was disbursed): one version up with ``has_borrowed``;
    None if it had borrowed before (or is not registered)."""
    row = await conn.fetchrow("UPDATE enterprises SET has_borrowed = true, version = version + 1, updated_at = $2"
                              f" WHERE uscc = $1 AND NOT has_borrowed RETURNING {_ENTERPRISE_COLS}", uscc, now)
    return _enterprise(row) if row else None


@dataclass(frozen=True)
class EnterpriseFilter:
    region_prefix: str = ""  # 6-digit code or 2-digit province prefix
    region_codes: tuple[str, ...] = ()  # from a city name
    key_industry: int = 0
    srdi_tier: int = 0
    size: int = 0
    special_zone: str = ""


async def list_enterprises(conn: Conn, f: EnterpriseFilter, limit: int, offset: int) -> list[d.Enterprise]:
    rows = await conn.fetch(
        f"SELECT {_ENTERPRISE_COLS} FROM enterprises"
        " WHERE ($1 = '' OR region_code LIKE $1 || '%') AND (cardinality($2::text[]) = 0 OR region_code = ANY($2))"
        " AND ($3 = 0 OR key_industry = $3) AND ($4 = 0 OR srdi_tier = $4) AND ($5 = 0 OR size = $5)"
        " AND ($6 = '' OR $6 = ANY(special_zones))"
        " ORDER BY uscc LIMIT $7 OFFSET $8",
        f.region_prefix, list(f.region_codes), f.key_industry, f.srdi_tier, f.size, f.special_zone, limit, offset,
    )
    return [_enterprise(r) for r in rows]


# -- institutions -----------------------------------------------------------------------------------

_INSTITUTION_COLS = ("institution_id, name, type, regions_served, contact_sla_hours, lead_topic, registered_at,"
                     " version, updated_at")


def _institution(r: asyncpg.Record) -> d.Institution:
    return d.Institution(
        institution_id=r["institution_id"], name=r["name"], type=r["type"], regions_served=tuple(r["regions_served"]),
        contact_sla_hours=r["contact_sla_hours"], lead_topic=r["lead_topic"], registered_at=r["registered_at"],
        version=r["version"], updated_at=r["updated_at"],
    )


async def get_institution(conn: Conn, institution_id: str, *, for_update: bool = False) -> d.Institution | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(f"SELECT {_INSTITUTION_COLS} FROM institutions WHERE institution_id = $1{lock}",
                              institution_id)
    return _institution(row) if row else None


async def insert_institution(conn: asyncpg.Connection, i: d.Institution, key_hash: str, now: datetime
                             ) -> d.Institution | None:
    """Insert ``i`` (version 1) with the hash of its API key; None if the id is taken."""
    row = await conn.fetchrow(
        f"INSERT INTO institutions ({_INSTITUTION_COLS}, api_key_hash)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $7, $8)"
        f" ON CONFLICT (institution_id) DO NOTHING RETURNING {_INSTITUTION_COLS}",
        i.institution_id, i.name, i.type, list(i.regions_served), i.contact_sla_hours, i.lead_topic, now, key_hash,
    )
    return _institution(row) if row else None


async def update_institution(conn: asyncpg.Connection, i: d.Institution, now: datetime) -> d.Institution:
    row = await conn.fetchrow(
        "UPDATE institutions SET name = $2, type = $3, regions_served = $4, contact_sla_hours = $5,"
        " lead_topic = $6, version = version + 1, updated_at = $7"
        f" WHERE institution_id = $1 RETURNING {_INSTITUTION_COLS}",
        i.institution_id, i.name, i.type, list(i.regions_served), i.contact_sla_hours, i.lead_topic, now,
    )
    return _institution(row)


async def institution_by_key(conn: Conn, key_hash: str) -> str | None:
    return await conn.fetchval("SELECT institution_id FROM institutions WHERE api_key_hash = $1", key_hash)


async def replace_api_key(conn: asyncpg.Connection, institution_id: str, old_digest: str, new_digest: str,
                          now: datetime) -> d.Institution | None:
    """Swap the key digest if ``old_digest`` is the current one (of two concurrent swaps, one wins),
    making a new version of the institution; None if it was not."""
    row = await conn.fetchrow("UPDATE institutions SET api_key_hash = $3, version = version + 1, updated_at = $4"
                              f" WHERE institution_id = $1 AND api_key_hash = $2 RETURNING {_INSTITUTION_COLS}",
                              institution_id, old_digest, new_digest, now)
    return _institution(row) if row else None


async def lacks_api_key(conn: asyncpg.Connection, institution_id: str) -> bool:
    return await conn.fetchval("SELECT api_key_hash IS NULL FROM institutions WHERE institution_id = $1",
                               institution_id)


async def set_api_key(conn: asyncpg.Connection, institution_id: str, key_digest: str, now: datetime
                      ) -> d.Institution:
    """Give the institution its first key, as a new version."""
    row = await conn.fetchrow("UPDATE institutions SET api_key_hash = $2, version = version + 1, updated_at = $3"
                              f" WHERE institution_id = $1 RETURNING {_INSTITUTION_COLS}", institution_id, key_digest,
                              now)
    return _institution(row)


async def list_institutions(conn: Conn, limit: int, offset: int, *, type_: int = 0, region_code: str = ""
                            ) -> list[d.Institution]:
    rows = await conn.fetch(
        f"SELECT {_INSTITUTION_COLS} FROM institutions"
        " WHERE ($3 = 0 OR type = $3)"
        " AND ($4 = '' OR cardinality(regions_served) = 0 OR $4 = ANY(regions_served)"
        "  OR left($4, 2) = ANY(regions_served))"
        " ORDER BY institution_id LIMIT $1 OFFSET $2", limit, offset, type_, region_code,
    )
    return [_institution(r) for r in rows]


# -- demand intake ------------------------------------------------------------------------------------


async def lock_enterprises_for_intake(conn: asyncpg.Connection, usccs: Sequence[str]) -> None:
    """Serialise intake per enterprise until the transaction ends (so that two copies of the same
    need arriving at once through two channels cannot both miss each other). Sorted: no deadlock."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('demand-intake:' || u, 0))"
        " FROM (SELECT DISTINCT u FROM unnest($1::text[]) AS u ORDER BY u) AS s", sorted(set(usccs)),
    )


async def intake_enterprises(conn: asyncpg.Connection, usccs: Sequence[str]) -> dict[str, d.Enterprise]:
    rows = await conn.fetch(f"SELECT {_ENTERPRISE_COLS} FROM enterprises WHERE uscc = ANY($1::text[])",
                            list(set(usccs)))
    return {r["uscc"]: _enterprise(r) for r in rows}


Need = tuple[str, int, int, int]  # enterprise, amount (fen), term (months), loan category


async def intake_demands(conn: asyncpg.Connection, demand_ids: Sequence[str], needs: Sequence[Need],
                         since: datetime) -> tuple[dict[str, str], list[d.RecentDemand]]:
    """In one query: the content hash of each demand already stored under one of ``demand_ids``, and
    the live demands submitted since ``since`` for one of ``needs`` — (enterprise, amount, term,
    loan category): the candidates of duplicate detection, and only those."""
    usccs, amounts, terms, categories = (list(c) for c in zip(*needs, strict=True)) if needs else ([], [], [], [])
    rows = await conn.fetch(
        "SELECT demand_id, content_hash, NULL::text AS enterprise_uscc, 0::bigint AS amount_fen, 0 AS term_months,"
        " 0 AS loan_category, 0 AS status, NULL::timestamptz AS submitted_at, 0 AS channel, true AS wanted"
        " FROM demands WHERE demand_id = ANY($1::text[])"
        " UNION ALL"
        " SELECT x.demand_id, x.content_hash, x.enterprise_uscc, x.amount_fen, x.term_months, x.loan_category,"
        " x.status, x.submitted_at, x.channel, false FROM demands x"
        " JOIN (SELECT DISTINCT * FROM unnest($2::text[], $3::bigint[], $4::int[], $5::int[])) AS n(u, a, t, c)"
        "  ON x.enterprise_uscc = n.u AND x.amount_fen = n.a AND x.term_months = n.t AND x.loan_category = n.c"
        " WHERE x.submitted_at >= $6 AND x.status = ANY($7::int[])",
        list(set(demand_ids)), usccs, amounts, terms, categories, since, [int(s) for s in d.LIVE],
    )
    hashes = {r["demand_id"]: r["content_hash"] for r in rows if r["wanted"]}
    recent = [
        d.RecentDemand(r["demand_id"], r["enterprise_uscc"], r["amount_fen"], r["term_months"], r["loan_category"],
                       d.DemandStatus(r["status"]), r["submitted_at"], d.Channel(r["channel"]))
        for r in rows if not r["wanted"]
    ]
    return hashes, recent


async def content_hash(conn: asyncpg.Connection, demand_id: str) -> str | None:
    return await conn.fetchval("SELECT content_hash FROM demands WHERE demand_id = $1", demand_id)


def _enterprise_json(e: d.Enterprise) -> str:
    """``e.to_json()`` as text, built without ``dataclasses.asdict`` (it is on the intake path)."""
    fields = dict(vars(e))
    fields["special_zones"] = list(e.special_zones)
    for k in ("registered_at", "updated_at"):
        at = fields[k]
        fields[k] = at.isoformat() if at else None
    return json.dumps(fields, separators=(",", ":"))


_DEMAND_COLUMNS = (
    "demand_id", "channel", "idempotency_key", "content_hash", "enterprise_uscc", "amount_fen",
    "least_acceptable_amount_fen", "term_months", "max_rate_bps", "loan_category", "purpose", "collateral_offered",
    "first_loan", "preferred_institution_ids", "excluded_institution_ids", "consent_to_share", "valid_until",
    "docking_mode", "product_id", "status", "submitted_at", "updated_at", "no_match_explanation", "enterprise",
    "duplicate_of", "operator_id",
)


async def insert_demands(conn: asyncpg.Connection, xs: Sequence[d.Demand]) -> None:
    """Store new demands and their histories, all at once (COPY: two round trips whatever their number).

    The caller has found their ids free under the intake lock; a concurrent twin that took one
    meanwhile makes this raise :class:`asyncpg.UniqueViolationError` (the caller looks again).
    """
    if not xs:
        return
    snapshots: dict[str, str] = {}  # one JSON text per enterprise snapshot
    rows = []
    for x in xs:
        r = x.request
        key = f"{x.enterprise.uscc}@{x.enterprise.version}"
        if key not in snapshots:
            snapshots[key] = _enterprise_json(x.enterprise)
        rows.append((
            x.demand_id, int(x.channel), x.idempotency_key, x.content_hash, r.enterprise_uscc, r.amount_fen,
            r.least_acceptable_amount_fen, r.term_months, r.max_rate_bps, int(r.loan_category), int(r.purpose),
            [int(c) for c in r.collateral_offered], r.first_loan, list(r.preferred_institution_ids),
            list(r.excluded_institution_ids), r.consent_to_share, r.valid_until, int(r.docking_mode), r.product_id,
            int(x.status), x.submitted_at, x.submitted_at, x.no_match_explanation, snapshots[key], x.duplicate_of,
            x.operator_id,
        ))
    await conn.copy_records_to_table("demands", columns=_DEMAND_COLUMNS, records=rows)
    await conn.copy_records_to_table(
        "demand_history", columns=("demand_id", "seq", "status", "at", "actor", "reason"),
        records=[(x.demand_id, seq, int(h.status), h.at, h.actor, h.reason)
                 for x in xs for seq, h in enumerate(x.history, 1)],
    )


# -- demand status --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemandHead:
    """What a status change needs to know of a demand."""

    demand_id: str
    status: d.DemandStatus
    enterprise_uscc: str
    channel: int
    duplicate_of: str
    amount_fen: int
    least_acceptable_amount_fen: int
    consent_to_share: bool


_HEAD_COLS = ("demand_id, status, enterprise_uscc, channel, duplicate_of, amount_fen, least_acceptable_amount_fen,"
              " consent_to_share")


def _head(r: asyncpg.Record) -> DemandHead:
    return DemandHead(r["demand_id"], d.DemandStatus(r["status"]), r["enterprise_uscc"], r["channel"],
                      r["duplicate_of"], r["amount_fen"], r["least_acceptable_amount_fen"], r["consent_to_share"])


async def lock_demand(conn: asyncpg.Connection, demand_id: str) -> DemandHead | None:
    """The demand's head, locked for the rest of the transaction."""
    row = await conn.fetchrow(f"SELECT {_HEAD_COLS} FROM demands WHERE demand_id = $1 FOR UPDATE", demand_id)
    return _head(row) if row else None


async def record_status(conn: asyncpg.Connection, demand_id: str, change: d.StatusChange, *,
                        no_match_explanation: str | None = None, no_match_hints: Sequence[str] | None = None) -> int:
    """Set the demand's status and append the change to its history (one round trip); returns the
    change's position in the history. The no-match explanation and hints change only when given."""
    return await conn.fetchval(
        "WITH upd AS ("
        " UPDATE demands SET status = $2, updated_at = $3,"
        "  no_match_explanation = COALESCE($6, no_match_explanation),"
        "  no_match_hints = COALESCE($7::text[], no_match_hints)"
        " WHERE demand_id = $1 RETURNING demand_id)"
        " INSERT INTO demand_history (demand_id, seq, status, at, actor, reason)"
        " SELECT upd.demand_id,"
        "  (SELECT COALESCE(max(seq), 0) + 1 FROM demand_history WHERE demand_id = $1), $2, $3, $4, $5 FROM upd"
        " RETURNING seq",
        demand_id, int(change.status), change.at, change.actor, change.reason, no_match_explanation,
        None if no_match_hints is None else list(no_match_hints),
    )


async def due_for_expiry(conn: asyncpg.Connection, now: datetime, limit: int) -> list[DemandHead]:
    """Open demands past their valid-until, locked; rows another replica holds are skipped."""
    rows = await conn.fetch(
        f"SELECT {_HEAD_COLS} FROM demands WHERE status = ANY($1::int[]) AND valid_until <= $2"
        " ORDER BY valid_until LIMIT $3 FOR UPDATE SKIP LOCKED",
        [int(s) for s in d.OPEN], now, limit,
    )
    return [_head(r) for r in rows]


# -- leads --------------------------------------------------------------------------------------------


def _criteria_json(lead: d.Lead) -> str:
    return json.dumps([asdict(c) for c in lead.explanation], separators=(",", ":"))


async def insert_leads(conn: asyncpg.Connection, leads: Sequence[d.Lead]) -> list[str]:
    """Store new leads with their history; returns the ids actually inserted (not seen before)."""
    if not leads:
        return []
    inserted = await conn.fetch(
        "INSERT INTO leads (lead_id, demand_id, institution_id, product_id, product_version, origin, score, rank,"
        " explanation, rules_version, status, created_at, contact_due_at, updated_at)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::int[], $7::int[],"
        "  $8::int[], $9::jsonb[], $10::text[], $11::int[], $12::timestamptz[], $13::timestamptz[],"
        "  $14::timestamptz[])"
        " ON CONFLICT (lead_id) DO NOTHING RETURNING lead_id",
        *[list(col) for col in zip(*[
            (x.lead_id, x.demand_id, x.institution_id, x.product_id, x.product_version, x.origin, x.score, x.rank,
             _criteria_json(x), x.rules_version, int(x.status), x.created_at, x.contact_due_at, x.updated_at)
            for x in leads
        ], strict=True)],
    )
    ids = {r["lead_id"] for r in inserted}
    await append_lead_history(conn, [(x, 0) for x in leads if x.lead_id in ids])
    return [x.lead_id for x in leads if x.lead_id in ids]


async def append_lead_history(conn: asyncpg.Connection, items: Sequence[tuple[d.Lead, int]]) -> None:
    """Store the history entries of each lead from position ``known`` on (the ones not stored yet)."""
    rows = [(lead.lead_id, seq, int(h.status), h.at, h.actor, h.reason)
            for lead, known in items for seq, h in enumerate(lead.history, start=1) if seq > known]
    if rows:
        await conn.executemany(
            "INSERT INTO lead_history (lead_id, seq, status, at, actor, reason) VALUES ($1, $2, $3, $4, $5, $6)",
            rows,
        )


REPORTED = tuple(f.name for f in fields(d.Reported))  # each a column of leads
_SAVE_REPORTED = ("UPDATE leads SET status = $2, updated_at = $3, "
                  + ", ".join(f"{name} = ${i}" for i, name in enumerate(REPORTED, start=4)) + " WHERE lead_id = $1")


async def save_lead_outcome(conn: asyncpg.Connection, lead: d.Lead) -> None:
    """Store a lead's status and what its institution reported (its history separately, with
    append_lead_history)."""
    await conn.execute(_SAVE_REPORTED, lead.lead_id, int(lead.status), lead.updated_at,
                       *(getattr(lead.reported, name) for name in REPORTED))


async def lead_owner(conn: Conn, lead_id: str) -> tuple[str, str] | None:
    """(demand id, institution id) of a lead, or None."""
    row = await conn.fetchrow("SELECT demand_id, institution_id FROM leads WHERE lead_id = $1", lead_id)
    return (row["demand_id"], row["institution_id"]) if row else None


def _lead(x: asyncpg.Record, history: Sequence[asyncpg.Record]) -> d.Lead:
    return d.Lead(
        lead_id=x["lead_id"], demand_id=x["demand_id"], institution_id=x["institution_id"],
        product_id=x["product_id"], product_version=x["product_version"], origin=x["origin"],
        score=x["score"], rank=x["rank"],
        explanation=tuple(d.Criterion(**c) for c in json.loads(x["explanation"])),
        rules_version=x["rules_version"], status=x["status"], created_at=x["created_at"],
        contact_due_at=x["contact_due_at"],
        history=tuple(d.LeadChange(d.LeadStatus(h["status"]), h["at"], h["actor"], h["reason"]) for h in history),
        reported=d.Reported(**{name: x[name] for name in REPORTED}), updated_at=x["updated_at"],
    )


async def _leads_where(conn: Conn, where: str, *args: object, order: str = "rank, lead_id",
                       lock: bool = False, page: tuple[int, int] | None = None) -> list[d.Lead]:
    tail = f" LIMIT {int(page[0])} OFFSET {int(page[1])}" if page else ""
    rows = await conn.fetch(
        f"SELECT * FROM leads WHERE {where} ORDER BY {order}{tail}{' FOR UPDATE' if lock else ''}", *args
    )
    if not rows:
        return []
    history: dict[str, list[asyncpg.Record]] = defaultdict(list)
    for h in await conn.fetch("SELECT * FROM lead_history WHERE lead_id = ANY($1::text[]) ORDER BY lead_id, seq",
                              [r["lead_id"] for r in rows]):
        history[h["lead_id"]].append(h)
    return [_lead(r, history[r["lead_id"]]) for r in rows]


async def leads_of_demand(conn: Conn, demand_id: str, *, lock: bool = False, status: int = 0) -> list[d.Lead]:
    """The demand's leads (only those in ``status``, if given)."""
    return await _leads_where(conn, "demand_id = $1 AND ($2 = 0 OR status = $2)", demand_id, status, lock=lock)


async def list_leads(conn: Conn, institution_id: str, status: int, demand_id: str, limit: int, offset: int
                     ) -> list[d.Lead]:
    return await _leads_where(
        conn, "institution_id = $1 AND ($2 = 0 OR status = $2) AND ($3 = '' OR demand_id = $3)",
        institution_id, status, demand_id, order="stored_at DESC, lead_id", page=(limit, offset),
    )


# -- demands --------------------------------------------------------------------------------------------


def _demand(row: asyncpg.Record, history: Sequence[asyncpg.Record], leads: Sequence[d.Lead]) -> d.Demand:
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
        leads=tuple(leads), no_match_explanation=row["no_match_explanation"],
        no_match_hints=tuple(row["no_match_hints"]), duplicate_of=row["duplicate_of"],
        operator_id=row["operator_id"], updated_at=row["updated_at"],
    )


async def load_demands(conn: Conn, demand_ids: Sequence[str], *, lock: bool = False) -> list[d.Demand]:
    """The demands of ``demand_ids`` (in that order, missing ones left out) with history and leads:
    three queries whatever their number."""
    if not demand_ids:
        return []
    rows = await conn.fetch(f"SELECT * FROM demands WHERE demand_id = ANY($1::text[]){' FOR UPDATE' if lock else ''}",
                            list(demand_ids))
    history: dict[str, list[asyncpg.Record]] = defaultdict(list)
    for h in await conn.fetch("SELECT * FROM demand_history WHERE demand_id = ANY($1::text[])"
                              " ORDER BY demand_id, seq", list(demand_ids)):
        history[h["demand_id"]].append(h)
    leads: dict[str, list[d.Lead]] = defaultdict(list)
    for lead in await _leads_where(conn, "demand_id = ANY($1::text[])", list(demand_ids),
                                   order="demand_id, rank, lead_id", lock=lock):
        leads[lead.demand_id].append(lead)
    by_id = {r["demand_id"]: _demand(r, history[r["demand_id"]], leads[r["demand_id"]]) for r in rows}
    return [by_id[i] for i in demand_ids if i in by_id]


async def load_demand(conn: Conn, demand_id: str, *, lock: bool = False) -> d.Demand | None:
    found = await load_demands(conn, [demand_id], lock=lock)
    return found[0] if found else None


@dataclass(frozen=True)
class DemandFilter:
    enterprise_uscc: str = ""
    statuses: tuple[int, ...] = ()
    channel: int = 0
    institution_id: str = ""
    submitted_from: datetime | None = None
    submitted_to: datetime | None = None


async def list_demand_ids(conn: Conn, f: DemandFilter, limit: int, offset: int) -> list[str]:
    rows = await conn.fetch(
        "SELECT demand_id FROM demands x"
        " WHERE ($1 = '' OR enterprise_uscc = $1) AND (cardinality($2::int[]) = 0 OR status = ANY($2::int[]))"
        " AND ($3 = 0 OR channel = $3)"
        " AND ($4 = '' OR EXISTS (SELECT 1 FROM leads l WHERE l.demand_id = x.demand_id AND l.institution_id = $4))"
        " AND ($5::timestamptz IS NULL OR submitted_at >= $5) AND ($6::timestamptz IS NULL OR submitted_at < $6)"
        " ORDER BY submitted_at DESC, demand_id LIMIT $7 OFFSET $8",
        f.enterprise_uscc, list(f.statuses), f.channel, f.institution_id, f.submitted_from, f.submitted_to,
        limit, offset,
    )
    return [r["demand_id"] for r in rows]


_HELD = [int(s) for s in (d.LeadStatus.DELIVERED, d.LeadStatus.CONTACTED, d.LeadStatus.UNDER_REVIEW,
                          d.LeadStatus.APPROVED, d.LeadStatus.DISBURSED)]


async def holds_lead_of(conn: Conn, institution_id: str, uscc: str) -> bool:
    """Whether ``institution_id`` holds a lead for one of the enterprise's demands, being worked or
    disbursed (not one it declined, let lapse, or had withdrawn)."""
    return bool(await conn.fetchval(
        "SELECT 1 FROM leads l JOIN demands d USING (demand_id) WHERE d.enterprise_uscc = $1"
        " AND l.institution_id = $2 AND l.status = ANY($3::int[]) LIMIT 1", uscc, institution_id, _HELD))


async def track_record(conn: Conn, uscc: str) -> tuple[int, int]:
    """(loans disbursed, leads declined for credit history) on the enterprise's demands."""
    row = await conn.fetchrow(
        "SELECT count(*) FILTER (WHERE l.status = $2) AS disbursed,"
        " count(*) FILTER (WHERE l.status = $3 AND l.decline_reason = $4) AS credit"
        " FROM leads l JOIN demands d USING (demand_id) WHERE d.enterprise_uscc = $1",
        uscc, int(d.LeadStatus.DISBURSED), int(d.LeadStatus.DECLINED), int(d.DeclineReason.CREDIT_HISTORY))
    return row["disbursed"], row["credit"]
