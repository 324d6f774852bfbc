"""The contact clock on the real broker and PostgreSQL, with a settable clock: reminder at
two-thirds, escalation and LeadSlaBreached at the deadline, stopped by contact, SLA overrides,
and two replicas firing each clock once."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
import pytest
from institution_keys import as_institution, publish_institution
from notifier_support import FAST_RETRY, INSTITUTION, inbox, lead_changed, matched, uid
from waiting import eventually

from finmesh.institution.v1 import events_pb2 as inst_events
from finmesh.institution.v1 import institution_pb2 as inst_pb
from finmesh.lead.v1 import lead_pb2
from finmesh.matching.v1 import events_pb2 as matching
from finmesh.notification.v1 import clock_pb2 as cpb
from meshkit import codec, topics
from meshkit.grpcserver import field_violations
from meshkit.lifecycle import Runtime
from services.notifier import app
from services.notifier.service import Notifier
from tests.integration.matcher.matcher_support import publish, read_until

pytestmark = pytest.mark.integration

DELIVERED, CONTACTED = lead_pb2.LEAD_STATUS_DELIVERED, lead_pb2.LEAD_STATUS_CONTACTED


async def deliver(bootstrap: str, clock, inst: str, *, tag: str | None = None) -> lead_pb2.Lead:
    """A match with one lead for ``inst``, then its DELIVERED change at the clock's now."""
    t = tag or uid()
    msg = matched(f"d-{t}", f"E{t}", [inst])
    await publish(bootstrap, topics.DEMANDS_MATCHED, msg)
    await publish(bootstrap, topics.LEAD_STATUS_CHANGED, lead_changed(msg.leads[0], DELIVERED, 2, clock.now()))
    return msg.leads[0]


async def lead_clock(clocks, lead_id: str, ok=lambda c: True, timeout: float = 15.0) -> cpb.LeadClock:
    async def get() -> cpb.LeadClock | None:
        try:
            return (await clocks.GetLeadClock(cpb.GetLeadClockRequest(lead_id=lead_id))).clock
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.NOT_FOUND
            return None
    found = await eventually(get, lambda c: c is not None and ok(c), timeout)
    assert found is not None and ok(found), found
    return found


def hours(a, b) -> float:  # noqa: ANN001
    return (b.ToDatetime() - a.ToDatetime()).total_seconds() / 3600


async def test_an_uncontacted_lead_is_reminded_then_escalated_and_breached_once(
        notifier: Runtime, stub, clocks, clock, bootstrap: str) -> None:
    inst = f"bank-{uid()}"
    await as_institution(clocks.SetContactPolicy, cpb.SetContactPolicyRequest(policy=cpb.ContactPolicy(
        institution_id=inst, escalation_contact="risk-desk@bank.example")), await publish_institution(bootstrap, inst))
    lead = await deliver(bootstrap, clock, inst)
    c = await lead_clock(clocks, lead.lead_id)
    assert c.state == cpb.CLOCK_STATE_RUNNING and c.sla_hours == 72 and c.sla_source == "default"
    assert hours(c.delivered_at, c.due_at) == 72 and hours(c.delivered_at, c.remind_at) == 48
    assert c.escalation_contact == "risk-desk@bank.example"

    clock.advance(timedelta(hours=49))
    [reminder] = await inbox(stub, INSTITUTION, inst, kinds=["lead.reminder"])
    assert reminder.lead_id == lead.lead_id and "72-hour" in reminder.body
    c = await lead_clock(clocks, lead.lead_id, lambda c: c.HasField("reminded_at"))
    assert c.state == cpb.CLOCK_STATE_RUNNING

    clock.advance(timedelta(hours=24))
    [escalation] = await inbox(stub, INSTITUTION, inst, kinds=["lead.escalated"])
    assert "risk-desk@bank.example" in escalation.body
    c = await lead_clock(clocks, lead.lead_id, lambda c: c.state == cpb.CLOCK_STATE_BREACHED)
    assert c.HasField("breached_at")
    [record] = await read_until(bootstrap, topics.LEAD_SLA_BREACHED.name, lambda rs: len(rs) >= 1,
                                keep=lambda r: r.key == lead.demand_id.encode())
    breach = matching.LeadSlaBreached.FromString(record.value)
    assert (breach.lead_id, breach.institution_id) == (lead.lead_id, inst)
    assert breach.contact_due_at == c.due_at
    assert notifier.metrics.clock_breaches.labels(inst)._value.get() == 1
    assert notifier.metrics.clock_reminders.labels(inst)._value.get() == 1
    # The lead's LeadStatusChanged to SLA_BREACHED (from the demand service) changes nothing more.
    await publish(bootstrap, topics.LEAD_STATUS_CHANGED,
                  lead_changed(lead, lead_pb2.LEAD_STATUS_SLA_BREACHED, 3, clock.now()))
    assert len(await inbox(stub, INSTITUTION, inst, want=4, timeout=1.0)) == 3  # issued, reminder, escalation


async def test_contact_stops_the_clock_and_overrides_set_the_sla(notifier: Runtime, stub, clocks, clock,
                                                                 bootstrap: str) -> None:
    inst = f"bank-{uid()}"
    # The institution's own SLA (from the demand service's institution topic) applies to new clocks.
    key = await publish_institution(bootstrap, inst, sla_hours=24)

    async def probe() -> cpb.LeadClock:
        return await lead_clock(clocks, (await deliver(bootstrap, clock, inst)).lead_id)
    c = await eventually(probe, lambda c: c.sla_hours == 24)
    assert c.sla_source == "institution"

    # A per-product policy beats it.
    t = uid()
    await as_institution(clocks.SetContactPolicy, cpb.SetContactPolicyRequest(policy=cpb.ContactPolicy(
        institution_id=inst, product_id=f"{inst}-p1", sla_hours=12)), key)
    contacted = await deliver(bootstrap, clock, inst, tag=t)
    c = await lead_clock(clocks, contacted.lead_id)
    assert (c.sla_hours, c.sla_source) == (12, "product policy")
    # ... and is announced, for the matcher and the demand service to date their leads by.
    [announced] = await read_until(bootstrap, topics.CONTACT_POLICIES_CHANGED.name, lambda rs: len(rs) >= 1,
                                   keep=lambda r: r.key == inst.encode())
    policy = codec.decode(topics.CONTACT_POLICIES_CHANGED, announced.value, announced.headers).message.policy
    assert (policy.institution_id, policy.product_id, policy.sla_hours) == (inst, f"{inst}-p1", 12)
    assert policy.HasField("updated_at")

    # Contact after 2 hours stops it, and is measured.
    at = clock.now() + timedelta(hours=2)
    await publish(bootstrap, topics.LEAD_STATUS_CHANGED, lead_changed(contacted, CONTACTED, 3, at, contacted_at=at))
    c = await lead_clock(clocks, contacted.lead_id, lambda c: c.state == cpb.CLOCK_STATE_STOPPED)
    assert c.stopped_by == "CONTACTED"
    ttfc = notifier.metrics.time_to_first_contact.labels(inst)
    assert 1.9 * 3600 < ttfc._sum.get() < 2.1 * 3600

    # Past every deadline: a sentinel lead of another institution breaches; the contacted one does not.
    sentinel_inst = f"bank-{uid()}"
    sentinel = await deliver(bootstrap, clock, sentinel_inst)
    await lead_clock(clocks, sentinel.lead_id)
    clock.advance(timedelta(hours=100))
    await lead_clock(clocks, sentinel.lead_id, lambda c: c.state == cpb.CLOCK_STATE_BREACHED)
    notes = await inbox(stub, INSTITUTION, inst, lead_id=contacted.lead_id, want=2, timeout=0.5)
    assert [n.kind for n in notes] == ["lead.issued"]


async def test_policies_set_before_they_were_announced_are_announced_once_at_start(notifier: Runtime,
                                                                                     bootstrap: str) -> None:
    inst = f"bank-{uid()}"
    # As the release before left it: a policy stored, never announced.
    await notifier.pool.execute(
        "INSERT INTO contact_policies (institution_id, product_id, sla_hours, escalation_contact, updated_at,"
        " announced) VALUES ($1, '', 36, '', now(), false)", inst)
    restarted = Notifier(notifier.pool, notifier.metrics, codec.now, schema=app.SCHEMA)
    assert await restarted.announce_policies() == 1
    assert await restarted.announce_policies() == 0  # once
    records = await read_until(bootstrap, topics.CONTACT_POLICIES_CHANGED.name, lambda rs: len(rs) >= 1,
                               keep=lambda r: r.key == inst.encode())
    policies = [codec.decode(topics.CONTACT_POLICIES_CHANGED, r.value, r.headers).message.policy for r in records]
    assert [(p.institution_id, p.product_id, p.sla_hours) for p in policies] == [(inst, "", 36)]


async def test_an_institution_without_an_sla_gets_the_default_and_one_without_an_id_is_dead_lettered(
        clocks, clock, bootstrap: str) -> None:
    inst = f"bank-{uid()}"
    await publish(bootstrap, topics.INSTITUTIONS_CHANGED, inst_events.InstitutionChanged(
        institution=inst_pb.Institution(institution_id=inst, name="Bank", contact_sla_hours=24, version=1)))

    async def probe() -> cpb.LeadClock:
        return await lead_clock(clocks, (await deliver(bootstrap, clock, inst)).lead_id)
    assert (await eventually(probe, lambda c: c.sla_hours == 24)).sla_source == "institution"
    # The institution drops its SLA (0 = none set): new clocks run on the default, and say so.
    await publish(bootstrap, topics.INSTITUTIONS_CHANGED, inst_events.InstitutionChanged(
        institution=inst_pb.Institution(institution_id=inst, name="Bank", contact_sla_hours=0, version=2)))
    c = await eventually(probe, lambda c: c.sla_hours != 24)
    assert (c.sla_hours, c.sla_source) == (72, "default")

    tag = uid()
    await publish(bootstrap, topics.INSTITUTIONS_CHANGED, inst_events.InstitutionChanged(
        institution=inst_pb.Institution(name=f"nameless-{tag}", contact_sla_hours=5, version=1)))
    dead = await read_until(bootstrap, topics.INSTITUTIONS_CHANGED_DLQ.name, lambda rs: len(rs) >= 1,
                            keep=lambda r: tag.encode() in r.value)
    assert len(dead) == 1
    assert "institution.institution_id" in codec.header(dead[0].headers, codec.DLQ_REASON)


async def test_two_replicas_fire_each_clock_once(notifier: Runtime, clocks, clock, bootstrap: str,
                                                 database_url: str, service_runtime) -> None:

    async with service_runtime("notifier", app, database_url, bootstrap, service_name=notifier.service,
                               clock=clock, retry=FAST_RETRY, clock_tick_seconds=0.2) as replica:
        inst = f"bank-{uid()}"
        leads = await asyncio.gather(*(deliver(bootstrap, clock, inst) for _ in range(20)))
        for lead in leads:
            await lead_clock(clocks, lead.lead_id)
        clock.advance(timedelta(hours=80))
        for lead in leads:
            await lead_clock(clocks, lead.lead_id, lambda c: c.state == cpb.CLOCK_STATE_BREACHED)
        fired = [rt.metrics.clock_breaches.labels(inst)._value.get() for rt in (notifier, replica)]
        assert sum(fired) == 20, fired
        records = await read_until(bootstrap, topics.LEAD_SLA_BREACHED.name, lambda rs: len(rs) >= 20,
                                   keep=lambda r: matching.LeadSlaBreached.FromString(r.value).institution_id == inst)
        assert len({matching.LeadSlaBreached.FromString(r.value).lead_id for r in records}) == 20


async def test_bad_policies_and_unknown_clocks_are_refused(clocks, bootstrap: str) -> None:
    inst = f"bank-{uid()}"
    policy = cpb.SetContactPolicyRequest(policy=cpb.ContactPolicy(institution_id=inst, sla_hours=24))
    await publish_institution(bootstrap, inst)
    for metadata in ((), await publish_institution(bootstrap, f"bank-{uid()}")):  # no key; another institution's
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await as_institution(clocks.SetContactPolicy, policy, metadata)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await clocks.SetContactPolicy(cpb.SetContactPolicyRequest(policy=cpb.ContactPolicy(sla_hours=1000)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(err.value)) == {"policy.institution_id", "policy.sla_hours"}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await clocks.GetLeadClock(cpb.GetLeadClockRequest(lead_id=""))
    assert set(field_violations(err.value)) == {"lead_id"}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await clocks.GetLeadClock(cpb.GetLeadClockRequest(lead_id="no-such-lead"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
