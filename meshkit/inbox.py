"""The inbox: each consumed event is handled once, even when it is delivered again.

Call :func:`claim` first, inside the transaction that applies the event's effects: it
returns False if this consumer already handled the event, and the caller skips it.

An event can only be delivered again while its topic still holds it, so entries older than
the longest topic retention are pruned (:func:`prune`, run by every service's runtime); the
inbox stays bounded however long the mesh runs.
"""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from meshkit.topics import REGISTRY

# Keep entries long enough for any record to come back: a record may be delivered until its topic's
# retention ends, and one dead-lettered by a group as late as that may be replayed (``python -m
# meshkit.deadletters replay``) until its dead-letter topic's retention ends; the consumers that had
# handled it must still know it then. Topics kept for good (retention -1) are compacted or carry
# versioned state, which their consumers dedupe by version.
_DEAD_LETTERS = {t.dead_letter for t in REGISTRY if t.dead_letter is not None}
KEEP = (timedelta(milliseconds=max(t.retention_ms for t in REGISTRY if t.retention_ms > 0 and t not in _DEAD_LETTERS))
        + timedelta(milliseconds=max(t.retention_ms for t in _DEAD_LETTERS)) + timedelta(days=1))


async def claim(conn: asyncpg.Connection, consumer: str, event_id: str) -> bool:
    status = await conn.execute(
        "INSERT INTO inbox (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING", consumer, event_id
    )
    return status == "INSERT 0 1"


async def prune(pool: asyncpg.Pool, keep: timedelta = KEEP, batch: int = 10_000) -> int:
    """Delete entries handled more than ``keep`` ago; returns how many."""
    removed = 0
    while True:
        status = await pool.execute(
            "DELETE FROM inbox WHERE ctid = ANY(ARRAY("
            " SELECT ctid FROM inbox WHERE handled_at < now() - $1::interval LIMIT $2))",
            keep, batch,
        )
        n = int(status.split()[-1])
        removed += n
        if n < batch:
            return removed
