"""Helpers of the notifier's integration tests: events as the demand service and the matcher
publish them, a loopback webhook receiver, and polling the public interfaces."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from aiohttp import web
from waiting import eventually

from finmesh.lead.v1 import events_pb2 as lead_events
from finmesh.lead.v1 import lead_pb2
from finmesh.matching.v1 import events_pb2 as matching
from finmesh.notification.v1 import notification_pb2 as pb
from meshkit import ids
from services.notifier import domain
from services.notifier.domain import RetryPolicy

# Webhook retries fast enough for tests.
FAST_RETRY = RetryPolicy(max_attempts=4, base_seconds=0.05, cap_seconds=0.5, timeout_seconds=1.0)
ENTERPRISE = pb.RECIPIENT_KIND_ENTERPRISE
INSTITUTION = pb.RECIPIENT_KIND_INSTITUTION


def uid() -> str:
    return uuid.uuid4().hex[:10]


def with_secret(secret: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying an institution's webhook secret."""
    return (("x-webhook-secret", secret),)


def matched(demand_id: str, uscc: str, institutions: list[str], **kw: object) -> matching.DemandMatched:
    msg = matching.DemandMatched(demand_id=demand_id, enterprise_uscc=uscc, candidates_considered=10, **kw)
    for rank, inst in enumerate(institutions, start=1):
        product_id = f"{inst}-p1"
        msg.leads.add(lead_id=ids.lead_id(demand_id, product_id), demand_id=demand_id, institution_id=inst,
                      product_id=product_id, score=90 - rank, rank=rank, status=lead_pb2.LEAD_STATUS_CREATED)
    return msg


def lead_changed(lead: lead_pb2.Lead, status: int, seq: int, at: datetime, *, reason: str = "",
                 contacted_at: datetime | None = None) -> lead_events.LeadStatusChanged:
    """A LeadStatusChanged as the demand service publishes it (``at`` from the test's clock)."""
    out = lead_events.LeadStatusChanged(seq=seq)
    out.lead.CopyFrom(lead)
    out.lead.status = status
    out.change.status = status
    out.change.reason = reason
    out.change.at.FromDatetime(at)
    if contacted_at is not None:
        out.lead.contact.contacted_at.FromDatetime(contacted_at)
    return out


async def inbox(stub, kind: int, recipient: str, *, want: int = 1, timeout: float = 15.0, **kw
                ) -> list[pb.Notification]:
    """The recipient's notifications (filters in ``kw``) once there are at least ``want`` (or at the timeout)."""
    metadata = kw.pop("metadata", ())

    async def fetch() -> list[pb.Notification]:
        reply = await stub.ListNotifications(pb.ListNotificationsRequest(
            recipient_kind=kind, recipient_id=recipient, page_size=500, **kw), metadata=metadata)
        return list(reply.notifications)
    return await eventually(fetch, lambda notes: len(notes) >= want, timeout)


@dataclass
class Receiver:
    """A webhook endpoint on loopback: answers from a script of statuses (then 200), checks signatures."""

    script: list[int] = field(default_factory=list)
    secret: str = ""
    calls: list[dict] = field(default_factory=list)  # every request: delivery id, status answered, signature ok
    delay: float = 0.0
    gate: asyncio.Event | None = None  # when given, every request is held until it is set
    arrived: list[str] = field(default_factory=list)  # the delivery id of every request, as it comes in

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.arrived.append(request.headers.get("X-Finmesh-Delivery", ""))
        if self.gate is not None:
            await self.gate.wait()
        ok_sig = domain.verify(self.secret, body, request.headers.get("X-Finmesh-Timestamp", ""),
                               request.headers.get("X-Finmesh-Signature", ""), now=time.time(),
                               tolerance=10**9) if self.secret else None
        status = self.script.pop(0) if self.script else 200
        if self.delay:
            await asyncio.sleep(self.delay)
        self.calls.append({"delivery": request.headers.get("X-Finmesh-Delivery"), "status": status,
                           "signed": ok_sig, "kind": request.headers.get("X-Finmesh-Event"), "body": body})
        return web.Response(status=status)

    def delivered(self) -> list[dict]:
        return [c for c in self.calls if 200 <= c["status"] < 300]


class Endpoints:
    """One aiohttp server on 127.0.0.1 with a path per receiver."""

    def __init__(self) -> None:
        self.app = web.Application()
        self.receivers: dict[str, Receiver] = {}
        self.runner: web.AppRunner | None = None
        self.port = 0

    def add(self, name: str, receiver: Receiver) -> str:
        self.receivers[name] = receiver
        return f"http://127.0.0.1:{self.port}/{name}"

    async def _dispatch(self, request: web.Request) -> web.Response:
        return await self.receivers[request.match_info["name"]].handle(request)

    async def __aenter__(self) -> Endpoints:
        self.app.router.add_post("/{name}", self._dispatch)
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()
