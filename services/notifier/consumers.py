"""Kafka consumers of the notifier: thin — decode, claim, delegate to the domain, store."""

from __future__ import annotations

import asyncpg

from finmesh.matching.v1 import events_pb2 as matching
from meshkit import codec, inbox, log
from meshkit.metrics import Metrics
from meshkit.topics import DEMANDS_MATCHED
from services.notifier import domain, mapping, store

logger = log.get(__name__)


class DemandMatchedConsumer:
    """``matcher.demand-matched.v1`` → a notification for the enterprise and one per institution with a lead."""

    spec = DEMANDS_MATCHED

    def __init__(self, pool: asyncpg.Pool, metrics: Metrics, name: str = "notifier.demand-matched") -> None:
        self.pool = pool
        self.metrics = metrics
        self.name = name

    async def __call__(self, env: codec.Envelope) -> None:
        assert isinstance(env.message, matching.DemandMatched)
        outcome = mapping.match_outcome(env.message)
        wrong = domain.problems(outcome)
        if wrong:
            raise codec.PoisonMessage("unusable DemandMatched: " + "; ".join(wrong))
        notes = domain.for_match(outcome, env.occurred_at)
        async with self.pool.acquire() as conn, conn.transaction():
            if not await inbox.claim(conn, self.name, env.event_id):
                return
            inserted = await store.insert(conn, notes)
        for n in inserted:
            self.metrics.notifications.labels(n.recipient_kind.label, n.kind).inc()
