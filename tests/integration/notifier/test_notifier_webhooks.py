"""Webhook deliveries on the real broker and PostgreSQL, to real HTTP servers on loopback: signed,
retried with backoff, dead-lettered after the limit, never blocked by another webhook, never sent
twice for a replayed event."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from institution_keys import Metadata, as_institution, publish_institution
from notifier_support import INSTITUTION, Endpoints, Receiver, inbox, matched, uid, with_secret
from waiting import eventually

from finmesh.lead.v1 import lead_pb2
from finmesh.matching.v1 import events_pb2 as matching
from finmesh.notification.v1 import delivery_pb2 as dlv
from meshkit import apikeys, codec, topics
from meshkit.grpcserver import field_violations
from meshkit.lifecycle import Runtime
from tests.integration.matcher.matcher_support import publish

pytestmark = pytest.mark.integration


async def register(deliveries, inst: str, url: str, metadata: Metadata = ()) -> dlv.RegisterWebhookResponse:
    return await as_institution(deliveries.RegisterWebhook, dlv.RegisterWebhookRequest(institution_id=inst, url=url),
                                metadata)


async def first_webhook(deliveries, bootstrap: str, inst: str, url: str) -> dlv.RegisterWebhookResponse:
    """The institution registered (its InstitutionChanged published), then its first webhook, with its API key."""
    return await register(deliveries, inst, url, await publish_institution(bootstrap, inst))


async def listed(deliveries, inst: str, secret: str, ok, timeout: float = 15.0) -> list[dlv.Delivery]:
    async def fetch() -> list[dlv.Delivery]:
        reply = await deliveries.ListDeliveries(dlv.ListDeliveriesRequest(institution_id=inst, page_size=100),
                                                metadata=with_secret(secret))
        return list(reply.deliveries)
    return await eventually(fetch, ok, timeout)


async def test_fails_twice_then_succeeds_once_and_a_dead_one_blocks_nothing(
        notifier: Runtime, stub, deliveries, bootstrap: str) -> None:
    inst = f"bank-{uid()}"
    async with Endpoints() as server:
        flaky = Receiver(script=[500, 503])
        broken = Receiver(script=[500] * 100)
        first = await first_webhook(deliveries, bootstrap, inst, server.add("flaky", flaky))
        assert first.created and first.secret
        secret = flaky.secret = broken.secret = first.secret
        second = await register(deliveries, inst, server.add("broken", broken), with_secret(secret))
        assert second.created and not second.secret  # the secret is shown once

        msg = matched(f"d-{uid()}", f"E{uid()}", [inst])
        event_id = codec.new_event_id()
        await publish(bootstrap, topics.DEMANDS_MATCHED, msg, event_id=event_id)
        done = await listed(deliveries, inst, secret,
                            lambda ds: len(ds) == 2 and all(d.status != dlv.DELIVERY_STATUS_PENDING for d in ds))
        by_hook = {d.webhook_id: d for d in done}
        ok, dead = by_hook[first.webhook.webhook_id], by_hook[second.webhook.webhook_id]
        assert ok.status == dlv.DELIVERY_STATUS_DELIVERED and ok.attempts == 3
        assert [(a.ok, a.http_status) for a in ok.history] == [(False, 500), (False, 503), (True, 200)]
        assert dead.status == dlv.DELIVERY_STATUS_DEAD and dead.attempts == 4 and "HTTP 500" in dead.dead_reason

        # Exactly one successful call, correctly signed, carrying the notification.
        assert len(flaky.delivered()) == 1 and len(flaky.calls) == 3
        assert all(c["signed"] for c in flaky.calls + broken.calls)
        payload = json.loads(flaky.delivered()[0]["body"])
        assert payload["lead_id"] == msg.leads[0].lead_id and payload["kind"] == "lead.issued"
        assert {c["delivery"] for c in flaky.calls} == {ok.delivery_id}

        # The same event again (redelivery) and the same fact under a new event id: no new call.
        await publish(bootstrap, topics.DEMANDS_MATCHED, msg, event_id=event_id)
        await publish(bootstrap, topics.DEMANDS_MATCHED, msg)
        # A later lead of another demand is delivered while the broken webhook keeps failing.
        later = matched(f"d-{uid()}", f"E{uid()}", [inst])
        await publish(bootstrap, topics.DEMANDS_MATCHED, later)
        await eventually(lambda: _async(flaky.delivered), lambda cs: len(cs) >= 2)
        assert [json.loads(c["body"])["lead_id"] for c in flaky.delivered()] == [msg.leads[0].lead_id,
                                                                                later.leads[0].lead_id]
        assert len(await inbox(stub, INSTITUTION, inst, want=3, timeout=0.5)) == 2
    assert notifier.metrics.webhook_failures.labels("http_500")._value.get() >= 5


async def _async(fn):  # noqa: ANN001, ANN202
    return fn()


async def test_a_slow_webhook_times_out_and_does_not_hold_up_a_fast_one(deliveries, bootstrap: str) -> None:
    slow_inst, fast_inst = f"slow-{uid()}", f"fast-{uid()}"
    async with Endpoints() as server:
        slow, fast = Receiver(delay=3.0), Receiver()
        slow_secret = (await first_webhook(deliveries, bootstrap, slow_inst, server.add("slow", slow))).secret
        await first_webhook(deliveries, bootstrap, fast_inst, server.add("fast", fast))
        await publish(bootstrap, topics.DEMANDS_MATCHED, matched(f"d-{uid()}", f"E{uid()}", [slow_inst]))
        await publish(bootstrap, topics.DEMANDS_MATCHED, matched(f"d-{uid()}", f"E{uid()}", [fast_inst]))
        await eventually(lambda: _async(fast.delivered), lambda cs: len(cs) == 1)
        assert len(fast.delivered()) == 1
        [d] = await listed(deliveries, slow_inst, slow_secret,
                           lambda ds: len(ds) == 1 and ds[0].attempts >= 1)
        assert "no answer within" in d.history[0].error


async def test_a_backlog_for_one_webhook_neither_holds_up_another_nor_fails_unsent(deliveries, bootstrap: str
                                                                                    ) -> None:
    """40 deliveries for one endpoint that answers nothing until released: the other institution's
    delivery goes out meanwhile, and every attempt recorded for the backlog was a request the endpoint
    received (none timed out waiting for a connection)."""
    tag = uid()
    busy_inst, other_inst, backlog = f"busy-{tag}", f"other-{tag}", 40
    async with Endpoints() as server:
        busy, other = Receiver(gate=asyncio.Event()), Receiver()
        try:
            secret = (await first_webhook(deliveries, bootstrap, busy_inst, server.add("busy", busy))).secret
            await first_webhook(deliveries, bootstrap, other_inst, server.add("other", other))
            many = matching.DemandMatched(demand_id=f"d-{tag}", enterprise_uscc=f"E{tag}", candidates_considered=50)
            for i in range(backlog):
                many.leads.add(lead_id=f"l-{tag}-{i}", demand_id=many.demand_id, institution_id=busy_inst,
                               product_id=f"p-{i}", score=90, rank=i + 1, status=lead_pb2.LEAD_STATUS_CREATED)
            await publish(bootstrap, topics.DEMANDS_MATCHED, many)
            await eventually(lambda: _async(lambda: busy.arrived), lambda a: len(a) >= 1)
            await publish(bootstrap, topics.DEMANDS_MATCHED, matched(f"d2-{tag}", f"E2{tag}", [other_inst]))
            await eventually(lambda: _async(other.delivered), lambda cs: len(cs) == 1)
            assert len(other.delivered()) == 1
            assert len(busy.arrived) < backlog  # the other did not wait for the backlog
        finally:
            busy.gate.set()  # type: ignore[union-attr]
        done = await listed(deliveries, busy_inst, secret, lambda ds: len(ds) == backlog and all(
            d.status != dlv.DELIVERY_STATUS_PENDING for d in ds), timeout=30)
        assert len(done) == backlog and all(d.status != dlv.DELIVERY_STATUS_PENDING for d in done)
        assert sum(d.attempts for d in done) == len(busy.arrived)  # no attempt failed without being sent


async def test_a_deleted_webhook_gets_no_more_calls_and_its_deliveries_are_dead(deliveries, bootstrap: str
                                                                                ) -> None:
    inst = f"bank-{uid()}"
    async with Endpoints() as server:
        gone = Receiver(script=[500] * 20, gate=asyncio.Event())  # holds the first call open, then fails it
        reg = await first_webhook(deliveries, bootstrap, inst, server.add("gone", gone))
        try:
            await publish(bootstrap, topics.DEMANDS_MATCHED, matched(f"d-{uid()}", f"E{uid()}", [inst]))
            await eventually(lambda: _async(lambda: gone.arrived), lambda a: len(a) >= 1)
            deleted = await deliveries.DeleteWebhook(dlv.DeleteWebhookRequest(
                institution_id=inst, webhook_id=reg.webhook.webhook_id), metadata=with_secret(reg.secret))
            assert deleted.deleted
            calls_at_deletion = len(gone.arrived)
        finally:
            gone.gate.set()  # type: ignore[union-attr]
        # The call in flight at the deletion is recorded; the delivery stays DEAD and is not retried.
        [d] = await listed(deliveries, inst, reg.secret, lambda ds: len(ds) == 1 and ds[0].attempts == len(
            gone.arrived) and len(ds[0].history) == ds[0].attempts and ds[0].status == dlv.DELIVERY_STATUS_DEAD)
        assert d.status == dlv.DELIVERY_STATUS_DEAD and d.dead_reason == "webhook deleted"
        assert len(d.history) == d.attempts == calls_at_deletion == len(gone.arrived)


async def test_only_the_institution_registers_its_webhooks_with_its_api_key_then_its_secret(
        deliveries, bootstrap: str) -> None:
    inst, stranger = f"bank-{uid()}", f"bank-{uid()}"
    request = dlv.RegisterWebhookRequest(institution_id=inst, url="http://127.0.0.1:9/a")
    # Before its registration has reached the notifier: UNAVAILABLE (retry), not a refusal.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await deliveries.RegisterWebhook(request, metadata=((apikeys.HEADER, apikeys.new()),))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    key = await publish_institution(bootstrap, inst)
    stranger_key = await publish_institution(bootstrap, stranger)
    # No credentials, another institution's key or a forged one: refused, even for the first webhook.
    for metadata in ((), stranger_key, ((apikeys.HEADER, "fmk_forged"),), with_secret("guess")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await register(deliveries, inst, "http://127.0.0.1:9/a", metadata)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, metadata
    first = await register(deliveries, inst, "http://127.0.0.1:9/a", key)
    assert first.created and first.secret
    # From then on the secret works, and so does the key (the secret is not shown again).
    again = await register(deliveries, inst, "http://127.0.0.1:9/a", with_secret(first.secret))
    assert not again.created and again.webhook.webhook_id == first.webhook.webhook_id
    by_key = await register(deliveries, inst, "http://127.0.0.1:9/b", key)
    assert by_key.created and not by_key.secret
    for metadata in ((), with_secret("wrong"), stranger_key):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await register(deliveries, inst, "http://127.0.0.1:9/c", metadata)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # A rotated key (a new version of the institution): the old one stops working, the new one works.
    rotated = await publish_institution(bootstrap, inst, version=2)

    async def old_key_refused() -> bool:
        try:
            await register(deliveries, inst, "http://127.0.0.1:9/b", key)
            return False
        except grpc.aio.AioRpcError as e:
            return e.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await eventually(old_key_refused, bool, 15.0)
    assert not (await register(deliveries, inst, "http://127.0.0.1:9/b", rotated)).created

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await register(deliveries, "", "ftp://x")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(err.value)) == {"institution_id", "url"}
    deleted = await deliveries.DeleteWebhook(dlv.DeleteWebhookRequest(
        institution_id=inst, webhook_id=first.webhook.webhook_id), metadata=with_secret(first.secret))
    assert deleted.deleted
