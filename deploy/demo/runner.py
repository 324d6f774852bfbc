"""The demo against a running mesh: load the data set, feed demands, watch leads arrive.

Loading is idempotent (the data set is deterministic and every registration is by natural key);
demands carry a fresh request id per run. The live view is what a bank's system would see: an
aiokafka consumer subscribed by pattern to every institution's lead topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import re
import time
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from deploy.demo import dataset as ds
from finmesh.catalog.v1 import events_pb2 as catalog_events
from finmesh.catalog.v1 import product_pb2 as cat
from finmesh.catalog.v1 import product_pb2_grpc as cat_grpc
from finmesh.common.v1 import finance_pb2 as fin
from finmesh.demand.v1 import demand_pb2 as dem
from finmesh.demand.v1 import demand_pb2_grpc as dem_grpc
from finmesh.demand.v1 import events_pb2 as demand_events
from finmesh.enterprise.v1 import enterprise_pb2 as ent
from finmesh.enterprise.v1 import enterprise_pb2_grpc as ent_grpc
from finmesh.institution.v1 import institution_pb2 as ins
from finmesh.institution.v1 import institution_pb2_grpc as ins_grpc
from finmesh.lead.v1 import lead_pb2 as ld
from finmesh.lead.v1 import lead_pb2_grpc as ld_grpc
from finmesh.matching.v1 import events_pb2 as matching
from finmesh.receivable.v1 import receivable_pb2 as rcv
from finmesh.receivable.v1 import receivable_pb2_grpc as rcv_grpc
from finmesh.roadshow.v1 import roadshow_pb2 as rs
from finmesh.roadshow.v1 import roadshow_pb2_grpc as rs_grpc
from finmesh.subsidy.v1 import subsidy_pb2 as sub
from finmesh.subsidy.v1 import subsidy_pb2_grpc as sub_grpc
from meshkit import apikeys, codec, ids, operators, topics
from meshkit.kafka import ensure_topics, make_producer

T = TypeVar("T")

DEFAULT_RATE = 5.0
DEFAULT_ADDRESSES = {"demand": "127.0.0.1:7051", "matcher": "127.0.0.1:7052", "notifier": "127.0.0.1:7053",
                     "roadshow": "127.0.0.1:7054"}  # `make run`'s (deploy.embedded.supervisor.Ports)
LOAD_CONCURRENCY = 64
SUBMIT_CONCURRENCY = 64
RECENT_LEADS = 15
FACTOR = "changhong-factoring"  # finances the demo's supply-chain receivables
# First loans get 1% a year of their interest paid, up to 50,000 yuan a loan (the Xiamen model, for
# every pilot city here; a real fund would name its region prefixes, e.g. "3502").
DEMO_FUND = sub.Fund(fund_id="first-loans-pilot", name="First-loan interest subsidy (pilot)",
                     quota_fen=5_000_000 * 100, subsidy_rate_bps=100, max_grant_fen=50_000 * 100,
                     first_loans_only=True)
CALL_TIMEOUT = 15.0
PRODUCER_ID = "demo"


def lead_topic_pattern() -> str:
    """A regex for every institution's lead topic, derived from the registry's template."""
    prefix, suffix = topics.LEADS.name.split("{institution_id}")
    return f"^{re.escape(prefix)}[a-z0-9][a-z0-9-]*{re.escape(suffix)}$"


DEFAULT_KEYS_FILE = Path(".stack") / "demo-api-keys.json"


def read_keys(path: Path) -> dict[str, str]:
    """The API keys kept by an earlier run (institution id -> key); none if there is no file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


def write_keys(path: Path, keys: dict[str, str]) -> None:
    """Keep the keys for the next run, readable by this user only (a key is shown once, at registration)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(keys, f, indent=1, sort_keys=True)


@dataclass
class Target:
    """Where the mesh answers."""

    demand_addr: str = DEFAULT_ADDRESSES["demand"]
    matcher_addr: str = DEFAULT_ADDRESSES["matcher"]
    bootstrap_servers: str = "127.0.0.1:9092"
    console: Console = field(default_factory=Console)
    roadshow_addr: str = DEFAULT_ADDRESSES["roadshow"]
    keys_file: Path = DEFAULT_KEYS_FILE  # the demo institutions' API keys, kept for the next run
    operator_key: str = field(default="", repr=False)  # registering institutions, creating the fund

    @property
    def as_operator(self) -> tuple[tuple[str, str], ...]:
        """The metadata of an operator's call."""
        return ((operators.HEADER, self.operator_key),) if self.operator_key else ()

    @classmethod
    def of(cls, mesh: Any) -> Target:
        """From ``deploy.embedded``'s ``MeshInfo`` (``services``, ``grpc_address()``,
        ``kafka_bootstrap_servers``, ``console``) or any object with ``demand_addr``,
        ``matcher_addr``, ``bootstrap_servers`` and ``console``."""
        if isinstance(mesh, Target):
            return mesh
        console = getattr(mesh, "console", None) or Console()
        if hasattr(mesh, "services") and hasattr(mesh, "grpc_address"):
            return cls(mesh.grpc_address("demand"), mesh.grpc_address("matcher"), mesh.kafka_bootstrap_servers,
                       console, mesh.grpc_address("roadshow"), Path(mesh.data_dir) / DEFAULT_KEYS_FILE.name,
                       getattr(mesh, "operator_key", ""))
        bootstrap = getattr(mesh, "bootstrap_servers", None) or mesh.kafka_bootstrap_servers
        return cls(getattr(mesh, "demand_addr", cls.demand_addr), getattr(mesh, "matcher_addr", cls.matcher_addr),
                   bootstrap, console)


# -- what the view shows -------------------------------------------------------------------------


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by nearest rank, or None without values."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[min(len(ordered), max(1, math.ceil(q * len(ordered)))) - 1]


def content_key(d: dem.DemandRequest) -> tuple:
    """What identifies a demand we sent, as it comes back inside a lead (the demand service fills in
    defaults such as valid_until, so the whole message would not compare)."""
    return (d.enterprise_uscc, d.amount_fen, d.least_acceptable_amount_fen, d.term_months, d.max_rate_bps,
            d.loan_category, d.purpose)


def yuan(fen: int) -> str:
    return f"{fen // 100:,}"


def ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:,.0f} ms"


@dataclass
class LeadRow:
    at: datetime
    institution: str
    product: str
    score: int
    rank: int
    city: str
    industry: str
    amount_fen: int
    latency_s: float | None


@dataclass
class Stats:
    started: float = field(default_factory=time.monotonic)
    submitted: Counter = field(default_factory=Counter)  # by channel: grpc, portal
    failed: int = 0
    last_error: str = ""
    leads: int = 0
    foreign_leads: int = 0  # leads for demands this run did not send
    demands_with_leads: set[str] = field(default_factory=set)
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))
    recent: deque[LeadRow] = field(default_factory=lambda: deque(maxlen=RECENT_LEADS))
    sent_at: OrderedDict[tuple, float] = field(default_factory=OrderedDict)
    outcomes: Counter = field(default_factory=Counter)  # reported by the banks' desks: contacted, approved, ...
    subsidies: str = ""  # the demo fund's ledger, as SubsidyService shows it

    def sending(self, d: dem.DemandRequest) -> None:
        self.sent_at[content_key(d)] = time.monotonic()
        while len(self.sent_at) > 100_000:
            self.sent_at.popitem(last=False)

    def failure(self, what: str, err: BaseException) -> None:
        self.failed += 1
        if isinstance(err, grpc.aio.AioRpcError):
            self.last_error = f"{what}: {err.code().name} {err.details()}"
        else:
            self.last_error = f"{what}: {err!r}"

    def lead(self, issued: matching.LeadIssued, names: Names) -> None:
        now = time.monotonic()
        self.leads += 1
        sent = self.sent_at.get(content_key(issued.demand))
        latency = None
        if sent is None:
            self.foreign_leads += 1
        elif issued.lead.demand_id not in self.demands_with_leads:
            latency = now - sent  # demand → its first lead
            self.latencies.append(latency)
        if sent is not None:
            self.demands_with_leads.add(issued.lead.demand_id)
        e = issued.enterprise
        self.recent.appendleft(LeadRow(
            at=datetime.now().astimezone(), institution=names.institution(issued.lead.institution_id),
            product=names.product(issued.lead.product_id), score=issued.lead.score, rank=issued.lead.rank,
            city=e.city or e.region_code, industry=names.industry(e.key_industry),
            amount_fen=issued.demand.amount_fen, latency_s=latency,
        ))


class Names:
    """Display names from the data set, falling back to ids."""

    def __init__(self, data: ds.Dataset) -> None:
        self._institutions = {i.institution_id: i.name for i in data.institutions}
        self._products = {p.product_id: p.name for p in data.products}

    def institution(self, institution_id: str) -> str:
        return self._institutions.get(institution_id, institution_id)

    def product(self, product_id: str) -> str:
        """The product's name without its institution's (shown beside it) nor its Chinese name."""
        name = self._products.get(product_id, product_id)
        for inst in sorted(self._institutions.values(), key=len, reverse=True):
            if name.startswith(inst + " "):
                name = name[len(inst) + 1:]
                break
        return name.split(" (")[0]

    @staticmethod
    def industry(key: int) -> str:
        found = ds.INDUSTRY_BY_KEY.get(key)
        return found.label if found else "—"


def render(stats: Stats, rate: float, load_summary: str = "") -> Group:
    lat = list(stats.latencies)
    p50, p99 = percentile(lat, 0.5), percentile(lat, 0.99)
    total = sum(stats.submitted.values())
    matched_share = f" ({100 * len(stats.demands_with_leads) / total:.0f}%)" if total else ""
    line = Text.assemble(
        ("demands submitted ", "bold"), f"{total:,} ",
        (f"(gRPC {stats.submitted['grpc']:,} · portal {stats.submitted['portal']:,})", "dim"),
        ("   leads received ", "bold"), f"{stats.leads:,}",
        ("   demands with leads ", "bold"), f"{len(stats.demands_with_leads):,}{matched_share}",
        ("   demand→lead ", "bold"), f"p50 {ms(p50)} · p99 {ms(p99)}",
    )
    extra = Text(f"rate {rate:g}/s · up {time.monotonic() - stats.started:,.0f} s", style="dim")
    if load_summary:
        extra.append(f" · {load_summary}")
    if stats.outcomes:
        extra.append("\nbanks reported " + " · ".join(f"{k} {v:,}" for k, v in sorted(stats.outcomes.items()))
                     + (f"   {stats.subsidies}" if stats.subsidies else ""), style="dim")
    if stats.failed:
        extra.append(f"\nfailed calls {stats.failed:,} — last: {stats.last_error[:160]}", style="yellow")
    table = Table(expand=True, title="latest leads (as a bank's system receives them)", title_justify="left")
    for name, kw in (("time", {}), ("institution", {"ratio": 3, "min_width": 10}),
                     ("product", {"ratio": 4, "min_width": 12}),
                     ("score", {"justify": "right"}), ("city", {}), ("industry", {"ratio": 2, "min_width": 8}),
                     ("amount (yuan)", {"justify": "right"}), ("latency", {"justify": "right"})):
        table.add_column(name, overflow="ellipsis", no_wrap=True, **kw)
    for r in stats.recent:
        table.add_row(r.at.strftime("%H:%M:%S"), r.institution, r.product, f"{r.score} #{r.rank}", r.city,
                      r.industry, yuan(r.amount_fen), ms(r.latency_s) if r.latency_s is not None else "")
    if not stats.recent:
        table.add_row("", Text("waiting for leads …", style="dim"), "", "", "", "", "", "")
    return Group(Panel(Group(line, extra), title="finmesh demo", border_style="cyan"), table)


# -- loading -----------------------------------------------------------------------------------


@dataclass
class LoadResult:
    created: int = 0
    existing: int = 0
    failed: int = 0
    first_error: str = ""
    verb: str = ""  # e.g. "published": whether each was new is not known here

    def __str__(self) -> str:
        if self.verb:
            text = f"{self.created} {self.verb}"
        else:
            text = f"{self.created} new, {self.existing} already there"
        if self.failed:
            text += f", [red]{self.failed} failed[/] ({self.first_error})"
        return text


async def _retrying(call: Callable[[], Awaitable[T]], *, patience: float = 30.0) -> T:
    """``call()``, retried while the service is UNAVAILABLE (still starting), up to ``patience`` seconds."""
    deadline = time.monotonic() + patience
    delay = 0.2
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


class NoKey(Exception):
    """An item that cannot be loaded without an institution's API key this run does not have."""


async def _each(items: Iterable[T], fn: Callable[[T], Awaitable[bool]], concurrency: int) -> LoadResult:
    """Run ``fn`` (True = created, False = already there) over ``items``, ``concurrency`` at a time."""
    result = LoadResult()
    gate = asyncio.Semaphore(concurrency)

    async def one(item: T) -> None:
        async with gate:
            try:
                created = await _retrying(lambda: fn(item))
            except NoKey as err:
                result.failed += 1
                result.first_error = result.first_error or str(err)
                return
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.ALREADY_EXISTS:
                    result.existing += 1
                    return
                result.failed += 1
                result.first_error = result.first_error or f"{err.code().name}: {err.details()}"
                return
            if created:
                result.created += 1
            else:
                result.existing += 1

    await asyncio.gather(*(one(i) for i in items))
    return result


async def load(target: Target, data: ds.Dataset, producer: AIOKafkaProducer) -> dict[str, LoadResult]:
    """Institutions and enterprises through the demand service, products through the matcher's
    catalog or, for institutions with their own systems, as ``ProductPublished`` events."""
    out: dict[str, LoadResult] = {}
    async with grpc.aio.insecure_channel(target.demand_addr) as demand, \
            grpc.aio.insecure_channel(target.matcher_addr) as matcher:
        institutions = ins_grpc.InstitutionServiceStub(demand)
        enterprises = ent_grpc.EnterpriseServiceStub(demand)
        catalog = cat_grpc.CatalogServiceStub(matcher)

        keys = read_keys(target.keys_file)

        async def institution(i: ins.Institution) -> bool:
            reply = await institutions.RegisterInstitution(ins.RegisterInstitutionRequest(institution=i),
                                                           timeout=CALL_TIMEOUT, metadata=target.as_operator)
            if reply.api_key:  # shown once: when it registered
                keys[i.institution_id] = reply.api_key
            return reply.created

        async def enterprise(e: ent.Enterprise) -> bool:
            reply = await enterprises.RegisterEnterprise(ent.RegisterEnterpriseRequest(enterprise=e),
                                                         timeout=CALL_TIMEOUT)
            return reply.created

        async def product(p: cat.Product) -> bool:
            key = keys.get(p.institution_id)
            if key is None:
                raise NoKey(f"no API key for {p.institution_id}: registered by an earlier run whose keys "
                            f"({target.keys_file}) are gone")
            await catalog.UpsertProduct(cat.UpsertProductRequest(product=p), timeout=CALL_TIMEOUT,
                                        metadata=((apikeys.HEADER, key),))
            return True

        out["institutions"] = await _each(data.institutions, institution, 16)
        write_keys(target.keys_file, keys)
        out["enterprises"] = await _each(data.enterprises, enterprise, LOAD_CONCURRENCY)
        by_grpc = [p for p in data.products if p.institution_id not in data.kafka_publishers]
        out["products (gRPC)"] = await _each(by_grpc, product, LOAD_CONCURRENCY)
        out["products (gRPC)"].verb = "upserted"  # the catalog ignores an unchanged product

        async def fund(f: sub.Fund) -> bool:
            return (await sub_grpc.SubsidyServiceStub(demand).CreateFund(sub.CreateFundRequest(fund=f),
                                                                        timeout=CALL_TIMEOUT,
                                                                        metadata=target.as_operator)).created
        out["subsidy funds"] = await _each([DEMO_FUND], fund, 1)
    out["products (Kafka)"] = await publish_products(
        producer, [p for p in data.products if p.institution_id in data.kafka_publishers])
    return out


async def publish_products(producer: AIOKafkaProducer, products: list[cat.Product]) -> LoadResult:
    """Publish as an institution's system would; the event id is derived from the content, so
    publishing the same product again is recognised as a replay."""
    spec = topics.PRODUCTS_PUBLISHED
    result = LoadResult(verb="published")
    futures = []
    for p in products:
        msg = catalog_events.ProductPublished(product=p)
        payload = msg.SerializeToString(deterministic=True)
        event_id = ids.event_id("product-published", p.product_id, hashlib.sha256(payload).hexdigest())
        headers = codec.make_headers(spec.event_type, f"{p.institution_id}-system", event_id)
        futures.append(await producer.send(spec.name, value=payload, key=spec.key_of(msg), headers=headers))
    for outcome in await asyncio.gather(*futures, return_exceptions=True):
        if isinstance(outcome, BaseException):
            result.failed += 1
            result.first_error = result.first_error or repr(outcome)
        else:
            result.created += 1
    return result


async def lead_topics_table(target: Target) -> Table:
    """Each institution's lead topic, as a bank system discovers it: from its gRPC record."""
    table = Table(title="lead topics (InstitutionService.ListInstitutions → Institution.lead_topic)",
                  title_justify="left", show_edge=False, padding=(0, 1))
    for _ in range(3):
        table.add_column("institution", style="bold", no_wrap=True)
        table.add_column("lead topic", style="cyan", no_wrap=True)
    found: list[ins.Institution] = []
    async with grpc.aio.insecure_channel(target.demand_addr) as channel:
        stub = ins_grpc.InstitutionServiceStub(channel)
        token = ""
        while True:
            page = await stub.ListInstitutions(ins.ListInstitutionsRequest(page_size=200, page_token=token),
                                               timeout=CALL_TIMEOUT)
            found.extend(page.institutions)
            token = page.next_page_token
            if not token:
                break
    found.sort(key=lambda i: i.institution_id)
    rows = math.ceil(len(found) / 3)
    for r in range(rows):
        cells: list[str] = []
        for c in range(3):
            i = c * rows + r
            cells += [found[i].institution_id, found[i].lead_topic] if i < len(found) else ["", ""]
        table.add_row(*cells)
    return table


async def roadshows_table(target: Target) -> Table:
    """The roadshows the roadshow service scheduled by itself (one a month), from ``ListRoadshows``."""
    table = Table(title="SRDI roadshows (RoadshowService.ListRoadshows)", title_justify="left", show_edge=False,
                  padding=(0, 1))
    for name in ("month", "theme", "city", "held at (UTC)", "applications", "status"):
        table.add_column(name, no_wrap=True)
    async with grpc.aio.insecure_channel(target.roadshow_addr) as channel:
        page = await _retrying(lambda: rs_grpc.RoadshowServiceStub(channel).ListRoadshows(
            rs.ListRoadshowsRequest(page_size=6), timeout=CALL_TIMEOUT))
    for r in page.roadshows:
        table.add_row(r.month, r.theme, r.city, r.held_at.ToDatetime().strftime("%Y-%m-%d %H:%M"),
                      f"{r.applications_open_at.ToDatetime():%m-%d} → {r.applications_close_at.ToDatetime():%m-%d}",
                      rs.RoadshowStatus.Name(r.status).removeprefix("ROADSHOW_STATUS_").lower().replace("_", " "))
    return table


async def receivables_table(target: Target, data: ds.Dataset) -> Table:
    """A core enterprise's suppliers finance their receivables on it (ReceivableService): each
    supplier uploads an invoice, the core enterprise confirms it, the supplier applies to a factor,
    which approves and becomes the payee; one supplier uploads its invoice twice and the copy is
    blocked. Request ids carry the day, so a second run the same day finds what the first made."""
    core = next(e for e in data.enterprises if e.size == fin.ENTERPRISE_SIZE_LARGE)
    suppliers = [e for e in data.enterprises if e.size in (fin.ENTERPRISE_SIZE_SMALL, fin.ENTERPRISE_SIZE_MICRO)][:4]
    today = datetime.now(UTC).date()
    key = read_keys(target.keys_file).get(FACTOR, "")
    table = Table(title=f"supply-chain receivables on {core.name}, due in 60 days (ReceivableService)",
                  title_justify="left", show_edge=False, padding=(0, 1))
    table.add_column("supplier", max_width=16, no_wrap=True)
    for name in ("invoice", "yuan", "status", "payee"):
        table.add_column(name, no_wrap=True)
    async with grpc.aio.insecure_channel(target.demand_addr) as channel:
        stub = rcv_grpc.ReceivableServiceStub(channel)
        for n, supplier in enumerate(suppliers):
            invoice = rcv.Receivable(
                supplier_uscc=supplier.uscc, debtor_uscc=core.uscc, document_kind=rcv.DOCUMENT_KIND_INVOICE,
                document_number=f"INV-{today:%Y%m%d}-{n + 1:03d}", document_date=f"{today - timedelta(days=10)}",
                due_date=f"{today + timedelta(days=60)}",
                face_amount_fen=(n + 1) * 125_000_000,  # 1.25 million yuan a step
                uploaded_by=rcv.PARTY_SUPPLIER)
            x = (await stub.UploadReceivable(rcv.UploadReceivableRequest(
                request_id=f"demo-{today}-{n}", receivable=invoice), timeout=CALL_TIMEOUT)).receivable
            if x.status == rcv.RECEIVABLE_STATUS_PENDING_CONFIRMATION:
                x = (await stub.ConfirmReceivable(rcv.ConfirmReceivableRequest(
                    receivable_id=x.receivable_id, debtor_uscc=core.uscc), timeout=CALL_TIMEOUT)).receivable
            if x.status == rcv.RECEIVABLE_STATUS_CONFIRMED and key:
                await stub.RequestFinancing(rcv.RequestFinancingRequest(
                    receivable_id=x.receivable_id, supplier_uscc=supplier.uscc, institution_id=FACTOR,
                    amount_fen=x.confirmed_amount_fen * 9 // 10, kind=rcv.FINANCING_KIND_ASSIGNMENT),
                    timeout=CALL_TIMEOUT)
                x = (await stub.DecideFinancing(rcv.DecideFinancingRequest(
                    receivable_id=x.receivable_id, approve=True, rate_bps=420), timeout=CALL_TIMEOUT,
                    metadata=((apikeys.HEADER, key),))).receivable
            rows = [x]
            if n == 0:  # the same invoice again, its number typed another way
                copy = rcv.Receivable()
                copy.CopyFrom(invoice)
                copy.document_number = invoice.document_number.lower().replace("-", " ")
                rows.append((await stub.UploadReceivable(rcv.UploadReceivableRequest(
                    request_id=f"demo-{today}-{n}-copy", receivable=copy), timeout=CALL_TIMEOUT)).receivable)
            for r in rows:
                table.add_row(supplier.name, r.document_number, yuan(r.face_amount_fen),
                              rcv.ReceivableStatus.Name(r.status).removeprefix("RECEIVABLE_STATUS_").lower(),
                              r.current_payee)
    return table


# -- feeding demands and watching leads --------------------------------------------------------------


def portal_for(uscc: str) -> str:
    """Which portal files an enterprise's demand: Xiamen's service window for Xiamen firms."""
    region = uscc[2:8]
    return {"350200": "xiamen-window", "510700": "mianyang-portal"}.get(region, "national-web")


class Feeder:
    """Submits demands at ``rate`` per second: alternately by gRPC and as a portal's event."""

    def __init__(self, target: Target, generator: ds.DemandGenerator, stats: Stats, producer: AIOKafkaProducer,
                 rate: float, run_id: str) -> None:
        self.target = target
        self.generator = generator
        self.stats = stats
        self.producer = producer
        self.rate = rate
        self.run_id = run_id
        self._gate = asyncio.Semaphore(SUBMIT_CONCURRENCY)
        self._tasks: set[asyncio.Task] = set()

    async def run(self) -> None:
        async with grpc.aio.insecure_channel(self.target.demand_addr) as channel:
            stub = dem_grpc.DemandServiceStub(channel)
            interval = 1.0 / self.rate
            due = time.monotonic()
            n = 0
            try:
                while True:
                    n += 1
                    request = self.generator.next()
                    key = f"demo-{self.run_id}-{n}"
                    job = self._grpc(stub, key, request) if n % 2 else self._portal(key, request)
                    task = asyncio.create_task(job)
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                    due += interval
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
            finally:
                for t in self._tasks:
                    t.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _grpc(self, stub: dem_grpc.DemandServiceStub, key: str, request: dem.DemandRequest) -> None:
        async with self._gate:
            self.stats.sending(request)
            try:
                await stub.SubmitDemand(dem.SubmitDemandRequest(request_id=key, demand=request),
                                        timeout=CALL_TIMEOUT)
                self.stats.submitted["grpc"] += 1
            except grpc.aio.AioRpcError as err:
                self.stats.failure("SubmitDemand", err)

    async def _portal(self, key: str, request: dem.DemandRequest) -> None:
        spec = topics.PORTAL_DEMANDS
        portal = portal_for(request.enterprise_uscc)
        msg = demand_events.PortalDemandSubmitted(portal_id=portal, portal_demand_id=key, demand=request)
        async with self._gate:
            self.stats.sending(request)
            try:
                await self.producer.send_and_wait(spec.name, value=msg.SerializeToString(), key=spec.key_of(msg),
                                                  headers=codec.make_headers(spec.event_type, portal))
                self.stats.submitted["portal"] += 1
            except Exception as err:  # noqa: BLE001 - shown in the view; the demo carries on
                self.stats.failure("portal publish", err)


class BankDesk:
    """The banks' side of the demo: one lead in four is worked by its institution (with the key it
    got at registration): contacted, under review, then approved and disbursed, or declined. So
    the demo shows leads' outcomes, the demands they fund, and the subsidies granted on them."""

    def __init__(self, target: Target, stats: Stats) -> None:
        self.target = target
        self.stats = stats
        self.keys = read_keys(target.keys_file)
        self.queue: asyncio.Queue[matching.LeadIssued] = asyncio.Queue(maxsize=1000)

    def take(self, issued: matching.LeadIssued) -> None:
        lead = issued.lead
        if int(hashlib.sha256(lead.lead_id.encode()).hexdigest(), 16) % 4 == 0 and lead.institution_id in self.keys:
            with contextlib.suppress(asyncio.QueueFull):  # the desk is busy: the lead stays with its bank
                self.queue.put_nowait(issued)

    async def run(self, workers: int = 8) -> None:
        async with grpc.aio.insecure_channel(self.target.demand_addr) as channel:
            leads, funds = ld_grpc.LeadServiceStub(channel), sub_grpc.SubsidyServiceStub(channel)

            async def worker() -> None:
                while True:
                    await self._work(leads, await self.queue.get())

            tasks = [asyncio.create_task(self._watch_fund(funds)), *(asyncio.create_task(worker())
                                                                      for _ in range(workers))]
            try:
                await asyncio.gather(*tasks)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _work(self, stub: ld_grpc.LeadServiceStub, issued: matching.LeadIssued) -> None:
        lead, d = issued.lead, issued.demand
        approve = int(lead.lead_id[-1], 16) % 2 == 0
        now = Timestamp()
        now.GetCurrentTime()
        steps = [ld.LeadOutcome(status=ld.LEAD_STATUS_CONTACTED, contact=ld.Contact(method=ld.CONTACT_METHOD_PHONE)),
                 ld.LeadOutcome(status=ld.LEAD_STATUS_UNDER_REVIEW)]
        if approve:
            offer = ld.Offer(amount_fen=d.amount_fen, rate_bps=min(d.max_rate_bps or 450, 450),
                             term_months=d.term_months)
            steps += [ld.LeadOutcome(status=ld.LEAD_STATUS_APPROVED, offer=offer),
                      ld.LeadOutcome(status=ld.LEAD_STATUS_DISBURSED, disbursement=ld.Disbursement(
                          amount_fen=d.amount_fen, disbursed_at=now))]
        else:
            steps.append(ld.LeadOutcome(status=ld.LEAD_STATUS_DECLINED, decline=ld.Decline(
                reason_code=ld.DECLINE_REASON_INSUFFICIENT_COLLATERAL, text="collateral below the bank's ratio")))
        await asyncio.sleep(0.2)
        for outcome in steps:
            try:
                await stub.ReportLeadOutcome(ld.ReportLeadOutcomeRequest(lead_id=lead.lead_id, outcome=outcome),
                                             timeout=CALL_TIMEOUT, metadata=((apikeys.HEADER,
                                                                              self.keys[lead.institution_id]),))
            except grpc.aio.AioRpcError:
                return  # e.g. another bank funded the demand first: this lead was withdrawn
            self.stats.outcomes[ld.LeadStatus.Name(outcome.status).removeprefix("LEAD_STATUS_").lower()] += 1

    async def _watch_fund(self, stub: sub_grpc.SubsidyServiceStub) -> None:
        while True:
            await asyncio.sleep(2)
            with contextlib.suppress(grpc.aio.AioRpcError):
                f = (await stub.GetFund(sub.GetFundRequest(fund_id=DEMO_FUND.fund_id), timeout=CALL_TIMEOUT)).fund
                self.stats.subsidies = (f"subsidy fund {f.fund_id}: granted {yuan(f.reserved_fen + f.utilised_fen)} "
                                        f"of {yuan(f.quota_fen)} yuan")


class LeadWatcher:
    """A bank-side consumer of every lead topic (subscribed by pattern), from the moment it starts."""

    def __init__(self, bootstrap: str, stats: Stats, names: Names, run_id: str,
                 desk: BankDesk | None = None) -> None:
        self.stats = stats
        self.names = names
        self.desk = desk
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=f"demo-bank-{run_id}", client_id="demo-bank",
            enable_auto_commit=False, auto_offset_reset="latest", metadata_max_age_ms=3000,
        )

    async def start(self, timeout: float = 30.0) -> None:
        """Subscribe and wait until partitions are assigned (leads after this are all seen)."""
        self.consumer.subscribe(pattern=lead_topic_pattern())
        await self.consumer.start()
        deadline = time.monotonic() + timeout
        while not self.consumer.assignment() and time.monotonic() < deadline:
            await self._poll(200)

    async def run(self) -> None:
        while True:
            await self._poll(250)

    async def _poll(self, timeout_ms: int) -> None:
        batch = await self.consumer.getmany(timeout_ms=timeout_ms)
        for tp, records in batch.items():
            spec = topics.spec_for(tp.topic)
            for record in records:
                try:
                    env = codec.decode(spec, record.value, record.headers)
                except codec.PoisonMessage:
                    continue
                self.stats.lead(env.message, self.names)
                if self.desk is not None:
                    self.desk.take(env.message)

    async def stop(self) -> None:
        try:
            await asyncio.wait_for(self.consumer.stop(), 10)
        except Exception:  # noqa: BLE001 - closing at exit must not raise
            pass


async def run(mesh: Any, *, rate: float | None = None, seed: int = ds.DEFAULT_SEED,
              duration: float | None = None) -> Stats:
    """Load the demo data set into ``mesh``, then feed demands and show leads until cancelled
    (or for ``duration`` seconds). ``rate`` defaults to ``$DEMO_RATE`` or 5 demands a second."""
    target = Target.of(mesh)
    console = target.console
    rate = rate or float(os.environ.get("DEMO_RATE") or DEFAULT_RATE)
    run_id = uuid.uuid4().hex[:8]
    data = ds.build(seed)
    console.print(f"[bold]demo[/]: {len(data.institutions)} institutions, {len(data.products)} products, "
                  f"{len(data.enterprises):,} enterprises (seed {seed})")
    await ensure_topics(target.bootstrap_servers, topics.concrete())
    producer = make_producer(target.bootstrap_servers, PRODUCER_ID)
    await producer.start()
    stats = Stats()
    tasks: list[asyncio.Task] = []
    watcher: LeadWatcher | None = None
    try:
        began = time.monotonic()
        results = await load(target, data, producer)
        for what, result in results.items():
            console.print(f"  {what}: {result}")
        console.print(f"loaded in {time.monotonic() - began:.1f} s")
        console.print(await lead_topics_table(target))
        try:
            console.print(await roadshows_table(target))
        except grpc.aio.AioRpcError as err:  # the demo goes on without it
            console.print(f"[yellow]roadshows unavailable: {err.code().name}[/]")
        try:
            console.print(await receivables_table(target, data))
        except grpc.aio.AioRpcError as err:  # the demo goes on without it
            console.print(f"[yellow]receivables: {err.code().name} {err.details()}[/]")
        console.print("subscribing to the lead topics …")
        desk = BankDesk(target, stats)
        watcher = LeadWatcher(target.bootstrap_servers, stats, Names(data), run_id, desk)
        summary = (f"{len(data.institutions)} institutions · {len(data.products)} products · "
                   f"{len(data.enterprises):,} enterprises")
        await watcher.start()
        stats.started = time.monotonic()
        feeder = Feeder(target, ds.DemandGenerator(data, seed), stats, producer, rate, run_id)
        tasks = [asyncio.create_task(watcher.run(), name="demo-leads"),
                 asyncio.create_task(feeder.run(), name="demo-feed"),
                 asyncio.create_task(desk.run(), name="demo-bank-desk")]
        ends = time.monotonic() + duration if duration else None
        with Live(render(stats, rate, summary), console=console, refresh_per_second=4) as live:
            while ends is None or time.monotonic() < ends:
                for t in tasks:
                    if t.done():
                        t.result()  # a crashed task ends the demo with its error
                live.update(render(stats, rate, summary))
                await asyncio.sleep(0.25)
        return stats
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if watcher is not None:
            await watcher.stop()
        try:
            await asyncio.wait_for(producer.stop(), 10)
        except Exception:  # noqa: BLE001 - closing at exit must not raise
            pass
