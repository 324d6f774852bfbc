"""SQL of the notifier: notifications, webhooks and deliveries, contact policies and clocks."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime

import asyncpg

from meshkit.paging import Page
from services.notifier import domain
from services.notifier.domain import LeadChange, LeadClock, Notification, Policy, RecipientKind

_COLUMNS = ("notification_id, recipient_kind, recipient_id, kind, title, body, title_zh, body_zh,"
            " demand_id, lead_id, created_at, read")

# -- notifications ------------------------------------------------------------------------------------------


async def insert(conn: asyncpg.Connection, notes: list[Notification]) -> list[Notification]:
    """Insert ``notes`` (ON CONFLICT DO NOTHING); returns those that were new."""
    if not notes:
        return []
    rows = await conn.fetch(
        f"INSERT INTO notifications ({_COLUMNS})"
        " SELECT * FROM unnest($1::uuid[], $2::int[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],"
        " $8::text[], $9::text[], $10::text[], $11::timestamptz[], $12::boolean[])"
        " ON CONFLICT (notification_id) DO NOTHING RETURNING notification_id",
        [n.notification_id for n in notes], [int(n.recipient_kind) for n in notes],
        [n.recipient_id for n in notes], [n.kind for n in notes], [n.title for n in notes], [n.body for n in notes],
        [n.title_zh for n in notes], [n.body_zh for n in notes], [n.demand_id for n in notes],
        [n.lead_id for n in notes], [n.created_at for n in notes], [n.read for n in notes],
    )
    new = {str(r["notification_id"]) for r in rows}
    return [n for n in notes if n.notification_id in new]


def _note(r: asyncpg.Record) -> Notification:
    return Notification(
        notification_id=str(r["notification_id"]), recipient_kind=RecipientKind(r["recipient_kind"]),
        recipient_id=r["recipient_id"], kind=r["kind"], title=r["title"], body=r["body"],
        title_zh=r["title_zh"], body_zh=r["body_zh"], created_at=r["created_at"],
        demand_id=r["demand_id"], lead_id=r["lead_id"], read=r["read"],
    )


@dataclass(frozen=True)
class InboxFilter:
    kinds: tuple[str, ...] = ()
    unread_only: bool = False
    demand_id: str = ""
    lead_id: str = ""


async def inbox(pool: asyncpg.Pool, kind: RecipientKind, recipient_id: str, page: Page,
                f: InboxFilter = InboxFilter()) -> list[Notification]:
    """A recipient's notifications, newest first; ``page.size + 1`` rows at most."""
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM notifications WHERE recipient_kind = $1 AND recipient_id = $2"
        " AND (cardinality($5::text[]) = 0 OR kind = ANY($5)) AND (NOT $6 OR NOT read)"
        " AND ($7 = '' OR demand_id = $7) AND ($8 = '' OR lead_id = $8)"
        " ORDER BY created_at DESC, seq DESC LIMIT $3 OFFSET $4",
        int(kind), recipient_id, page.size + 1, page.offset, list(f.kinds), f.unread_only, f.demand_id, f.lead_id,
    )
    return [_note(r) for r in rows]


async def mark_read(pool: asyncpg.Pool, kind: RecipientKind, recipient_id: str, ids: Sequence[str],
                    everything: bool) -> int:
    status = await pool.execute(
        "UPDATE notifications SET read = true WHERE recipient_kind = $1 AND recipient_id = $2 AND NOT read"
        " AND ($4 OR notification_id = ANY($3::uuid[]))",
        int(kind), recipient_id, [uuid.UUID(i) for i in ids], everything,
    )
    return int(status.split()[-1])


Cursor = tuple[int, int]  # (tx, seq) of the last notification streamed


async def cursor_of(pool: asyncpg.Pool, kind: RecipientKind, recipient_id: str, notification_id: str
                    ) -> Cursor | None:
    row = await pool.fetchrow(
        "SELECT tx, seq FROM notifications WHERE notification_id = $1 AND recipient_kind = $2 AND recipient_id = $3",
        uuid.UUID(notification_id), int(kind), recipient_id,
    )
    return (row["tx"], row["seq"]) if row else None


async def cursor_now(pool: asyncpg.Pool) -> Cursor:
    """A cursor before anything not yet final: whatever commits from now on is streamed."""
    xmin = await pool.fetchval("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
    return xmin - 1, 2**62


async def stream_after(pool: asyncpg.Pool, kind: RecipientKind, recipient_id: str, cursor: Cursor,
                       limit: int = 200) -> list[tuple[Cursor, Notification]]:
    """Notifications after ``cursor`` in (tx, seq) order, only from transactions older than every
    one still running: a notification committed later always sorts after what was returned."""
    rows = await pool.fetch(
        f"SELECT tx, seq, {_COLUMNS} FROM notifications WHERE recipient_kind = $1 AND recipient_id = $2"
        " AND (tx, seq) > ($3, $4) AND tx < pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
        " ORDER BY tx, seq LIMIT $5",
        int(kind), recipient_id, cursor[0], cursor[1], limit,
    )
    return [((r["tx"], r["seq"]), _note(r)) for r in rows]


# -- which enterprise a demand belongs to -------------------------------------------------------------------


async def lock_demand_enterprise(conn: asyncpg.Connection, demand_id: str) -> None:
    """Serialise learning a demand's enterprise with parking a change that waits for it (until commit)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"demand-enterprise:{demand_id}")


async def remember_demand(conn: asyncpg.Connection, demand_id: str, uscc: str) -> None:
    await conn.execute("INSERT INTO demand_enterprises (demand_id, enterprise_uscc) VALUES ($1, $2)"
                       " ON CONFLICT (demand_id) DO NOTHING", demand_id, uscc)


async def enterprise_of(conn: asyncpg.Connection, demand_id: str) -> str:
    return await conn.fetchval("SELECT enterprise_uscc FROM demand_enterprises WHERE demand_id = $1",
                               demand_id) or ""


def _change_json(c: LeadChange) -> str:
    return json.dumps({k: v.isoformat() if isinstance(v, datetime) else v for k, v in asdict(c).items()})


def _change_of(raw: str) -> LeadChange:
    d = json.loads(raw)
    for k in ("at", "contacted_at"):
        d[k] = datetime.fromisoformat(d[k]) if d[k] else None
    return LeadChange(**d)


async def park(conn: asyncpg.Connection, c: LeadChange, now: datetime) -> None:
    """Keep ``c`` until its demand's enterprise is known (see :func:`unpark`)."""
    await conn.execute("INSERT INTO parked_lead_changes VALUES ($1, $2, $3, $4::jsonb, $5) ON CONFLICT DO NOTHING",
                       c.lead_id, c.seq, c.demand_id, _change_json(c), now)


async def unpark(conn: asyncpg.Connection, demand_id: str) -> list[LeadChange]:
    """The changes parked for ``demand_id``, removed."""
    rows = await conn.fetch("DELETE FROM parked_lead_changes WHERE demand_id = $1 RETURNING change::text",
                            demand_id)
    return [_change_of(r["change"]) for r in rows]


# -- webhooks and deliveries --------------------------------------------------------------------------------


async def secret_of(conn: asyncpg.Connection | asyncpg.Pool, institution_id: str) -> str:
    return await conn.fetchval("SELECT secret FROM institution_secrets WHERE institution_id = $1",
                               institution_id) or ""


async def create_secret(conn: asyncpg.Connection, institution_id: str, secret: str, now: datetime) -> bool:
    status = await conn.execute("INSERT INTO institution_secrets VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                                institution_id, secret, now)
    return status == "INSERT 0 1"


async def add_webhook(conn: asyncpg.Connection, webhook_id: str, institution_id: str, url: str, now: datetime
                      ) -> tuple[datetime, bool]:
    """(created_at, created): a URL registered again (even after deletion) is the same webhook."""
    row = await conn.fetchrow(
        "INSERT INTO webhooks (webhook_id, institution_id, url, created_at) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (webhook_id) DO UPDATE SET active = true WHERE NOT webhooks.active"
        " RETURNING created_at, (xmax = 0) AS inserted",
        uuid.UUID(webhook_id), institution_id, url, now,
    )
    if row is None:  # already there and active
        created = await conn.fetchval("SELECT created_at FROM webhooks WHERE webhook_id = $1", uuid.UUID(webhook_id))
        return created, False
    return row["created_at"], True


async def delete_webhook(conn: asyncpg.Connection, institution_id: str, webhook_id: str) -> bool:
    """Deactivate the webhook; its pending deliveries are DEAD ("webhook deleted") and never sent again."""
    status = await conn.execute("UPDATE webhooks SET active = false WHERE webhook_id = $1 AND institution_id = $2"
                                " AND active", uuid.UUID(webhook_id), institution_id)
    if status != "UPDATE 1":
        return False
    await conn.execute("UPDATE deliveries SET status = 'dead', dead_reason = 'webhook deleted', leased_until = NULL"
                       " WHERE webhook_id = $1 AND status = 'pending'", uuid.UUID(webhook_id))
    return True


async def add_deliveries(conn: asyncpg.Connection, notes: list[Notification], now: datetime) -> int:
    """A delivery per (institution notification, active webhook of that institution); ids derived
    from both, so a replay adds nothing. Returns how many were new."""
    institutions = sorted({n.recipient_id for n in notes})
    hooks = await conn.fetch("SELECT webhook_id, institution_id FROM webhooks WHERE active"
                             " AND institution_id = ANY($1::text[])", institutions)
    if not hooks:
        return 0
    by_inst: dict[str, list[str]] = {}
    for h in hooks:
        by_inst.setdefault(h["institution_id"], []).append(str(h["webhook_id"]))
    rows = []
    for n in notes:
        for wid in by_inst.get(n.recipient_id, ()):
            did = domain.delivery_id(n.notification_id, wid)
            rows.append((uuid.UUID(did), uuid.UUID(wid), n.recipient_id, uuid.UUID(n.notification_id), n.kind,
                         domain.delivery_body(n, did), now, now))
    if not rows:
        return 0
    inserted = await conn.fetch(
        "INSERT INTO deliveries (delivery_id, webhook_id, institution_id, notification_id, kind, body, created_at,"
        " next_attempt_at) SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::uuid[], $5::text[],"
        " $6::bytea[], $7::timestamptz[], $8::timestamptz[]) ON CONFLICT (delivery_id) DO NOTHING RETURNING 1",
        *[list(col) for col in zip(*rows, strict=True)],
    )
    return len(inserted)


@dataclass(frozen=True)
class Due:
    delivery_id: str
    webhook_id: str
    institution_id: str
    kind: str
    url: str
    secret: str
    body: bytes
    attempts: int
    created_at: datetime


async def claim_due(pool: asyncpg.Pool, now: datetime, limit: int, lease_seconds: float,
                    per_webhook: int) -> list[Due]:
    """Lease up to ``limit`` deliveries due at ``now`` that no one else holds (SKIP LOCKED): a
    replica never sends what another is sending; a crashed sender's lease runs out. At most
    ``per_webhook`` deliveries of one webhook are leased at a time (counting those already out), so
    the backlog of one endpoint never takes the slots of another. Deleted webhooks get nothing."""
    if limit <= 0:
        return []
    rows = await pool.fetch(
        "WITH busy AS (SELECT webhook_id, count(*) AS n FROM deliveries WHERE status = 'pending'"
        " AND leased_until > $1 GROUP BY webhook_id),"
        " ranked AS (SELECT d.delivery_id, d.next_attempt_at, coalesce(b.n, 0)"
        " + row_number() OVER (PARTITION BY d.webhook_id ORDER BY d.next_attempt_at, d.delivery_id) AS place"
        " FROM deliveries d JOIN webhooks w ON w.webhook_id = d.webhook_id AND w.active"
        " LEFT JOIN busy b ON b.webhook_id = d.webhook_id"
        " WHERE d.status = 'pending' AND d.next_attempt_at <= $1 AND (d.leased_until IS NULL OR d.leased_until <= $1)),"
        " due AS (SELECT d.delivery_id FROM deliveries d JOIN ranked r ON r.delivery_id = d.delivery_id"
        " WHERE r.place <= $4 AND d.status = 'pending' AND (d.leased_until IS NULL OR d.leased_until <= $1)"
        " ORDER BY r.next_attempt_at LIMIT $2 FOR UPDATE OF d SKIP LOCKED)"
        " UPDATE deliveries d SET leased_until = $1 + make_interval(secs => $3) FROM due, webhooks w"
        " WHERE d.delivery_id = due.delivery_id AND w.webhook_id = d.webhook_id AND w.active"
        " RETURNING d.delivery_id, d.webhook_id, d.institution_id, d.kind, w.url, d.body, d.attempts, d.created_at,"
        " (SELECT secret FROM institution_secrets s WHERE s.institution_id = d.institution_id) AS secret",
        now, limit, lease_seconds, per_webhook,
    )
    return [Due(str(r["delivery_id"]), str(r["webhook_id"]), r["institution_id"], r["kind"], r["url"],
                r["secret"] or "", r["body"], r["attempts"], r["created_at"]) for r in rows]


@dataclass(frozen=True)
class Attempt:
    ok: bool
    http_status: int
    error: str
    duration_ms: int
    at: datetime


async def record_attempt(pool: asyncpg.Pool, due: Due, a: Attempt, *, next_attempt_at: datetime | None,
                         dead_reason: str = "") -> None:
    """The attempt's outcome: delivered, another try at ``next_attempt_at``, or dead. The attempt is
    always kept; a delivery no longer pending (its webhook was deleted meanwhile) keeps its status."""
    attempt = due.attempts + 1
    did = uuid.UUID(due.delivery_id)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO delivery_attempts VALUES ($1, $2, $3, $4, $5, $6, $7)"
                           " ON CONFLICT DO NOTHING",
                           did, attempt, a.at, a.ok, a.http_status, a.error[:1000], a.duration_ms)
        await conn.execute("UPDATE deliveries SET attempts = $2, leased_until = NULL WHERE delivery_id = $1",
                           did, attempt)
        if a.ok:
            await conn.execute("UPDATE deliveries SET status = 'delivered', delivered_at = $2, dead_reason = ''"
                               " WHERE delivery_id = $1 AND (status = 'pending' OR dead_reason = 'webhook deleted')",
                               did, a.at)
        elif next_attempt_at is not None:
            await conn.execute("UPDATE deliveries SET next_attempt_at = $2 WHERE delivery_id = $1"
                               " AND status = 'pending'", did, next_attempt_at)
        else:
            await conn.execute("UPDATE deliveries SET status = 'dead', dead_reason = $2"
                               " WHERE delivery_id = $1 AND status = 'pending'", did, dead_reason[:1000])


async def list_deliveries(pool: asyncpg.Pool, institution_id: str, status: str, page: Page) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT d.*, coalesce((SELECT json_agg(json_build_object('attempt', a.attempt, 'at', a.at, 'ok', a.ok,"
        " 'http_status', a.http_status, 'error', a.error, 'duration_ms', a.duration_ms) ORDER BY a.attempt)"
        " FROM delivery_attempts a WHERE a.delivery_id = d.delivery_id), '[]')::text AS history"
        " FROM deliveries d WHERE d.institution_id = $1 AND ($2 = '' OR d.status = $2)"
        " ORDER BY d.created_at DESC, d.delivery_id LIMIT $3 OFFSET $4",
        institution_id, status, page.size + 1, page.offset,
    )


async def pending_deliveries(pool: asyncpg.Pool) -> int:
    return await pool.fetchval("SELECT count(*) FROM deliveries WHERE status = 'pending'")


# -- contact policies and clocks ----------------------------------------------------------------------------


async def set_policy(conn: asyncpg.Connection, p: Policy, now: datetime) -> Policy:
    await conn.execute(
        "INSERT INTO contact_policies (institution_id, product_id, sla_hours, escalation_contact, updated_at,"
        " announced) VALUES ($1, $2, $3, $4, $5, true) ON CONFLICT (institution_id, product_id)"
        " DO UPDATE SET sla_hours = excluded.sla_hours, escalation_contact = excluded.escalation_contact,"
        " updated_at = excluded.updated_at, announced = true",
        p.institution_id, p.product_id, p.sla_hours, p.escalation_contact, now,
    )
    return Policy(p.institution_id, p.product_id, p.sla_hours, p.escalation_contact, now)


async def announce_unannounced_policies(conn: asyncpg.Connection) -> list[Policy]:
    """Mark the policies not announced yet as announced, and return them (the caller announces them in
    the same transaction; a replica doing the same at once gets none of them)."""
    rows = await conn.fetch(
        "UPDATE contact_policies SET announced = true WHERE NOT announced"
        " RETURNING institution_id, product_id, sla_hours, escalation_contact, updated_at")
    return [Policy(r["institution_id"], r["product_id"], r["sla_hours"], r["escalation_contact"], r["updated_at"])
            for r in rows]


async def sla_inputs(conn: asyncpg.Connection, institution_id: str, product_id: str
                     ) -> tuple[Policy | None, Policy | None, int]:
    rows = await conn.fetch("SELECT * FROM contact_policies WHERE institution_id = $1 AND product_id IN ('', $2)",
                            institution_id, product_id)
    pol = {r["product_id"]: Policy(r["institution_id"], r["product_id"], r["sla_hours"], r["escalation_contact"],
                                   r["updated_at"]) for r in rows}
    hours = await conn.fetchval("SELECT sla_hours FROM institution_slas WHERE institution_id = $1", institution_id)
    return (pol.get(product_id) if product_id else None), pol.get(""), hours or 0


_CLOCK_COLS = ("lead_id, demand_id, institution_id, product_id, sla_hours, sla_source, escalation_contact,"
               " delivered_at, remind_at, due_at, state, next_fire_at, reminded_at, breached_at, stopped_at,"
               " stopped_by, contacted_at")


def _clock(r: asyncpg.Record) -> LeadClock:
    return LeadClock(**{k: r[k] for k in _CLOCK_COLS.replace(" ", "").split(",")})


async def start_clock(conn: asyncpg.Connection, c: LeadClock) -> bool:
    status = await conn.execute(
        f"INSERT INTO lead_clocks ({_CLOCK_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,"
        " $13, $14, $15, $16, $17) ON CONFLICT (lead_id) DO NOTHING",
        c.lead_id, c.demand_id, c.institution_id, c.product_id, c.sla_hours, c.sla_source, c.escalation_contact,
        c.delivered_at, c.remind_at, c.due_at, c.state, c.next_fire_at, c.reminded_at, c.breached_at,
        c.stopped_at, c.stopped_by, c.contacted_at,
    )
    return status == "INSERT 0 1"


async def stop_clock(conn: asyncpg.Connection, lead_id: str, status: str, at: datetime,
                     contacted_at: datetime | None) -> tuple[LeadClock | None, bool]:
    """Stop the lead's clock if it runs, and note its first contact (even on a breached clock).
    Returns the clock as it was before (None if the lead has none) and whether it was stopped now."""
    row = await conn.fetchrow(f"SELECT {_CLOCK_COLS} FROM lead_clocks WHERE lead_id = $1 FOR UPDATE", lead_id)
    if row is None:
        return None, False
    if contacted_at is not None:
        await conn.execute("UPDATE lead_clocks SET contacted_at = coalesce(contacted_at, $2) WHERE lead_id = $1",
                           lead_id, contacted_at)
    if row["state"] != "running":
        return _clock(row), False
    await conn.execute("UPDATE lead_clocks SET state = 'stopped', stopped_at = $2, stopped_by = $3,"
                       " next_fire_at = NULL WHERE lead_id = $1", lead_id, at, status)
    return _clock(row), True


async def due_clocks(conn: asyncpg.Connection, now: datetime, limit: int) -> list[LeadClock]:
    """Running clocks whose reminder or deadline has come, locked; rows another replica holds are skipped."""
    rows = await conn.fetch(
        f"SELECT {_CLOCK_COLS} FROM lead_clocks WHERE state = 'running' AND next_fire_at <= $1"
        " ORDER BY next_fire_at LIMIT $2 FOR UPDATE SKIP LOCKED", now, limit)
    return [_clock(r) for r in rows]


async def save_tick(conn: asyncpg.Connection, lead_id: str, *, reminded_at: datetime | None,
                    breached_at: datetime | None, next_fire_at: datetime | None) -> None:
    await conn.execute(
        "UPDATE lead_clocks SET reminded_at = coalesce($2, reminded_at), breached_at = $3,"
        " state = CASE WHEN $3::timestamptz IS NULL THEN state ELSE 'breached' END, next_fire_at = $4"
        " WHERE lead_id = $1", lead_id, reminded_at, breached_at, next_fire_at)


async def get_clock(pool: asyncpg.Pool, lead_id: str) -> LeadClock | None:
    row = await pool.fetchrow(f"SELECT {_CLOCK_COLS} FROM lead_clocks WHERE lead_id = $1", lead_id)
    return _clock(row) if row else None


async def running_clocks(pool: asyncpg.Pool) -> int:
    return await pool.fetchval("SELECT count(*) FROM lead_clocks WHERE state = 'running'")
