"""The inbox: each consumed event is handled once, even when it is delivered again.

Call :func:`claim` first, inside the transaction that applies the event's effects: it
returns False if this consumer already handled the event, and the caller skips it.
"""

from __future__ import annotations

import asyncpg


async def claim(conn: asyncpg.Connection, consumer: str, event_id: str) -> bool:
    status = await conn.execute(
        "INSERT INTO inbox (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING", consumer, event_id
    )
    return status == "INSERT 0 1"
