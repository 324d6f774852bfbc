"""The matcher's service layer: the catalog's write path, matching demands in batches, the
reverse join, re-matching after a decline or a missed contact clock, closing demands, institution
responsiveness, and the institution-active docking (subscriptions, the pool and claims).

Each unit of work runs in one PostgreSQL transaction: the state change, the inbox claim of the
event that caused it (for consumers) and the outbox events announcing it. Decisions are taken by
the pure core (:mod:`services.matcher.domain`); anything that adds a lead to a demand matched
before locks the demand's ``open_demands`` row and re-checks its room and tried institutions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import asyncpg

from finmesh.catalog.v1 import events_pb2 as catalog_events
from finmesh.catalog.v1 import product_pb2 as catalog
from finmesh.common.v1 import finance_pb2 as finance
from finmesh.demand.v1 import demand_pb2
from finmesh.demand.v1 import events_pb2 as demand_events
from finmesh.institution.v1 import institution_pb2
from finmesh.lead.v1 import lead_pb2
from finmesh.matching.v1 import docking_pb2
from finmesh.matching.v1 import events_pb2 as matching_events
from meshkit import codec, errors, ids, institutions, log, outbox, topics
from meshkit.contact_sla import contact_sla
from meshkit.kafka import Finish
from meshkit.metrics import Metrics
from services.matcher import domain, mapping, store
from services.matcher.view import OpenDemandsView

logger = log.get(__name__)

DEMANDS_CONSUMER = "matcher.demands"
PRODUCTS_CONSUMER = "matcher.products-published"
LEAD_STATUS_CONSUMER = "matcher.lead-status"
SLA_CONSUMER = "matcher.lead-sla"
DEMAND_STATUS_CONSUMER = "matcher.demand-status"
CLOSED_DEMAND_STATUSES = frozenset({"FUNDED", "CLOSED", "WITHDRAWN", "EXPIRED"})
# Demands planned between two yields to the event loop (about 5 ms of work): planning a batch of 200
# takes some 70 ms, and the transaction storing the batch before must start meanwhile, not after it.
PLAN_SLICE = 16


# -- the catalog ------------------------------------------------------------------------------------


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
        loan_category=finance.LoanCategory.Name(stored.loan_category),
        programme_tags=list(stored.programme_tags),
        industries=[finance.KeyIndustry.Name(i) for i in stored.industries],
    )
    await outbox.append(
        conn, topics.CATALOG_CHANGED, catalog_events.ProductChanged(product=stored), schema=schema,
        event_id=ids.event_id("product-changed", stored.product_id, str(stored.version)), occurred_at=now,
    )
    return stored, True


async def retire_product(conn: asyncpg.Connection, product_id: str, institution_id: str, *, schema: str
                         ) -> tuple[catalog.Product, bool]:
    """A new version of the product with status RETIRED (no-op if it already is)."""
    v = errors.Violations()
    v.check(bool(product_id), "product_id", "is required")
    v.check(bool(institution_id), "institution_id", "is required")
    v.raise_if_any()
    await store.lock_product(conn, product_id)
    row = await store.product_row(conn, product_id)
    if row is None:
        raise errors.NotFound(f"product {product_id} not found")
    if row.institution_id != institution_id:
        raise errors.PermissionDenied(f"product {product_id} is not a product of {institution_id}")
    current = catalog.Product.FromString(row.product)
    retired = catalog.Product()
    retired.CopyFrom(current)
    retired.status = catalog.PRODUCT_STATUS_RETIRED
    return await upsert_product(conn, retired, schema=schema)


# -- issuing leads ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Issue:
    """One lead to issue: the demand as accepted, the pick and where it came from."""

    demand: demand_pb2.Demand
    pick: domain.Pick
    origin: str


def _lead(issue: Issue, now: datetime, standing: Standing) -> mapping.EncodedLead:
    demand_id = issue.demand.demand_id
    product = issue.pick.product
    return mapping.encode_lead(ids.lead_id(demand_id, product.product_id), demand_id, issue.pick, created_at=now,
                               contact_due_at=standing.contact_due(product, now), origin=issue.origin)


def _lead_issued(lead: mapping.EncodedLead, demand_bytes: bytes) -> outbox.Encoded:
    """``LeadIssued`` to the institution's own topic (keyed by lead id); ``demand_bytes`` from
    :func:`mapping.demand_part`."""
    return outbox.Encoded(topics.lead_topic(lead.institution_id), lead.lead_id.encode(),
                          mapping.lead_issued(lead, demand_bytes), ids.event_id("lead-issued", lead.lead_id))


def _demand_matched(head: matching_events.DemandMatched, leads: Sequence[mapping.EncodedLead],
                    event_id: str) -> outbox.Encoded:
    return outbox.Encoded(topics.DEMANDS_MATCHED, topics.DEMANDS_MATCHED.key_of(head),
                          mapping.demand_matched(head, leads), event_id)


async def add_leads(conn: asyncpg.Connection, issues: Sequence[Issue], *, standing: Standing, schema: str,
                    now: datetime) -> list[mapping.EncodedLead]:
    """Add leads to demands matched before, in the caller's transaction (the demands' rows must be
    locked by it and their room checked): the leads, the demands' counts and tried institutions,
    ``LeadIssued`` to each institution and one ``DemandMatched`` (``additional``) per demand with
    only its new leads. Returns the leads inserted (a replay inserts none)."""
    if not issues:
        return []
    leads = [(_lead(i, now, standing), i) for i in issues]
    inserted = await store.insert_leads(conn, [lead for lead, _ in leads], rules_version=domain.RULES_VERSION,
                                        created_at=now)
    fresh = [(lead, i) for lead, i in leads if lead.lead_id in inserted]
    per_demand: dict[str, list[tuple[mapping.EncodedLead, Issue]]] = {}
    for lead, i in fresh:
        per_demand.setdefault(lead.demand_id, []).append((lead, i))
    await store.add_leads_to_demands(conn, {d: [lead.institution_id for lead, _ in items]
                                            for d, items in per_demand.items()})
    events: list[outbox.Encoded] = []
    for items in per_demand.values():
        demand_bytes = mapping.demand_part(items[0][1].demand)
        events += [_lead_issued(lead, demand_bytes) for lead, _ in items]
    for demand_id, items in per_demand.items():
        new = [lead for lead, _ in items]
        head = matching_events.DemandMatched(demand_id=demand_id,
                                             enterprise_uscc=items[0][1].demand.request.enterprise_uscc,
                                             additional=True, rules_version=domain.RULES_VERSION)
        events.append(_demand_matched(head, new, ids.event_id("demand-matched", demand_id,
                                                             *sorted(lead.lead_id for lead in new))))
    await outbox.append_encoded(conn, events, schema=schema, occurred_at=now)
    return [lead for lead, _ in fresh]


def from_row(row: store.OpenDemandRow) -> tuple[demand_pb2.Demand, domain.OpenDemand]:
    accepted = demand_pb2.Demand.FromString(row.demand)
    return accepted, mapping.open_demand(accepted, active_leads=row.active_leads, tried=row.tried,
                                         matched_at=row.matched_at, valid_until=row.valid_until)


# -- the shared state of a worker ----------------------------------------------------------------------


@dataclass
class Standing:
    """What a worker keeps in memory besides the catalog: institutions' responsiveness and contact
    SLAs, and the standing subscriptions (all refreshed from PostgreSQL every few seconds, and at
    once after this worker's own writes)."""

    pool: asyncpg.Pool
    responsiveness: dict[str, domain.Responsiveness] = field(default_factory=dict)
    subscriptions: tuple[domain.StandingSubscription, ...] = ()
    contact_slas: dict[str, int] = field(default_factory=dict)
    contact_policies: dict[tuple[str, str], int] = field(default_factory=dict)
    _learning: int = 0  # SLAs and policies this worker has stored (a refresh read before one is stale)

    def contact_due(self, product: domain.Product, now: datetime) -> datetime:
        """When a lead for ``product`` issued ``now`` is due for contact: by the SLA the notifier's clock
        will count (:func:`meshkit.contact_sla.contact_sla`)."""
        i = product.institution_id
        hours, _ = contact_sla(self.contact_policies.get((i, product.product_id), 0),
                               self.contact_policies.get((i, ""), 0), self.contact_slas.get(i, 0))
        return now + timedelta(hours=hours)

    def learnt(self, institution: institution_pb2.Institution) -> None:
        """A new version of an institution, being stored by this worker (:func:`institutions.learner`)."""
        self._learning += 1
        self.contact_slas[institution.institution_id] = institution.contact_sla_hours

    async def policy_changed(self, env: codec.Envelope) -> None:
        """``ContactPolicyChanged`` (notifier): kept, and in this worker's memory at once."""
        policy, updated_at = institutions.policy_announced(env)
        async with self.pool.acquire() as conn, conn.transaction():
            await institutions.learn_policy(conn, policy, updated_at)
            self._learning += 1  # before the commit: see refresh
            self.contact_policies[(policy.institution_id, policy.product_id)] = policy.sla_hours

    async def refresh(self) -> bool:
        """Read it all again; False if the SLAs and policies read are left out (this worker stored one
        meanwhile: the next refresh has it)."""
        rows = await store.institution_stats(self.pool)
        self.responsiveness = {
            r["institution_id"]: domain.responsiveness_of(r["leads"], r["contacted"], r["decided"], r["approved"],
                                                          list(r["contact_seconds"]))
            for r in rows
        }
        self.subscriptions = tuple(mapping.subscription_from_proto(docking_pb2.Subscription.FromString(b))
                                   for b in await store.subscriptions(self.pool))
        learning = self._learning
        slas, policies = await institutions.contact_slas(self.pool), await institutions.contact_policies(self.pool)
        if learning != self._learning:  # this worker stored one meanwhile: keep it, read them next time
            return False
        self.contact_slas, self.contact_policies = slas, policies
        return True

    async def follow(self, every: float = 2.0) -> None:
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - the database may be restarting
                logger.warning("could not refresh responsiveness and subscriptions", error=repr(err))
            await asyncio.sleep(every)


# -- new demands, in batches ----------------------------------------------------------------------------


@dataclass
class DemandMatcher:
    """Matches batches of ``DemandAccepted``: every demand planned by the pure core, then the
    batch stored in one round trip, one transaction (inbox claims, match records, open demands,
    leads, outbox: :func:`store.record_match_batch`).

    A product changed after a batch was planned and before its open demands are held has not met
    them, nor has its reverse join (run on the demands held then): it is joined with them once they
    are held (or, if that fails, queued for the reverse join again, which retries until it passes)."""

    pool: asyncpg.Pool
    view: domain.CatalogView
    metrics: Metrics
    schema: str
    standing: Standing
    open_demands: OpenDemandsView
    reverse: ReverseJoin

    async def __call__(self, batch: Sequence[codec.Envelope]) -> Finish | None:
        """Match ``DemandAccepted`` records read from the topic (each knows its partition); a demand
        without an id is a :class:`codec.PoisonMessage` (dead-lettered with the reason). Events
        handled before, and demands matched before under another event id, change nothing.

        Returns the rest of the work, which the consumer runs while this plans the next batch: the
        batch's transaction, then the demands it kept open held in memory."""
        now = codec.now()
        now_s = int(now.timestamp())
        mark = self.view.applied
        plans: dict[str, tuple[int, demand_pb2.Demand, domain.Demand, domain.Plan]] = {}
        for n, env in enumerate(batch):
            if n % PLAN_SLICE == 0:
                await asyncio.sleep(0)  # the batch before is stored meanwhile: let its transaction go on
            assert isinstance(env.message, demand_events.DemandAccepted)
            accepted = env.message.demand
            if not accepted.demand_id:
                raise codec.PoisonMessage("demand.demand_id is required")
            if accepted.demand_id in plans:
                continue  # the same demand twice in one batch: the first one counts
            d = mapping.demand_from_proto(accepted)
            plans[accepted.demand_id] = (n, accepted, d, domain.plan(
                self.view, d, subscriptions=self.standing.subscriptions,
                responsiveness=self.standing.responsiveness, now=now_s))
        if not plans:
            return None
        matches: list[store.MatchRow] = []
        open_rows: list[store.OpenDemandRow] = []
        new_leads: list[mapping.EncodedLead] = []
        events: list[tuple[str, outbox.Encoded]] = []
        for demand_id, (n, accepted, d, p) in plans.items():
            matches.append(store.MatchRow(demand_id, accepted.request.enterprise_uscc, len(p.result.picks),
                                          p.result.candidates_considered, p.result.explanation))
            leads = [_lead(Issue(accepted, pick, origin), now, self.standing)
                     for pick, origin in zip(p.result.picks, p.origins, strict=True)]
            new_leads += leads
            if leads:
                demand_bytes = mapping.demand_part(accepted)
                events += [(demand_id, _lead_issued(lead, demand_bytes)) for lead in leads]
            events.append((demand_id, _demand_matched(matching_events.DemandMatched(
                demand_id=demand_id, enterprise_uscc=accepted.request.enterprise_uscc,
                no_match_explanation=p.result.explanation, candidates_considered=p.result.candidates_considered,
                hints=mapping.hints_proto(p.result.hints), rules_version=domain.RULES_VERSION,
            ), leads, ids.event_id("demand-matched", demand_id))))
            if not d.consent_to_share or d.docking_mode == domain.ENTERPRISE_ACTIVE:
                continue  # nothing may ever be added to it: it is not kept open
            valid_until = accepted.request.valid_until.ToDatetime(tzinfo=now.tzinfo) \
                if accepted.request.HasField("valid_until") else None
            open_rows.append(store.OpenDemandRow(
                demand_id=demand_id, part=batch[n].partition, demand=accepted.SerializeToString(),
                docking_mode=d.docking_mode, consent=d.consent_to_share, active_leads=len(leads),
                tried=[lead.institution_id for lead in leads], valid_until=valid_until, matched_at=now,
            ))

        async def finish() -> None:
            fresh = await store.record_match_batch(  # deterministic ids: a replay stores nothing
                self.pool, consumer=DEMANDS_CONSUMER, events={batch[n].event_id: k for k, (n, *_) in plans.items()},
                matches=matches, open_rows=open_rows, leads=new_leads, outbox_events=events,
                rules_version=domain.RULES_VERSION, now=now, schema=self.schema)
            held: list[domain.OpenDemand] = []
            for row in open_rows:
                if row.demand_id in fresh:
                    held.append(domain.OpenDemand(
                        plans[row.demand_id][2], active_leads=row.active_leads, tried=frozenset(row.tried),
                        matched_at=now_s, valid_until=int(row.valid_until.timestamp()) if row.valid_until else 0))
                    self.open_demands.put(row.part, held[-1])
            await self._join_late_products(mark, held)
            todo = {k: v for k, v in plans.items() if k in fresh}
            wall = time.time()
            for n, _, _, p in todo.values():
                self.metrics.demand_to_lead.observe(max(0.0, wall - batch[n].occurred_at.timestamp()))
                if p.result.picks:
                    for origin in p.origins:
                        self.metrics.leads_issued.labels(origin.lower()).inc()
                else:
                    self.metrics.demands_unmatched.inc()

        return finish

    async def _join_late_products(self, mark: int, held: Sequence[domain.OpenDemand]) -> None:
        for product in self.view.applied_since(mark) if held else ():
            try:
                await self.reverse.join(product, held)
            except Exception as err:  # noqa: BLE001 - the batch is stored: joined later, with every held demand
                logger.warning("late product queued for the reverse join again", product_id=product.product_id,
                               error=repr(err))
                self.reverse.notify(product)


# -- the reverse join: a new or changed product against the open demands -----------------------------------


@dataclass
class ReverseJoin:
    """Matches each new or changed product against the open demands this worker holds (those of
    its partitions of the demand topic), as soon as the catalog view applies it."""

    pool: asyncpg.Pool
    view: domain.CatalogView
    schema: str
    standing: Standing
    open_demands: OpenDemandsView
    metrics: Metrics
    queue: asyncio.Queue[domain.Product] = field(default_factory=asyncio.Queue)
    joined: int = 0

    def notify(self, product: domain.Product) -> None:
        self.queue.put_nowait(product)

    async def run(self) -> None:
        while True:
            product = await self.queue.get()
            while True:
                try:
                    await self.join(product)
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as err:  # noqa: BLE001 - retried: a product change is never skipped
                    logger.warning("reverse join failed; retrying", product_id=product.product_id, error=repr(err))
                    await asyncio.sleep(0.5)

    async def join(self, product: domain.Product, demands: Sequence[domain.OpenDemand] | None = None) -> int:
        """Leads for ``product`` on the open demands it fits; returns how many were issued."""
        now = codec.now()
        now_s = int(now.timestamp())
        began = time.perf_counter()
        pool = self.open_demands.values() if demands is None else list(demands)
        resp = self.standing.responsiveness.get(product.institution_id)
        pairs: list[tuple[domain.OpenDemand, domain.Pick]] = []
        for start in range(0, len(pool), 20_000):  # let the demand agent in between slices
            pairs += domain.reverse_join(product, pool[start:start + 20_000], responsiveness=resp, now=now_s)
            await asyncio.sleep(0)
        joined = time.perf_counter() - began
        if not pairs:
            logger.info("reverse join", product_id=product.product_id, open_demands=len(pool), fits=0,
                        join_seconds=round(joined, 4))
            return 0
        issued: list[mapping.EncodedLead] = []
        for start in range(0, len(pairs), 1000):
            chunk = pairs[start:start + 1000]
            async with self.pool.acquire() as conn, conn.transaction():
                rows = await store.lock_open_demands(conn, [od.demand.demand_id for od, _ in chunk])
                issues = []
                for od, pick in chunk:
                    row = rows.get(od.demand.demand_id)
                    if row is None or not row.open:
                        continue
                    accepted, fresh = from_row(row)
                    if fresh.room(now=now_s) <= 0 or product.institution_id in fresh.tried:
                        continue  # the row is the truth; the memory was behind
                    issues.append(Issue(accepted, replace(pick, rank=fresh.active_leads + 1), domain.ORIGIN_MATCH))
                issued += await add_leads(conn, issues, standing=self.standing, schema=self.schema, now=now)
        for lead in issued:
            self.open_demands.lead_added(lead.demand_id, lead.institution_id)
        logger.info("reverse join", product_id=product.product_id, open_demands=len(pool), fits=len(pairs),
                    issued=len(issued), join_seconds=round(joined, 4),
                    total_seconds=round(time.perf_counter() - began, 4))
        self.metrics.leads_issued.labels("reverse_join").inc(len(issued))
        self.joined += len(issued)
        return len(issued)

    async def catch_up(self, loaded: Sequence[domain.OpenDemand], margin: int = 5) -> int:
        """After partitions were assigned: join the products changed since each loaded demand was
        first matched (a change seen while no worker held the demand is not lost)."""
        if not loaded:
            return 0
        since = min(od.matched_at for od in loaded) - margin
        issued = 0
        for product in self.view.changed_after(since):
            issued += await self.join(product, [od for od in loaded
                                                if od.matched_at - margin < product.updated_at])
        return issued


# -- re-matching and the demand's life cycle -------------------------------------------------------------


async def rematch(conn: asyncpg.Connection, demand_id: str, origin: str, *, view: domain.CatalogView,
                  standing: Standing, schema: str, now: datetime) -> list[mapping.EncodedLead]:
    """The demand's next-best candidates, excluding every institution tried (in the caller's
    transaction, which locks the demand's row)."""
    rows = await store.lock_open_demands(conn, [demand_id])
    row = rows.get(demand_id)
    if row is None or not row.open:
        return []
    accepted, od = from_row(row)
    picks = domain.rematch(view, od, responsiveness=standing.responsiveness, now=int(now.timestamp()))
    return await add_leads(conn, [Issue(accepted, pick, origin) for pick in picks], standing=standing, schema=schema,
                           now=now)


_INACTIVE = {"DECLINED": domain.ORIGIN_REMATCH, "EXPIRED": domain.ORIGIN_REROUTE, "SLA_BREACHED": domain.ORIGIN_REROUTE,
             "WITHDRAWN": ""}


@dataclass
class LeadOutcomes:
    """Lead status changes (from the demand service) and missed contact clocks (from the notifier):
    the institution's record, the demand's active count, and a re-match when a lead drops out."""

    pool: asyncpg.Pool
    view: domain.CatalogView
    standing: Standing
    open_demands: OpenDemandsView
    schema: str
    metrics: Metrics

    async def status_changed(self, env: codec.Envelope) -> None:
        """``LeadStatusChanged``."""
        msg = env.message
        lead = msg.lead  # type: ignore[attr-defined]
        status = lead_pb2.LeadStatus.Name(lead.status).removeprefix("LEAD_STATUS_")
        at = msg.change.at.ToDatetime(tzinfo=codec.now().tzinfo) if msg.change.HasField("at") else codec.now()  # type: ignore[attr-defined]
        await self._apply(env.event_id, LEAD_STATUS_CONSUMER, lead.lead_id, status, at,
                          contacted_at=lead.contact.contacted_at.ToDatetime(tzinfo=at.tzinfo)
                          if lead.HasField("contact") and lead.contact.HasField("contacted_at") else at)

    async def sla_breached(self, env: codec.Envelope) -> None:
        """``LeadSlaBreached``."""
        msg = env.message
        at = msg.breached_at.ToDatetime(tzinfo=codec.now().tzinfo) if msg.HasField("breached_at") else codec.now()  # type: ignore[attr-defined]
        await self._apply(env.event_id, SLA_CONSUMER, msg.lead_id, "SLA_BREACHED", at)  # type: ignore[attr-defined]

    async def _apply(self, event_id: str, consumer: str, lead_id: str, status: str, at: datetime, *,
                     contacted_at: datetime | None = None) -> None:
        now = codec.now()
        async with self.pool.acquire() as conn, conn.transaction():
            if not await store.claim_events(conn, consumer, [event_id]):
                return
            state = await store.lead_state(conn, lead_id)
            if state is None:
                return  # not a lead the matcher issued (e.g. a roadshow intent)
            if status == "CONTACTED" and state.status not in ("CONTACTED",):
                seconds = max(0, int(((contacted_at or at) - state.created_at).total_seconds()))
                await store.record_outcome(conn, state.institution_id, contact_seconds=seconds)
            elif status == "SLA_BREACHED" and state.active:
                await store.record_outcome(conn, state.institution_id, breached=True)
            elif status in ("APPROVED", "DECLINED") and state.status not in ("APPROVED", "DECLINED", "DISBURSED"):
                await store.record_outcome(conn, state.institution_id, decided=True, approved=status == "APPROVED")
            drops = status in _INACTIVE and state.active
            await store.set_lead_status(conn, lead_id, status, state.active and not drops)
            leads: list[mapping.EncodedLead] = []
            if drops:
                await store.release_lead(conn, state.demand_id)
                self.open_demands.lead_dropped(state.demand_id)
                if _INACTIVE[status]:
                    leads = await rematch(conn, state.demand_id, _INACTIVE[status], view=self.view,
                                          standing=self.standing, schema=self.schema, now=now)
        for lead in leads:
            self.open_demands.lead_added(lead.demand_id, lead.institution_id)
        if leads:
            self.metrics.leads_issued.labels(domain.ORIGIN_REMATCH.lower() if status == "DECLINED"
                                             else domain.ORIGIN_REROUTE.lower()).inc(len(leads))

    async def demand_status_changed(self, env: codec.Envelope) -> None:
        """``DemandStatusChanged``: a demand funded, closed, withdrawn or expired is no longer open."""
        msg = env.message
        status = demand_pb2.DemandStatus.Name(msg.change.status).removeprefix("DEMAND_STATUS_")  # type: ignore[attr-defined]
        if status not in CLOSED_DEMAND_STATUSES:
            return
        async with self.pool.acquire() as conn, conn.transaction():
            if not await store.claim_events(conn, DEMAND_STATUS_CONSUMER, [env.event_id]):
                return
            await store.close_demand(conn, msg.demand_id, status.lower())  # type: ignore[attr-defined]
        self.open_demands.remove(msg.demand_id)  # type: ignore[attr-defined]


# -- institution-active docking ------------------------------------------------------------------------------


@dataclass
class Docking:
    """Standing subscriptions, the anonymised pool of open demands, and claims."""

    pool: asyncpg.Pool
    view: domain.CatalogView
    standing: Standing
    open_demands: OpenDemandsView
    schema: str
    ready: asyncio.Event  # set once the contact SLAs are learnt: leads can be dated

    async def register(self, sub: docking_pb2.Subscription) -> docking_pb2.Subscription:
        v = errors.Violations()
        v.check(topics.valid_institution_id(sub.institution_id), "subscription.institution_id",
                "must be a valid institution id")
        p = self.view.get(sub.product_id)
        v.check(p is not None and p.institution_id == sub.institution_id and p.status == domain.ACTIVE,
                "subscription.product_id", "must be an active product of the institution")
        v.raise_if_any()
        domain.validate_criteria([mapping.requirement_from_proto(c) for c in sub.criteria], "subscription.criteria")
        out = docking_pb2.Subscription()
        out.CopyFrom(sub)
        content = sub.SerializeToString(deterministic=True)
        out.subscription_id = sub.subscription_id or ids.stable_id("subscription", sub.institution_id,
                                                                   content.hex())
        out.created_at.FromDatetime(codec.now())
        await store.save_subscription(self.pool, out.subscription_id, out.institution_id, out.SerializeToString())
        await self.standing.refresh()
        return out

    async def list(self, institution_id: str) -> list[docking_pb2.Subscription]:
        return [docking_pb2.Subscription.FromString(b) for b in await store.subscriptions(self.pool, institution_id)]

    async def delete(self, subscription_id: str, institution_id: str) -> None:
        if not await store.delete_subscription(self.pool, subscription_id, institution_id):
            raise errors.NotFound(f"subscription {subscription_id} of {institution_id} not found")
        await self.standing.refresh()

    async def open_pool(self, institution_id: str, limit: int) -> list[docking_pb2.AnonymisedDemand]:
        """Open demands with room that fit one of the institution's products, anonymised."""
        own = [p for p in self.view.active() if p.institution_id == institution_id]
        if not own:
            return []
        now_s = int(time.time())
        out = []
        for row in await store.pool_demands(self.pool, 5000):
            _, od = from_row(row)
            pick = domain.pool_fit(self.view, od, institution_id, own, now=now_s)
            if pick is not None:
                out.append(mapping.anonymised(od.demand, od.active_leads, pick))
                if len(out) >= limit:
                    break
        return out

    async def claim(self, institution_id: str, demand_id: str, product_id: str) -> lead_pb2.Lead:
        v = errors.Violations()
        v.check(bool(institution_id), "institution_id", "is required")
        v.check(bool(demand_id), "demand_id", "is required")
        v.raise_if_any()
        if not self.ready.is_set():
            raise errors.Unavailable("this matcher worker is starting: it does not know the contact SLAs its leads"
                                     " are dated by yet; try again in a few seconds")
        now = codec.now()
        async with self.pool.acquire() as conn, conn.transaction():
            row = (await store.lock_open_demands(conn, [demand_id])).get(demand_id)
            if row is None or not row.open or not row.consent or row.docking_mode == domain.ENTERPRISE_ACTIVE:
                raise errors.NotFound(f"no open demand {demand_id} in the pool")
            accepted, od = from_row(row)
            pick = domain.claim(self.view, od, institution_id, product_id,
                                responsiveness=self.standing.responsiveness.get(institution_id),
                                now=int(now.timestamp()))
            if isinstance(pick, str):
                raise errors.FailedPrecondition(pick)
            leads = await add_leads(conn, [Issue(accepted, pick, domain.ORIGIN_CLAIMED)], standing=self.standing,
                                    schema=self.schema, now=now)
        for lead in leads:
            self.open_demands.lead_added(lead.demand_id, lead.institution_id)
        return leads[0].proto()
