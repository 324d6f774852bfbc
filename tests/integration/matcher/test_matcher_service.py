"""The matcher as a process on the real broker and PostgreSQL: the catalog API, the inbound
product topic with its dead-letter topic, and demands turned into leads exactly once."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import grpc
import pytest
from institution_keys import as_institution, publish_institution
from matcher_support import MatcherProcess, publish, read_until
from waiting import eventually

from finmesh.catalog.v1 import events_pb2 as catalog_events
from finmesh.catalog.v1 import product_pb2 as catalog
from finmesh.catalog.v1 import product_pb2_grpc as catalog_grpc
from finmesh.common.v1 import finance_pb2 as finance
from finmesh.demand.v1 import demand_pb2
from finmesh.demand.v1 import events_pb2 as demand_events
from finmesh.enterprise.v1 import enterprise_pb2
from finmesh.institution.v1 import events_pb2 as institution_events
from finmesh.institution.v1 import institution_pb2
from finmesh.matching.v1 import docking_pb2 as dock
from finmesh.matching.v1 import docking_pb2_grpc as dock_grpc
from finmesh.matching.v1 import events_pb2 as matching_events
from finmesh.notification.v1 import clock_pb2 as clock_pb
from finmesh.notification.v1 import events_pb2 as notification_events
from meshkit import apikeys, codec, ids, topics
from meshkit.grpcserver import field_violations

pytestmark = pytest.mark.integration

YUAN = 100


def tag() -> str:
    return uuid.uuid4().hex[:8]


def product(product_id: str, institution_id: str, **overrides: object) -> catalog.Product:
    fields: dict[str, object] = dict(
        product_id=product_id, institution_id=institution_id, name=f"Loan {product_id}",
        product_type=catalog.PRODUCT_TYPE_LOAN, loan_category=finance.LOAN_CATEGORY_CREDIT,
        amount_min_fen=100_000 * YUAN, amount_max_fen=10_000_000 * YUAN, term_min_months=6, term_max_months=60,
        rate_min_bps=350, rate_max_bps=600, status=catalog.PRODUCT_STATUS_ACTIVE,
    )
    fields.update(overrides)
    return catalog.Product(**fields)


async def upsert(stub, p: catalog.Product) -> catalog.Product:
    return (await stub.UpsertProduct(catalog.UpsertProductRequest(product=p))).product


async def test_only_an_institution_itself_changes_its_products_and_docks_demands(
        matcher: MatcherProcess, keys, bootstrap: str) -> None:  # noqa: ANN001
    """Without the interceptor that plays institutions' systems: the bare calls, with and without keys."""
    bank, other, newcomer = f"bank-{tag()}", f"other-{tag()}", f"new-{tag()}"
    own, others = await keys.of(bank), await keys.of(other)
    upsert_req = catalog.UpsertProductRequest(product=product(f"{bank}-loan", bank))
    async with grpc.aio.insecure_channel(matcher.address) as channel:
        stub = catalog_grpc.CatalogServiceStub(channel)
        pool = dock_grpc.DemandPoolServiceStub(channel)
        subs = dock_grpc.SubscriptionServiceStub(channel)
        calls = {
            "UpsertProduct": lambda md: stub.UpsertProduct(upsert_req, metadata=md),
            "RetireProduct": lambda md: stub.RetireProduct(catalog.RetireProductRequest(
                product_id=f"{bank}-loan", institution_id=bank), metadata=md),
            "ListOpenDemands": lambda md: pool.ListOpenDemands(dock.ListOpenDemandsRequest(institution_id=bank),
                                                               metadata=md),
            "ClaimDemand": lambda md: pool.ClaimDemand(dock.ClaimDemandRequest(institution_id=bank, demand_id="d"),
                                                       metadata=md),
            "ListSubscriptions": lambda md: subs.ListSubscriptions(dock.ListSubscriptionsRequest(institution_id=bank),
                                                                   metadata=md),
        }
        await as_institution(stub.UpsertProduct, upsert_req, own)  # the bank itself, once the matcher knows it
        for name, call in calls.items():
            for metadata in ((), others, ((apikeys.HEADER, "fmk_forged"),)):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call(metadata)
                assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, (name, metadata)
        # An institution whose registration has not reached the matcher yet: retry, not a refusal.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.UpsertProduct(catalog.UpsertProductRequest(product=product(f"{newcomer}-loan", newcomer)),
                                     metadata=((apikeys.HEADER, apikeys.new()),))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        # One announced by a release before key digests were published: told to rotate its key, then let in.
        legacy = f"old-{tag()}"
        await publish(bootstrap, topics.INSTITUTIONS_CHANGED, institution_events.InstitutionChanged(
            institution=institution_pb2.Institution(institution_id=legacy, name="Old", version=1), created=True))
        legacy_upsert = catalog.UpsertProductRequest(product=product(f"{legacy}-loan", legacy))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await as_institution(stub.UpsertProduct, legacy_upsert, ((apikeys.HEADER, apikeys.new()),))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "RotateApiKey" in err.value.details()
        rotated = await publish_institution(bootstrap, legacy, version=2)

        async def upserted() -> catalog.UpsertProductResponse | None:
            try:
                return await stub.UpsertProduct(legacy_upsert, metadata=rotated)
            except grpc.aio.AioRpcError as e:
                assert e.code() == grpc.StatusCode.FAILED_PRECONDITION  # until the new version arrives
                return None
        reply = await eventually(upserted, lambda r: r is not None)
        assert reply is not None and reply.product.version == 1
        retired = await stub.RetireProduct(catalog.RetireProductRequest(product_id=f"{bank}-loan", institution_id=bank),
                                           metadata=own)
        assert retired.product.status == catalog.PRODUCT_STATUS_RETIRED
        # Reading the catalog needs no key.
        assert (await stub.GetProduct(catalog.GetProductRequest(product_id=f"{bank}-loan"))).product.version == 2


async def test_upsert_refuses_invalid_products_naming_every_field(catalog_stub) -> None:
    bad = product("", "Bad Bank!", name="", loan_category=99, amount_min_fen=5, amount_max_fen=1,
                  term_min_months=0, term_max_months=400, rate_min_bps=700, rate_max_bps=600)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await upsert(catalog_stub, bad)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = field_violations(err.value)
    for name in ("product_id", "institution_id", "name", "loan_category", "amount_min_fen", "term_min_months",
                 "term_max_months", "rate_min_bps"):
        assert f"product.{name}" in fields, fields


async def test_upsert_versions_only_changed_content(catalog_stub, bootstrap: str) -> None:
    pid, bank = f"p-{tag()}", f"bank-{tag()}"
    first = await upsert(catalog_stub, product(pid, bank))
    assert first.version == 1
    same = await upsert(catalog_stub, product(pid, bank))
    assert same.version == 1
    changed = await upsert(catalog_stub, product(pid, bank, rate_min_bps=300))
    assert changed.version == 2
    got = (await catalog_stub.GetProduct(catalog.GetProductRequest(product_id=pid))).product
    assert got.version == 2 and got.rate_min_bps == 300
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await catalog_stub.GetProduct(catalog.GetProductRequest(product_id=f"missing-{tag()}"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # Each stored version is announced once on the catalog topic.
    changes = await read_until(
        bootstrap, topics.CATALOG_CHANGED.name, lambda recs: len(recs) >= 2,
        keep=lambda r: r.key == pid.encode(),
    )
    versions = sorted(catalog_events.ProductChanged.FromString(r.value).product.version for r in changes)
    assert versions == [1, 2]
    eids = {codec.header(r.headers, codec.EVENT_ID) for r in changes}
    assert eids == {ids.event_id("product-changed", pid, "1"), ids.event_id("product-changed", pid, "2")}


async def test_list_products_filters_by_institution_and_pages(catalog_stub) -> None:
    bank = f"bank-{tag()}"
    for i in range(5):
        await upsert(catalog_stub, product(f"{bank}-p{i}", bank))
    page1 = await catalog_stub.ListProducts(catalog.ListProductsRequest(institution_id=bank, page_size=3))
    assert [p.product_id for p in page1.products] == [f"{bank}-p{i}" for i in range(3)]
    page2 = await catalog_stub.ListProducts(catalog.ListProductsRequest(
        institution_id=bank, page_size=3, page_token=page1.next_page_token))
    assert [p.product_id for p in page2.products] == [f"{bank}-p3", f"{bank}-p4"]
    assert page2.next_page_token == ""


async def test_published_product_lands_in_catalog_and_bad_one_on_dlq(catalog_stub, bootstrap: str) -> None:
    good = product(f"p-{tag()}", f"bank-{tag()}")
    await publish(bootstrap, topics.PRODUCTS_PUBLISHED, catalog_events.ProductPublished(product=good))
    for _ in range(100):
        try:
            got = (await catalog_stub.GetProduct(catalog.GetProductRequest(product_id=good.product_id))).product
            break
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.1)
    else:
        raise AssertionError("the published product never reached the catalog")
    assert got.version == 1 and got.name == good.name

    bad = product(f"p-{tag()}", f"bank-{tag()}", term_min_months=0)
    await publish(bootstrap, topics.PRODUCTS_PUBLISHED, catalog_events.ProductPublished(product=bad))
    dead = await read_until(bootstrap, topics.PRODUCTS_PUBLISHED_DLQ.name, lambda recs: bool(recs),
                            keep=lambda r: r.key == bad.product_id.encode())
    assert dead, "the invalid product was not dead-lettered"
    assert "product.term_min_months" in codec.header(dead[0].headers, codec.DLQ_REASON)
    with pytest.raises(grpc.aio.AioRpcError):
        await catalog_stub.GetProduct(catalog.GetProductRequest(product_id=bad.product_id))


def demand_accepted(demand_id: str, **request: object) -> demand_events.DemandAccepted:
    fields: dict[str, object] = dict(
        enterprise_uscc="91350200MA2XYZ1234", amount_fen=1_000_000 * YUAN, term_months=24, max_rate_bps=500,
        loan_category=finance.LOAN_CATEGORY_CREDIT,
    )
    fields.update(request)
    return demand_events.DemandAccepted(demand=demand_pb2.Demand(
        demand_id=demand_id, request=demand_pb2.DemandRequest(**fields), channel=demand_pb2.CHANNEL_API,
        status=demand_pb2.DEMAND_STATUS_MATCHING,
        enterprise=enterprise_pb2.Enterprise(uscc="91350200MA2XYZ1234", name="Xiamen Precision Parts"),
    ))


async def test_demand_becomes_at_most_three_leads_once(catalog_stub, bootstrap: str, database_url: str) -> None:
    run = tag()
    banks = [f"bank-{run}-{c}" for c in "abcd"]
    # Bank a has two fitting products (only one may be picked); d's only product does not fit.
    await upsert(catalog_stub, product(f"{run}-a1", banks[0], rate_min_bps=300))
    await upsert(catalog_stub, product(f"{run}-a2", banks[0], rate_min_bps=320))
    await upsert(catalog_stub, product(f"{run}-b1", banks[1], rate_min_bps=380))
    await upsert(catalog_stub, product(f"{run}-c1", banks[2], rate_min_bps=400, rate_max_bps=700))
    await upsert(catalog_stub, product(f"{run}-d1", banks[3], term_max_months=12))
    demand_id = f"d-{run}"
    message = demand_accepted(demand_id, preferred_institution_ids=banks[:3])
    event_id = await publish(bootstrap, topics.DEMANDS_ACCEPTED, message)

    matched = await read_until(bootstrap, topics.DEMANDS_MATCHED.name, lambda recs: bool(recs),
                               keep=lambda r: r.key == demand_id.encode())
    assert matched, "no DemandMatched"
    outcome = matching_events.DemandMatched.FromString(matched[0].value)
    assert codec.header(matched[0].headers, codec.EVENT_ID) == ids.event_id("demand-matched", demand_id)
    assert 1 <= len(outcome.leads) <= 3
    institutions = [lead.institution_id for lead in outcome.leads]
    assert len(set(institutions)) == len(institutions) == 3
    assert banks[3] not in institutions
    assert [lead.rank for lead in outcome.leads] == [1, 2, 3]
    for lead in outcome.leads:
        assert lead.lead_id == ids.lead_id(demand_id, lead.product_id)
        assert lead.score == sum(c.points for c in lead.explanation)
        assert lead.contact_due_at.ToSeconds() - lead.created_at.ToSeconds() == 72 * 3600  # none set an SLA

    for lead in outcome.leads:
        issued = await read_until(bootstrap, topics.lead_topic(lead.institution_id).name,
                                  lambda recs: bool(recs), keep=lambda r: True)
        assert len(issued) == 1
        got = matching_events.LeadIssued.FromString(issued[0].value)
        assert got.lead.lead_id == lead.lead_id and got.demand.amount_fen == message.demand.request.amount_fen
        assert codec.header(issued[0].headers, codec.EVENT_ID) == ids.event_id("lead-issued", lead.lead_id)

    # Replays: the same event again, and the same demand under another event id.
    await publish(bootstrap, topics.DEMANDS_ACCEPTED, message, event_id=event_id)
    other = await publish(bootstrap, topics.DEMANDS_ACCEPTED, message)
    conn = await asyncpg.connect(database_url)
    try:
        for _ in range(100):
            if await conn.fetchval("SELECT count(*) FROM matcher.inbox WHERE event_id = $1", other):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the replay was not handled")
        rows = await conn.fetch("SELECT lead_id FROM matcher.leads WHERE demand_id = $1", demand_id)
    finally:
        await conn.close()
    assert sorted(r["lead_id"] for r in rows) == sorted(lead.lead_id for lead in outcome.leads)
    issued_again = await read_until(bootstrap, topics.lead_topic(banks[0]).name, lambda recs: False,
                                    keep=lambda r: True, timeout=1.5)
    assert len(issued_again) == 1


async def test_a_lead_is_due_by_the_sla_the_contact_clock_will_count(catalog_stub, bootstrap: str,
                                                                      database_url: str) -> None:
    run = tag()
    banks = [f"bank-{run}-{c}" for c in "efg"]
    for bank in banks:
        await upsert(catalog_stub, product(f"{run}-{bank[-1]}1", bank))
    # e: its own SLA of 24 h. f: the same, and a policy of 48 h for all its products. g: that policy,
    # and one of 12 h for the product the demand gets. Set as the demand and notifier services announce them.
    for bank in banks:
        await publish_institution(bootstrap, bank, sla_hours=24, version=2)
    # One no notifier would send (it refuses SLAs over 720 h): dead-lettered, the ones after it kept.
    policies = [(banks[0], "", 100_000), (banks[1], "", 48), (banks[2], "", 48), (banks[2], f"{run}-g1", 12)]
    for institution_id, product_id, hours in policies:
        policy = clock_pb.ContactPolicy(institution_id=institution_id, product_id=product_id, sla_hours=hours)
        policy.updated_at.GetCurrentTime()
        await publish(bootstrap, topics.CONTACT_POLICIES_CHANGED, notification_events.ContactPolicyChanged(
            policy=policy))
    conn = await asyncpg.connect(database_url)
    try:
        async def known() -> tuple[int, int]:
            return (await conn.fetchval("SELECT count(*) FROM matcher.institution_slas"
                                        " WHERE institution_id = ANY($1::text[]) AND sla_hours = 24", banks),
                    await conn.fetchval("SELECT count(*) FROM matcher.contact_policies"
                                        " WHERE institution_id = ANY($1::text[])", banks))
        assert await eventually(known, lambda n: n == (3, 3)) == (3, 3), "the matcher never had the SLAs"
        dead = await read_until(bootstrap, topics.CONTACT_POLICIES_CHANGED_DLQ.name, lambda recs: bool(recs),
                                keep=lambda r: r.key == banks[0].encode())
        assert dead and "policy.sla_hours" in codec.header(dead[0].headers, codec.DLQ_REASON)

        demand_id = f"d-{run}"
        await publish(bootstrap, topics.DEMANDS_ACCEPTED, demand_accepted(demand_id, preferred_institution_ids=banks))
        matched = await read_until(bootstrap, topics.DEMANDS_MATCHED.name, lambda recs: bool(recs),
                                   keep=lambda r: r.key == demand_id.encode())
        assert matched, "no DemandMatched"
        leads = matching_events.DemandMatched.FromString(matched[0].value).leads
        due = {lead.institution_id: (lead.contact_due_at.ToSeconds() - lead.created_at.ToSeconds()) // 3600
               for lead in leads}
        assert due == {banks[0]: 24, banks[1]: 48, banks[2]: 12}
        rows = await conn.fetch("SELECT institution_id, contact_due_at - created_at AS sla FROM matcher.leads"
                                " WHERE demand_id = $1", demand_id)
        assert {r["institution_id"]: r["sla"].total_seconds() // 3600 for r in rows} == due
    finally:
        await conn.close()


async def test_demand_nothing_fits_is_explained(catalog_stub, bootstrap: str) -> None:
    run = tag()
    demand_id = f"d-{run}"
    await publish(bootstrap, topics.DEMANDS_ACCEPTED, demand_accepted(demand_id, term_months=360,
                                                                      amount_fen=1, max_rate_bps=1))
    matched = await read_until(bootstrap, topics.DEMANDS_MATCHED.name, lambda recs: bool(recs),
                               keep=lambda r: r.key == demand_id.encode())
    outcome = matching_events.DemandMatched.FromString(matched[0].value)
    assert not outcome.leads
    assert outcome.no_match_explanation
    assert outcome.candidates_considered > 0


async def test_undecodable_demand_is_dead_lettered_and_the_next_one_matched(catalog_stub, bootstrap: str) -> None:
    run = tag()
    await publish(bootstrap, topics.DEMANDS_ACCEPTED, demand_accepted(f"bad-{run}"), value=b"\x0a\xff\xff\xff")
    good = f"d-{run}"
    await publish(bootstrap, topics.DEMANDS_ACCEPTED, demand_accepted(good, term_months=360, amount_fen=1,
                                                                      max_rate_bps=1))
    dead = await read_until(bootstrap, topics.DEMANDS_ACCEPTED_DLQ.name, lambda recs: bool(recs),
                            keep=lambda r: r.key == f"bad-{run}".encode())
    assert dead, "the undecodable demand was not dead-lettered"
    assert "not a valid finmesh.demand.v1.DemandAccepted" in codec.header(dead[0].headers, codec.DLQ_REASON)
    assert codec.header(dead[0].headers, codec.DLQ_ORIGIN).startswith(f"{topics.DEMANDS_ACCEPTED.name}/")
    matched = await read_until(bootstrap, topics.DEMANDS_MATCHED.name, lambda recs: bool(recs),
                               keep=lambda r: r.key == good.encode())
    assert matched, "the demand after the bad one was not matched"


async def test_demand_without_id_is_dead_lettered_and_its_batch_matched(catalog_stub, bootstrap: str) -> None:
    run = tag()
    good = f"d-{run}"
    event_id = await publish(bootstrap, topics.DEMANDS_ACCEPTED, demand_accepted(""))
    await publish(bootstrap, topics.DEMANDS_ACCEPTED, demand_accepted(good, term_months=360, amount_fen=1,
                                                                      max_rate_bps=1))
    dead = await read_until(bootstrap, topics.DEMANDS_ACCEPTED_DLQ.name, lambda recs: bool(recs),
                            keep=lambda r: codec.header(r.headers, codec.EVENT_ID) == event_id)
    assert dead, "the demand without an id was not dead-lettered"
    assert codec.header(dead[0].headers, codec.DLQ_REASON) == "demand.demand_id is required"
    matched = await read_until(bootstrap, topics.DEMANDS_MATCHED.name, lambda recs: bool(recs),
                               keep=lambda r: r.key == good.encode())
    assert matched, "the demand after the one without an id was not matched"


async def test_sigterm_stops_gracefully(matcher: MatcherProcess) -> None:
    """Last: the module's worker exits 0 on SIGTERM."""
    assert matcher.stop() == 0, matcher.logs()
