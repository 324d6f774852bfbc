"""The matcher as a process on the real broker and PostgreSQL: the catalog's retire and filters,
hints for a demand nothing fits, the reverse join, re-matching after a decline or a missed contact
clock, closed demands, and the three docking modes.

Every product and enterprise of a test carries a special zone of the test's own, so tests sharing
the module's catalog never match each other's demands.
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import grpc
import pytest
from institution_keys import InstitutionAuth
from matcher_support import publish, read_until
from waiting import eventually

from finmesh.catalog.v1 import product_pb2 as catalog
from finmesh.common.v1 import finance_pb2 as finance
from finmesh.demand.v1 import demand_pb2
from finmesh.demand.v1 import events_pb2 as demand_events
from finmesh.enterprise.v1 import enterprise_pb2
from finmesh.lead.v1 import events_pb2 as lead_events
from finmesh.lead.v1 import lead_pb2
from finmesh.matching.v1 import docking_pb2 as dock
from finmesh.matching.v1 import docking_pb2_grpc as dock_grpc
from finmesh.matching.v1 import events_pb2 as matching_events
from meshkit import ids, topics
from meshkit.grpcserver import field_violations

pytestmark = pytest.mark.integration

YUAN = 100
USCC = "91350200MA2XYZ1234"


def tag() -> str:
    return uuid.uuid4().hex[:8]


def product(pid: str, inst: str, zone: str, **kw: object) -> catalog.Product:
    fields: dict[str, object] = dict(
        product_id=pid, institution_id=inst, name=f"Loan {pid}", product_type=catalog.PRODUCT_TYPE_LOAN,
        loan_category=finance.LOAN_CATEGORY_CREDIT, amount_min_fen=100_000 * YUAN,
        amount_max_fen=10_000_000 * YUAN, term_min_months=6, term_max_months=60, rate_min_bps=350,
        rate_max_bps=450, status=catalog.PRODUCT_STATUS_ACTIVE, special_zones=[zone],
    )
    fields.update(kw)
    return catalog.Product(**fields)


def accepted(demand_id: str, zone: str, **request: object) -> demand_events.DemandAccepted:
    fields: dict[str, object] = dict(
        enterprise_uscc=USCC, amount_fen=1_000_000 * YUAN, term_months=24, max_rate_bps=500,
        loan_category=finance.LOAN_CATEGORY_CREDIT, consent_to_share=True,
        docking_mode=demand_pb2.DOCKING_MODE_INTELLIGENT,
    )
    fields.update(request)
    return demand_events.DemandAccepted(demand=demand_pb2.Demand(
        demand_id=demand_id, request=demand_pb2.DemandRequest(**fields), channel=demand_pb2.CHANNEL_API,
        status=demand_pb2.DEMAND_STATUS_MATCHING,
        enterprise=enterprise_pb2.Enterprise(uscc=USCC, name="Xiamen Precision Parts", region_code="350203",
                                             key_industry=finance.KEY_INDUSTRY_AEROSPACE,
                                             srdi_tier=finance.SRDI_TIER_PROVINCIAL, special_zones=[zone]),
    ))


async def upsert(stub, p: catalog.Product) -> catalog.Product:
    return (await stub.UpsertProduct(catalog.UpsertProductRequest(product=p))).product


async def outcomes(bootstrap: str, demand_id: str, n: int, timeout: float = 15.0
                   ) -> list[matching_events.DemandMatched]:
    """The DemandMatched records of ``demand_id`` once there are ``n`` (or the time ran out)."""
    recs = await read_until(bootstrap, topics.DEMANDS_MATCHED.name, lambda rs: len(rs) >= n,
                            keep=lambda r: r.key == demand_id.encode(), timeout=timeout)
    return [matching_events.DemandMatched.FromString(r.value) for r in recs]


async def test_retire_and_list_filters(catalog_stub) -> None:
    run, zone = tag(), f"z-{tag()}"
    bank = f"bank-{run}"
    await upsert(catalog_stub, product(f"{run}-a", bank, zone, programme_tags=["tech-refi"],
                                       industries=[finance.KEY_INDUSTRY_AEROSPACE]))
    await upsert(catalog_stub, product(f"{run}-b", bank, zone, loan_category=finance.LOAN_CATEGORY_EQUIPMENT))
    await upsert(catalog_stub, product(f"{run}-c", bank, zone))

    async def listed(**kw: object) -> list[str]:
        reply = await catalog_stub.ListProducts(catalog.ListProductsRequest(institution_id=bank, **kw))
        return [p.product_id for p in reply.products]

    assert await listed(loan_category=finance.LOAN_CATEGORY_EQUIPMENT) == [f"{run}-b"]
    assert await listed(programme_tag="tech-refi") == [f"{run}-a"]
    # Open to biomedicine: the products without an industry list (b, c), not a (aerospace only).
    assert await listed(industry=finance.KEY_INDUSTRY_BIOMEDICINE) == [f"{run}-b", f"{run}-c"]

    retired = (await catalog_stub.RetireProduct(catalog.RetireProductRequest(
        product_id=f"{run}-c", institution_id=bank))).product
    assert retired.status == catalog.PRODUCT_STATUS_RETIRED and retired.version == 2
    assert await listed(status=catalog.PRODUCT_STATUS_RETIRED) == [f"{run}-c"]
    assert await listed(status=catalog.PRODUCT_STATUS_ACTIVE) == [f"{run}-a", f"{run}-b"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await catalog_stub.RetireProduct(catalog.RetireProductRequest(product_id=f"{run}-a", institution_id="other"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await catalog_stub.RetireProduct(catalog.RetireProductRequest(product_id=f"nope-{run}", institution_id=bank))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_bad_requirements_are_refused_naming_the_field(catalog_stub) -> None:
    bad = product(f"p-{tag()}", f"bank-{tag()}", "z", requirements=[
        catalog.Criterion(field="enterprise.srdi_tier", operator="gte", values=["GIANT"], critical=True),
        catalog.Criterion(field="enterprise.shoe_size", operator="eq", values=["42"]),
    ])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await upsert(catalog_stub, bad)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(err.value)) >= {"product.requirements[0].values", "product.requirements[1].field"}


async def test_no_match_carries_hints_then_a_new_product_joins_the_open_demand(catalog_stub, bootstrap: str) -> None:
    run, zone = tag(), f"z-{tag()}"
    for i in range(3):
        await upsert(catalog_stub, product(f"{run}-long{i}", f"long-{run}-{i}", zone, term_min_months=36,
                                           term_max_months=120))
    await upsert(catalog_stub, product(f"{run}-eq", f"eq-{run}", zone,
                                       collateral_required=finance.COLLATERAL_EQUIPMENT))
    demand_id = f"d-{run}"
    await publish(bootstrap, topics.DEMANDS_ACCEPTED, accepted(demand_id, zone, term_months=24))
    first = (await outcomes(bootstrap, demand_id, 1))[0]
    assert not first.leads and not first.additional
    assert [(h.criterion, h.suggestion, h.products) for h in first.hints] == [("term", "36", 3),
                                                                             ("collateral", "EQUIPMENT", 1)]
    assert first.hints[0].text == "a term of 36 months would make 3 products eligible"
    assert first.no_match_explanation.endswith(first.hints[0].text)

    # The reverse join: a product that fits, published later, becomes the open demand's lead at once.
    bank = f"new-{run}"
    fits = await upsert(catalog_stub, product(f"{run}-new", bank, zone))
    both = await outcomes(bootstrap, demand_id, 2)
    assert len(both) == 2
    added = both[1]
    assert added.additional and [lead.institution_id for lead in added.leads] == [bank]
    lead = added.leads[0]
    assert lead.lead_id == ids.lead_id(demand_id, fits.product_id) and lead.product_version == 1
    assert lead.origin == lead_pb2.LEAD_ORIGIN_INTELLIGENT_MATCH
    issued = await read_until(bootstrap, topics.lead_topic(bank).name, lambda rs: bool(rs), keep=lambda r: True)
    assert matching_events.LeadIssued.FromString(issued[0].value).lead.lead_id == lead.lead_id

    # A new version of the same product does not notify its institution again.
    await upsert(catalog_stub, product(f"{run}-new", bank, zone, rate_min_bps=300))
    await asyncio.sleep(1.5)
    assert len(await outcomes(bootstrap, demand_id, 3, timeout=1.0)) == 2
    again = await read_until(bootstrap, topics.lead_topic(bank).name, lambda rs: False, keep=lambda r: True,
                             timeout=1.0)
    assert len(again) == 1


async def test_reverse_join_respects_consent_and_the_cap(catalog_stub, bootstrap: str) -> None:
    run, zone = tag(), f"z-{tag()}"
    for i in range(3):
        await upsert(catalog_stub, product(f"{run}-{i}", f"b{i}-{run}", zone))
    full, private = f"full-{run}", f"private-{run}"
    await publish(bootstrap, topics.DEMANDS_ACCEPTED, accepted(full, zone))
    await publish(bootstrap, topics.DEMANDS_ACCEPTED, accepted(private, zone, term_months=100,
                                                               consent_to_share=False))
    assert len((await outcomes(bootstrap, full, 1))[0].leads) == 3
    assert not (await outcomes(bootstrap, private, 1))[0].leads
    await upsert(catalog_stub, product(f"{run}-x", f"x-{run}", zone, term_max_months=120))
    await asyncio.sleep(1.5)
    assert len(await outcomes(bootstrap, full, 2, timeout=1.0)) == 1  # three active leads: no room
    assert len(await outcomes(bootstrap, private, 2, timeout=1.0)) == 1  # no consent: no further sharing


def status_changed(lead: lead_pb2.Lead, status: int) -> lead_events.LeadStatusChanged:
    changed = lead_pb2.Lead()
    changed.CopyFrom(lead)
    changed.status = status  # type: ignore[assignment]
    msg = lead_events.LeadStatusChanged(lead=changed, previous=lead_pb2.LEAD_STATUS_DELIVERED,
                                        change=lead_pb2.LeadStatusChange(status=status, actor="test"), seq=3)
    msg.change.at.GetCurrentTime()
    return msg


async def test_decline_and_missed_clock_rematch_to_the_next_best_excluding_those_tried(
        catalog_stub, bootstrap: str) -> None:
    run, zone = tag(), f"z-{tag()}"
    banks = [f"r{i}-{run}" for i in range(5)]
    for i, bank in enumerate(banks):  # rates rise with i: the ranking is b0, b1, b2, then b3, b4
        await upsert(catalog_stub, product(f"{run}-{i}", bank, zone, rate_min_bps=300 + 10 * i,
                                           rate_max_bps=400 + 40 * i))
    demand_id = f"d-{run}"
    await publish(bootstrap, topics.DEMANDS_ACCEPTED, accepted(demand_id, zone))
    first = (await outcomes(bootstrap, demand_id, 1))[0]
    assert [lead.institution_id for lead in first.leads] == banks[:3]

    await publish(bootstrap, topics.LEAD_STATUS_CHANGED, status_changed(first.leads[0], lead_pb2.LEAD_STATUS_DECLINED))
    second = (await outcomes(bootstrap, demand_id, 2))[-1]
    assert second.additional and [lead.institution_id for lead in second.leads] == [banks[3]]
    assert second.leads[0].origin == lead_pb2.LEAD_ORIGIN_REMATCH_AFTER_DECLINE

    breach = matching_events.LeadSlaBreached(lead_id=first.leads[1].lead_id, demand_id=demand_id,
                                             institution_id=banks[1])
    breach.breached_at.GetCurrentTime()
    event_id = await publish(bootstrap, topics.LEAD_SLA_BREACHED, breach)
    third = (await outcomes(bootstrap, demand_id, 3))[-1]
    assert [lead.institution_id for lead in third.leads] == [banks[4]]
    assert third.leads[0].origin == lead_pb2.LEAD_ORIGIN_SLA_REROUTE

    # A replayed breach changes nothing; another decline finds no institution left untried.
    await publish(bootstrap, topics.LEAD_SLA_BREACHED, breach, event_id=event_id)
    await publish(bootstrap, topics.LEAD_STATUS_CHANGED, status_changed(first.leads[2], lead_pb2.LEAD_STATUS_DECLINED))
    await asyncio.sleep(1.5)
    assert len(await outcomes(bootstrap, demand_id, 4, timeout=1.0)) == 3


async def test_a_closed_demand_gets_no_more_leads(catalog_stub, bootstrap: str, database_url: str) -> None:
    run, zone = tag(), f"z-{tag()}"
    demand_id = f"d-{run}"
    await publish(bootstrap, topics.DEMANDS_ACCEPTED, accepted(demand_id, zone))
    assert not (await outcomes(bootstrap, demand_id, 1))[0].leads
    closed = demand_events.DemandStatusChanged(demand_id=demand_id, enterprise_uscc=USCC,
                                               change=demand_pb2.StatusChange(status=demand_pb2.DEMAND_STATUS_WITHDRAWN))
    await publish(bootstrap, topics.DEMAND_STATUS_CHANGED, closed)

    async def still_open() -> bool:  # until the matcher has closed it (a fixed wait lost the race under load)
        conn = await asyncpg.connect(database_url)
        try:
            return await conn.fetchval("SELECT open FROM matcher.open_demands WHERE demand_id = $1", demand_id)
        finally:
            await conn.close()
    assert await eventually(still_open, lambda is_open: is_open is False) is False
    await upsert(catalog_stub, product(f"{run}-late", f"late-{run}", zone))
    await asyncio.sleep(1.5)
    assert len(await outcomes(bootstrap, demand_id, 2, timeout=1.0)) == 1


async def test_enterprise_active_goes_straight_to_the_product_or_says_why(catalog_stub, bootstrap: str) -> None:
    run, zone = tag(), f"z-{tag()}"
    chosen = await upsert(catalog_stub, product(f"{run}-chosen", f"chosen-{run}", zone, rate_min_bps=480,
                                                rate_max_bps=490))
    await upsert(catalog_stub, product(f"{run}-better", f"better-{run}", zone, rate_min_bps=300))
    ok, no = f"ok-{run}", f"no-{run}"
    await publish(bootstrap, topics.DEMANDS_ACCEPTED, accepted(
        ok, zone, docking_mode=demand_pb2.DOCKING_MODE_ENTERPRISE_ACTIVE, product_id=chosen.product_id))
    await publish(bootstrap, topics.DEMANDS_ACCEPTED, accepted(
        no, zone, docking_mode=demand_pb2.DOCKING_MODE_ENTERPRISE_ACTIVE, product_id=chosen.product_id,
        term_months=100))
    got = (await outcomes(bootstrap, ok, 1))[0]
    assert [(lead.product_id, lead.origin) for lead in got.leads] == [(chosen.product_id,
                                                                       lead_pb2.LEAD_ORIGIN_ENTERPRISE_APPLIED)]
    refused = (await outcomes(bootstrap, no, 1))[0]
    assert not refused.leads
    assert "term: 100 months vs 6-60 months" in refused.no_match_explanation


async def test_subscriptions_pool_and_claims(matcher, catalog_stub, bootstrap: str, keys) -> None:  # noqa: ANN001
    run, zone = tag(), f"z-{tag()}"
    sub_bank, pool_bank = f"sub-{run}", f"pool-{run}"
    sub_product = await upsert(catalog_stub, product(f"{run}-s", sub_bank, zone))
    await upsert(catalog_stub, product(f"{run}-p", pool_bank, zone))
    async with grpc.aio.insecure_channel(matcher.address, interceptors=[InstitutionAuth(keys)]) as channel:
        subs = dock_grpc.SubscriptionServiceStub(channel)
        pool = dock_grpc.DemandPoolServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await subs.RegisterSubscription(dock.RegisterSubscriptionRequest(subscription=dock.Subscription(
                institution_id=sub_bank, product_id=sub_product.product_id,
                criteria=[catalog.Criterion(field="demand.amount_fen", operator="gte", values=["lots"])])))
        assert "subscription.criteria[0].values" in field_violations(err.value)
        registered = (await subs.RegisterSubscription(dock.RegisterSubscriptionRequest(
            subscription=dock.Subscription(institution_id=sub_bank, product_id=sub_product.product_id, criteria=[
                catalog.Criterion(field="enterprise.special_zones", operator="eq", values=[zone], critical=True),
                catalog.Criterion(field="demand.amount_fen", operator="gte", values=[str(500_000 * YUAN)]),
            ])))).subscription
        assert registered.subscription_id
        listed = (await subs.ListSubscriptions(dock.ListSubscriptionsRequest(institution_id=sub_bank))).subscriptions
        assert [s.subscription_id for s in listed] == [registered.subscription_id]

        # Institution-active: the subscription gets the demand; the pool bank sees it anonymised.
        demand_id = f"d-{run}"
        await publish(bootstrap, topics.DEMANDS_ACCEPTED, accepted(
            demand_id, zone, docking_mode=demand_pb2.DOCKING_MODE_INSTITUTION_ACTIVE))
        got = (await outcomes(bootstrap, demand_id, 1))[0]
        assert [(lead.institution_id, lead.origin) for lead in got.leads] == [
            (sub_bank, lead_pb2.LEAD_ORIGIN_INSTITUTION_CLAIMED)]
        seen = (await pool.ListOpenDemands(dock.ListOpenDemandsRequest(institution_id=pool_bank))).demands
        mine = [d for d in seen if d.demand_id == demand_id]
        assert len(mine) == 1 and mine[0].fitting_product_id == f"{run}-p" and mine[0].active_leads == 1
        assert USCC not in str(mine[0]) and "Xiamen" not in str(mine[0])
        lead = (await pool.ClaimDemand(dock.ClaimDemandRequest(institution_id=pool_bank,
                                                               demand_id=demand_id))).lead
        assert lead.institution_id == pool_bank and lead.origin == lead_pb2.LEAD_ORIGIN_INSTITUTION_CLAIMED
        assert lead.lead_id == ids.lead_id(demand_id, f"{run}-p") and lead.rank == 2
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await pool.ClaimDemand(dock.ClaimDemandRequest(institution_id=pool_bank, demand_id=demand_id))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        added = (await outcomes(bootstrap, demand_id, 2))[-1]
        assert added.additional and [x.lead_id for x in added.leads] == [lead.lead_id]

        await subs.DeleteSubscription(dock.DeleteSubscriptionRequest(subscription_id=registered.subscription_id,
                                                                     institution_id=sub_bank))
        assert not (await subs.ListSubscriptions(dock.ListSubscriptionsRequest(institution_id=sub_bank))).subscriptions
