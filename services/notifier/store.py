"""SQL of the notifier: the notifications table."""

from __future__ import annotations

import uuid

import asyncpg

from meshkit.paging import Page
from services.notifier.domain import Notification, RecipientKind

_COLUMNS = ("notification_id, recipient_kind, recipient_id, kind, title, body, title_zh, body_zh,"
            " demand_id, lead_id, created_at, read")


async def insert(conn: asyncpg.Connection, notes: list[Notification]) -> list[Notification]:
    """Insert ``notes`` (ON CONFLICT DO NOTHING); returns those that were new."""
    inserted = []
    for n in notes:
        status = await conn.execute(
            f"INSERT INTO notifications ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
            " ON CONFLICT (notification_id) DO NOTHING",
            uuid.UUID(n.notification_id), int(n.recipient_kind), n.recipient_id, n.kind, n.title, n.body,
            n.title_zh, n.body_zh, n.demand_id, n.lead_id, n.created_at, n.read,
        )
        if status == "INSERT 0 1":
            inserted.append(n)
    return inserted


async def inbox(pool: asyncpg.Pool, kind: RecipientKind, recipient_id: str, page: Page) -> list[Notification]:
    """A recipient's notifications, newest first; ``page.size + 1`` rows at most."""
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM notifications WHERE recipient_kind = $1 AND recipient_id = $2"
        " ORDER BY created_at DESC, seq DESC LIMIT $3 OFFSET $4",
        int(kind), recipient_id, page.size + 1, page.offset,
    )
    return [
        Notification(
            notification_id=str(r["notification_id"]), recipient_kind=RecipientKind(r["recipient_kind"]),
            recipient_id=r["recipient_id"], kind=r["kind"], title=r["title"], body=r["body"],
            title_zh=r["title_zh"], body_zh=r["body_zh"], created_at=r["created_at"],
            demand_id=r["demand_id"], lead_id=r["lead_id"], read=r["read"],
        )
        for r in rows
    ]
