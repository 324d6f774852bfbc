"""The matcher's service layer: the catalog's write path and the matching of one demand.

Each function runs one unit of work in one PostgreSQL transaction: the state change, the
inbox claim of the event that caused it (for consumers) and the outbox events announcing it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta

import asyncpg

from finmesh.catalog.v1 import events_pb2 as catalog_events
from finmesh.catalog.v1 import product_pb2 as catalog
from finmesh.demand.v1 import events_pb2 as demand_events
from finmesh.matching.v1 import events_pb2 as matching_events
from meshkit import codec, errors, ids, inbox, log, outbox, topics
from meshkit.metrics import Metrics
from services.matcher import domain, mapping, store

logger = log.get(__name__)

CONTACT_SLA = timedelta(hours=72)
DEMANDS_CONSUMER = "matcher.demands"
PRODUCTS_CONSUMER = "matcher.products-published"
LEAD_ORIGIN_LABEL = "intelligent_match"


def prepare(product: catalog.Product) -> catalog.Product:
    """Validate a product as published (raises ``ValidationFailed``); return it normalised."""
    prepared = domain.prepare_product(mapping.product_from_proto(product),
                                      institution_id_ok=topics.valid_institution_id)
    return mapping.normalised_proto(product, prepared)


async def upsert_product(conn: asyncpg.Connection, product: catalog.Product, *, schema: str
                         ) -> tuple[catalog.Product, bool]:
    """Store a prepared product, in the caller's transaction: a new version only if its content
    changed, announced by ``ProductChanged`` through the outbox. Returns (stored, changed)."""
    await store.lock_product(conn, product.product_id)
    current = await store.product_row(conn, product.product_id)
    content = mapping.content_hash(product)
    if current is not None:
        if current.institution_id != product.institution_id:
            raise errors.FailedPrecondition(
                f"product {product.product_id} belongs to institution {current.institution_id}"
            )
        if current.content_hash == content:
            return catalog.Product.FromString(current.product), False
    stored = catalog.Product()
    stored.CopyFrom(product)
    stored.version = (current.version if current else 0) + 1
    now = codec.now()
    stored.updated_at.FromDatetime(now)
    await store.save_product(
        conn, product_id=stored.product_id, institution_id=stored.institution_id, version=stored.version,
        status=catalog.ProductStatus.Name(stored.status), content_hash=content,
        product=stored.SerializeToString(), updated_at=now,
    )
    await outbox.append(
        conn, topics.CATALOG_CHANGED, catalog_events.ProductChanged(product=stored), schema=schema,
        event_id=ids.event_id("product-changed", stored.product_id, str(stored.version)), occurred_at=now,
    )
    return stored, True


@dataclass
class DemandMatcher:
    """Matches one ``DemandAccepted`` against the catalog view and stores its leads."""

    pool: asyncpg.Pool
    view: domain.CatalogView
    metrics: Metrics
    schema: str

    async def handle(self, env: codec.Envelope) -> str:
        """Match, then in one transaction: inbox claim, match record, leads, outbox. Returns the
        outcome (``processed``, ``duplicate`` or ``invalid``)."""
        assert isinstance(env.message, demand_events.DemandAccepted)
        accepted = env.message.demand
        if not accepted.demand_id:
            logger.warning("demand without an id; skipped", event_id=env.event_id)
            return "invalid"
        demand = mapping.demand_from_proto(accepted)
        result = domain.match(self.view.active(), demand)
        now = codec.now()
        leads = [
            mapping.lead_proto(ids.lead_id(demand.demand_id, pick.product.product_id), demand.demand_id, pick,
                               created_at=now, contact_due_at=now + CONTACT_SLA)
            for pick in result.picks
        ]
        async with self.pool.acquire() as conn, conn.transaction():
            if not await inbox.claim(conn, DEMANDS_CONSUMER, env.event_id):
                return "duplicate"
            if not await store.record_match(
                conn, demand_id=demand.demand_id, enterprise_uscc=accepted.request.enterprise_uscc,
                leads=len(leads), candidates=result.candidates_considered, explanation=result.explanation,
                rules_version=domain.RULES_VERSION,
            ):
                return "duplicate"  # matched before, under another event id
            inserted = await store.insert_leads(conn, [
                store.LeadRow(
                    lead_id=lead.lead_id, demand_id=lead.demand_id, institution_id=lead.institution_id,
                    product_id=lead.product_id, product_version=lead.product_version, score=lead.score,
                    rank=lead.rank, rules_version=lead.rules_version, lead=lead.SerializeToString(),
                    created_at=now, contact_due_at=now + CONTACT_SLA,
                ) for lead in leads
            ])
            events: list[tuple[topics.TopicSpec, object, str]] = [
                (topics.lead_topic(lead.institution_id),
                 matching_events.LeadIssued(lead=lead, demand=accepted.request, enterprise=accepted.enterprise),
                 ids.event_id("lead-issued", lead.lead_id))
                for lead in leads if lead.lead_id in inserted
            ]
            events.append((
                topics.DEMANDS_MATCHED,
                matching_events.DemandMatched(
                    demand_id=demand.demand_id, enterprise_uscc=accepted.request.enterprise_uscc, leads=leads,
                    no_match_explanation=result.explanation, candidates_considered=result.candidates_considered,
                ),
                ids.event_id("demand-matched", demand.demand_id),
            ))
            await outbox.append_many(conn, events, schema=self.schema, occurred_at=now)  # type: ignore[arg-type]
        self.metrics.demand_to_lead.observe(max(0.0, time.time() - env.occurred_at.timestamp()))
        if leads:
            self.metrics.leads_issued.labels(LEAD_ORIGIN_LABEL).inc(len(inserted))
        else:
            self.metrics.demands_unmatched.inc()
        return "processed"
