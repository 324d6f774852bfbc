"""Webhook deliveries on the real broker and PostgreSQL, to real HTTP servers on loopback: signed,
retried with backoff, dead-lettered after the limit, never blocked by another webhook, never sent
twice for a replayed event."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from notifier_support import INSTITUTION, Endpoints, Receiver, inbox, matched, uid
from waiting import eventually

from finmesh.lead.v1 import lead_pb2
from finmesh.matching.v1 import events_pb2 as matching
from finmesh.notification.v1 import delivery_pb2 as dlv
from meshkit import codec, topics
from meshkit.grpcserver import field_violations
from meshkit.lifecycle import Runtime
from tests.integration.matcher.matcher_support import publish

pytestmark = pytest.mark.integration


async def register(deliveries, inst: str, url: str, secret: str = "") -> dlv.RegisterWebhookResponse:
    md = (("x-webhook-secret", secret),) if secret else ()
    return await deliveries.RegisterWebhook(dlv.RegisterWebhookRequest(institution_id=inst, url=url), metadata=md)


async def listed(deliveries, inst: str, secret: str, ok, timeout: float = 15.0) -> list[dlv.Delivery]:
    async def fetch() -> list[dlv.Delivery]:
        reply = await deliveries.ListDeliveries(dlv.ListDeliveriesRequest(institution_id=inst, page_size=100),
                                                metadata=(("x-webhook-secret", secret),))
        return list(reply.deliveries)
    return await eventually(fetch, ok, timeout)


async def test_fails_twice_then_succeeds_once_and_a_dead_one_blocks_nothing(
        notifier: Runtime, stub, deliveries, bootstrap: str) -> None:
    inst = f"bank-{uid()}"
    async with Endpoints() as server:
        flaky = Receiver(script=[500, 503])
        broken = Receiver(script=[500] * 100)
        first = await register(deliveries, inst, server.add("flaky", flaky))
        assert first.created and first.secret
        secret = flaky.secret = broken.secret = first.secret
        second = await register(deliveries, inst, server.add("broken", broken), secret)
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
        slow_secret = (await register(deliveries, slow_inst, server.add("slow", slow))).secret
        await register(deliveries, fast_inst, server.add("fast", fast))
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
            secret = (await register(deliveries, busy_inst, server.add("busy", busy))).secret
            await register(deliveries, other_inst, server.add("other", other))
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
        reg = await register(deliveries, inst, server.add("gone", gone))
        try:
            await publish(bootstrap, topics.DEMANDS_MATCHED, matched(f"d-{uid()}", f"E{uid()}", [inst]))
            await eventually(lambda: _async(lambda: gone.arrived), lambda a: len(a) >= 1)
            deleted = await deliveries.DeleteWebhook(dlv.DeleteWebhookRequest(
                institution_id=inst, webhook_id=reg.webhook.webhook_id), metadata=(("x-webhook-secret", reg.secret),))
            assert deleted.deleted
            calls_at_deletion = len(gone.arrived)
        finally:
            gone.gate.set()  # type: ignore[union-attr]
        # The call in flight at the deletion is recorded; the delivery stays DEAD and is not retried.
        [d] = await listed(deliveries, inst, reg.secret, lambda ds: len(ds) == 1 and ds[0].attempts == len(
            gone.arrived) and len(ds[0].history) == ds[0].attempts and ds[0].status == dlv.DELIVERY_STATUS_DEAD)
        assert d.status == dlv.DELIVERY_STATUS_DEAD and d.dead_reason == "webhook deleted"
        assert len(d.history) == d.attempts == calls_at_deletion == len(gone.arrived)


async def test_registration_needs_the_secret_once_there_is_one(deliveries) -> None:
    inst = f"bank-{uid()}"
    first = await register(deliveries, inst, "http://127.0.0.1:9/a")
    again = await register(deliveries, inst, "http://127.0.0.1:9/a", first.secret)
    assert not again.created and again.webhook.webhook_id == first.webhook.webhook_id
    for secret in ("", "wrong"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await register(deliveries, inst, "http://127.0.0.1:9/b", secret)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await register(deliveries, "", "ftp://x")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(err.value)) == {"institution_id", "url"}
    deleted = await deliveries.DeleteWebhook(dlv.DeleteWebhookRequest(
        institution_id=inst, webhook_id=first.webhook.webhook_id), metadata=(("x-webhook-secret", first.secret),))
    assert deleted.deleted
