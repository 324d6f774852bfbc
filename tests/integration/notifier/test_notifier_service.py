"""The notifier on the real broker and PostgreSQL: DemandMatched → notifications, once."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest
from notifier_support import ENTERPRISE, INSTITUTION, inbox, lead_changed, matched, uid

from finmesh.lead.v1 import lead_pb2
from finmesh.matching.v1 import events_pb2 as matching
from finmesh.notification.v1 import notification_pb2 as pb
from meshkit import codec, topics
from meshkit.grpcserver import field_violations
from meshkit.kafka import make_producer
from meshkit.lifecycle import Runtime
from tests.integration.matcher.matcher_support import publish as publish_one

pytestmark = pytest.mark.integration


async def publish(bootstrap: str, *items: tuple[matching.DemandMatched, str]) -> None:
    """Publish each (message, event id) as the matcher's relay would, with the codec headers."""
    spec = topics.DEMANDS_MATCHED
    producer = make_producer(bootstrap, "test-matcher")
    await producer.start()
    try:
        for msg, event_id in items:
            await producer.send_and_wait(spec.name, value=msg.SerializeToString(), key=spec.key_of(msg),
                                         headers=codec.make_headers(spec.event_type, "matcher", event_id))
    finally:
        await producer.stop()


async def test_a_match_notifies_the_enterprise_and_each_institution(notifier: Runtime, stub, bootstrap: str) -> None:
    tag = uid()
    uscc, insts = f"E{tag}", [f"bank-{tag}-{i}" for i in range(3)]
    msg = matched(f"d-{tag}", uscc, insts)
    await publish(bootstrap, (msg, codec.new_event_id()))

    [note] = await inbox(stub, ENTERPRISE, uscc)
    assert note.kind == "demand.matched" and note.demand_id == msg.demand_id
    assert "3 financial product" in note.body
    for inst, lead in zip(insts, msg.leads, strict=True):
        [lead_note] = await inbox(stub, INSTITUTION, inst)
        assert lead_note.kind == "lead.issued" and lead_note.lead_id == lead.lead_id
        assert lead.product_id in lead_note.title
    # The Chinese text, on request.
    [zh] = await inbox(stub, ENTERPRISE, uscc, metadata=(("accept-language", "zh-CN"),))
    assert "匹配" in zh.title
    assert notifier.metrics.notifications.labels("institution", "lead.issued")._value.get() >= 3


async def test_no_match_tells_the_enterprise_why(stub, bootstrap: str) -> None:
    tag = uid()
    msg = matched(f"d-{tag}", f"E{tag}", [])
    msg.no_match_explanation = "the term of 400 months exceeds every product's maximum"
    await publish(bootstrap, (msg, codec.new_event_id()))
    [note] = await inbox(stub, ENTERPRISE, msg.enterprise_uscc)
    assert note.kind == "demand.no_match" and "400 months" in note.body


async def test_a_replayed_event_creates_nothing_more(stub, bootstrap: str) -> None:
    tag = uid()
    uscc, inst = f"E{tag}", f"bank-{tag}"
    msg = matched(f"d-{tag}", uscc, [inst])
    event_id = codec.new_event_id()
    # The same event twice (redelivery), then the same outcome under a new event id (re-publication),
    # then a different outcome for the same demand (same key → same partition → handled after them).
    later = matched(msg.demand_id, uscc, [inst, f"other-{tag}"])
    await publish(bootstrap, (msg, event_id), (msg, event_id), (msg, codec.new_event_id()),
                  (later, codec.new_event_id()))

    notes = await inbox(stub, ENTERPRISE, uscc, want=2)
    assert [n.body.count("financial product") for n in notes] == [1, 1]
    assert {"1 financial product(s)" in n.body for n in notes} == {True, False}
    assert len(await inbox(stub, INSTITUTION, inst, want=2, timeout=0.5)) == 1


async def test_list_notifications_names_every_missing_field(stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListNotifications(pb.ListNotificationsRequest(page_size=-1))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(err.value)) == {"recipient_kind", "recipient_id", "page_size"}

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListNotifications(pb.ListNotificationsRequest(recipient_kind=ENTERPRISE, recipient_id="x",
                                                                 page_token="not-a-token"))
    assert set(field_violations(err.value)) == {"page_token"}


async def test_inbox_pages_newest_first(stub, bootstrap: str) -> None:
    tag = uid()
    inst = f"bank-{tag}"
    msgs = [matched(f"d-{tag}-{i}", f"E{tag}-{i}", [inst]) for i in range(5)]
    for msg in msgs:  # one after the other, so each is newer than the last
        await publish(bootstrap, (msg, codec.new_event_id()))
    await inbox(stub, INSTITUTION, inst, want=5)
    seen, token = [], ""
    while True:
        reply = await stub.ListNotifications(pb.ListNotificationsRequest(
            recipient_kind=INSTITUTION, recipient_id=inst, page_size=2, page_token=token))
        seen += [n.demand_id for n in reply.notifications]
        token = reply.next_page_token
        if not token:
            break
    assert seen == [m.demand_id for m in reversed(msgs)]


async def test_a_lead_outcome_hours_old_reaches_the_enterprise_named_in_the_event(stub, clock, bootstrap: str
                                                                                   ) -> None:
    """After downtime: the notifier never saw the demand, and the event is hours old."""
    tag = uid()
    uscc = f"E{tag}"
    lead = lead_pb2.Lead(lead_id=f"l-{tag}", demand_id=f"d-{tag}", institution_id=f"bank-{tag}", product_id="p")
    at = clock.now() - timedelta(hours=6)
    change = lead_changed(lead, lead_pb2.LEAD_STATUS_CONTACTED, 3, at, contacted_at=at)
    change.enterprise_uscc = uscc
    await publish_one(bootstrap, topics.LEAD_STATUS_CHANGED, change)
    [note] = await inbox(stub, ENTERPRISE, uscc)
    assert note.kind == "lead.outcome" and note.lead_id == lead.lead_id and note.demand_id == lead.demand_id


async def test_an_old_event_without_the_enterprise_waits_for_it_instead_of_being_lost(stub, clock,
                                                                                      bootstrap: str) -> None:
    tag = uid()
    uscc, inst = f"E{tag}", f"bank-{tag}"
    msg = matched(f"d-{tag}", uscc, [inst, f"other-{tag}"])
    declined, withdrawn = msg.leads
    at = clock.now() - timedelta(hours=6)
    # As published before LeadStatusChanged named the enterprise; the notifier has not seen the demand.
    await publish_one(bootstrap, topics.LEAD_STATUS_CHANGED,
                      lead_changed(declined, lead_pb2.LEAD_STATUS_DECLINED, 3, at, reason="too much leverage"))
    # Same demand, so the same partition, after it: once its institution is told, the first was handled.
    await publish_one(bootstrap, topics.LEAD_STATUS_CHANGED,
                      lead_changed(withdrawn, lead_pb2.LEAD_STATUS_WITHDRAWN, 3, at))
    [gone] = await inbox(stub, INSTITUTION, withdrawn.institution_id)
    assert gone.kind == "lead.withdrawn"
    assert await inbox(stub, ENTERPRISE, uscc, timeout=0) == []  # the enterprise is not known yet

    await publish(bootstrap, (msg, codec.new_event_id()))  # now it is
    notes = await inbox(stub, ENTERPRISE, uscc, want=2)
    outcome = [n for n in notes if n.kind == "lead.outcome"]
    assert [n.lead_id for n in outcome] == [declined.lead_id] and "too much leverage" in outcome[0].body
