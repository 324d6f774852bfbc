"""Kafka entry points besides the demands (see :class:`services.matcher.handlers.DemandMatcher`):
products published by institutions, lead and demand status changes, missed contact clocks."""

from __future__ import annotations

import asyncpg

from meshkit import codec, errors, inbox
from services.matcher import handlers
from services.matcher.view import LiveCatalog


class ProductsPublished:
    """Handler of ``PRODUCTS_PUBLISHED`` (run by :class:`meshkit.kafka.EventConsumer`): an invalid
    product is a :class:`PoisonMessage`, so it lands on the topic's dead-letter topic."""

    def __init__(self, pool: asyncpg.Pool, catalog: LiveCatalog, schema: str) -> None:
        self.pool = pool
        self.catalog = catalog
        self.schema = schema

    async def __call__(self, env: codec.Envelope) -> None:
        try:
            product = handlers.prepare(env.message.product)  # type: ignore[attr-defined]
        except errors.ValidationFailed as err:
            raise codec.PoisonMessage(f"invalid product: {err}") from None
        async with self.pool.acquire() as conn, conn.transaction():
            if not await inbox.claim(conn, handlers.PRODUCTS_CONSUMER, env.event_id):
                return
            try:
                stored, changed = await handlers.upsert_product(conn, product, schema=self.schema)
            except errors.FailedPrecondition as err:
                raise codec.PoisonMessage(str(err)) from None
        if changed:
            self.catalog.apply(stored)


class LeadStatusChanges:
    """``LeadStatusChanged`` (demand service): institutions' records, re-matching after a decline."""

    def __init__(self, outcomes: handlers.LeadOutcomes) -> None:
        self.outcomes = outcomes

    async def __call__(self, env: codec.Envelope) -> None:
        await self.outcomes.status_changed(env)


class LeadSlaBreaches:
    """``LeadSlaBreached`` (notifier): the lead drops out and the demand is re-routed."""

    def __init__(self, outcomes: handlers.LeadOutcomes) -> None:
        self.outcomes = outcomes

    async def __call__(self, env: codec.Envelope) -> None:
        await self.outcomes.sla_breached(env)


class DemandStatusChanges:
    """``DemandStatusChanged`` (demand service): closed demands leave the open-demand table."""

    def __init__(self, outcomes: handlers.LeadOutcomes) -> None:
        self.outcomes = outcomes

    async def __call__(self, env: codec.Envelope) -> None:
        await self.outcomes.demand_status_changed(env)
