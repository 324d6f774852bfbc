"""gRPC: NotificationService, DeliveryService and ContactClockService (translate and delegate)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import grpc

from finmesh.notification.v1 import clock_pb2 as cpb
from finmesh.notification.v1 import clock_pb2_grpc as cpb_grpc
from finmesh.notification.v1 import delivery_pb2 as dlv
from finmesh.notification.v1 import delivery_pb2_grpc as dlv_grpc
from finmesh.notification.v1 import notification_pb2 as pb
from finmesh.notification.v1 import notification_pb2_grpc as pb_grpc
from meshkit import apikeys
from meshkit.errors import DomainError, FieldViolation, ValidationFailed, Violations
from meshkit.grpcserver import metadata, to_status
from meshkit.paging import MAX_PAGE_SIZE, Page
from services.notifier import domain, mapping, store
from services.notifier.service import WEBHOOK_SECRET_HEADER, Caller, Notifier

MAX_MARK = 500
SUBSCRIBE_POLL_SECONDS = 1.0  # also wakes at once on a notification recorded by this replica


def _language(context: grpc.aio.ServicerContext) -> str:
    """From the ``accept-language`` metadata: "zh…" for Chinese, else English."""
    return metadata(context, "accept-language").lower() or "en"


def _caller(context: grpc.aio.ServicerContext) -> Caller:
    return Caller(api_key=apikeys.from_context(context), secret=metadata(context, WEBHOOK_SECRET_HEADER))


def _recipient(v: Violations, kind: int, recipient_id: str) -> None:
    try:
        domain.validate_query(kind, recipient_id)
    except ValidationFailed as err:
        v.items += err.violations


def _page(v: Violations, page_size: int, page_token: str) -> Page:
    try:
        return Page.of(page_size, page_token)
    except ValidationFailed as err:
        v.items += err.violations
        return Page(0, 0)


class NotificationApi(pb_grpc.NotificationServiceServicer):
    def __init__(self, pool: asyncpg.Pool, notifier: Notifier | None = None) -> None:
        self.pool = pool
        self.notifier = notifier

    async def ListNotifications(self, request: pb.ListNotificationsRequest, context: grpc.aio.ServicerContext
                                ) -> pb.ListNotificationsResponse:
        v = Violations()
        _recipient(v, request.recipient_kind, request.recipient_id)
        page = _page(v, request.page_size, request.page_token)
        v.check(all(k in domain.templates.KINDS for k in request.kinds), "kinds",
                "each must be a notification kind: " + ", ".join(domain.templates.KINDS))
        v.check(len(request.demand_id) <= 128, "demand_id", "must be at most 128 characters")
        v.check(len(request.lead_id) <= 128, "lead_id", "must be at most 128 characters")
        v.raise_if_any()
        f = store.InboxFilter(kinds=tuple(request.kinds), unread_only=request.unread_only,
                              demand_id=request.demand_id.strip(), lead_id=request.lead_id.strip())
        notes = await store.inbox(self.pool, domain.RecipientKind(request.recipient_kind),
                                  request.recipient_id.strip(), page, f)
        language = _language(context)
        return pb.ListNotificationsResponse(
            notifications=[mapping.notification_pb(n, language) for n in notes[: page.size]],
            next_page_token=page.next_token(len(notes)),
        )

    async def MarkRead(self, request: pb.MarkReadRequest, context: grpc.aio.ServicerContext) -> pb.MarkReadResponse:
        v = Violations()
        _recipient(v, request.recipient_kind, request.recipient_id)
        ids = list(request.notification_ids)
        v.check(bool(ids) != request.all, "notification_ids", "give notification ids, or all=true (not both)")
        v.check(len(ids) <= MAX_MARK, "notification_ids", f"at most {MAX_MARK} at a time")
        v.check(all(mapping.is_uuid(i) for i in ids), "notification_ids", "each must be a notification id")
        v.raise_if_any()
        marked = await store.mark_read(self.pool, domain.RecipientKind(request.recipient_kind),
                                       request.recipient_id.strip(), ids, request.all)
        return pb.MarkReadResponse(marked=marked)

    async def Subscribe(self, request: pb.SubscribeRequest, context: grpc.aio.ServicerContext
                        ) -> AsyncIterator[pb.SubscribeResponse]:
        # Server streams are not wrapped by the server's interceptor: map domain errors here.
        try:
            kind, recipient, cursor = await self._subscription(request)
        except DomainError as err:
            status = to_status(err)
            await context.abort(status.code, status.details, status.trailing_metadata)
            return
        language = _language(context)
        while True:
            batch = await store.stream_after(self.pool, kind, recipient, cursor)
            for position, note in batch:
                yield pb.SubscribeResponse(notification=mapping.notification_pb(note, language))
                cursor = position
            if batch:
                continue
            if self.notifier is not None:
                await self.notifier.recorded.wait(SUBSCRIBE_POLL_SECONDS)
            else:
                await asyncio.sleep(SUBSCRIBE_POLL_SECONDS)

    async def _subscription(self, request: pb.SubscribeRequest) -> tuple[domain.RecipientKind, str, store.Cursor]:
        v = Violations()
        _recipient(v, request.recipient_kind, request.recipient_id)
        after = request.after_notification_id.strip()
        v.check(not after or mapping.is_uuid(after), "after_notification_id", "must be a notification id")
        v.raise_if_any()
        kind, recipient = domain.RecipientKind(request.recipient_kind), request.recipient_id.strip()
        if after:
            cursor = await store.cursor_of(self.pool, kind, recipient, after)
            if cursor is None:
                raise ValidationFailed([FieldViolation("after_notification_id",
                                                       "is not a notification of this recipient")])
            return kind, recipient, cursor
        if request.from_beginning:
            return kind, recipient, (0, 0)
        return kind, recipient, await store.cursor_now(self.pool)


class DeliveryApi(dlv_grpc.DeliveryServiceServicer):
    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier

    async def RegisterWebhook(self, request: dlv.RegisterWebhookRequest, context: grpc.aio.ServicerContext
                              ) -> dlv.RegisterWebhookResponse:
        inst, url = request.institution_id.strip(), request.url.strip()
        wid, created_at, created, secret = await self.notifier.register_webhook(inst, url, _caller(context))
        return dlv.RegisterWebhookResponse(webhook=mapping.webhook_pb(wid, inst, url, created_at), created=created,
                                           secret=secret)

    async def DeleteWebhook(self, request: dlv.DeleteWebhookRequest, context: grpc.aio.ServicerContext
                            ) -> dlv.DeleteWebhookResponse:
        v = Violations()
        v.check(bool(request.institution_id.strip()), "institution_id", "is required")
        v.check(mapping.is_uuid(request.webhook_id), "webhook_id", "must be a webhook id")
        v.raise_if_any()
        deleted = await self.notifier.delete_webhook(request.institution_id.strip(), request.webhook_id,
                                                     _caller(context))
        return dlv.DeleteWebhookResponse(deleted=deleted)

    async def ListDeliveries(self, request: dlv.ListDeliveriesRequest, context: grpc.aio.ServicerContext
                             ) -> dlv.ListDeliveriesResponse:
        v = Violations()
        v.check(bool(request.institution_id.strip()), "institution_id", "is required")
        v.check(request.status in mapping.DELIVERY_STATUS_NAMES or request.status == 0, "status",
                "must be a known delivery status")
        page = _page(v, request.page_size, request.page_token)
        v.raise_if_any()
        rows = await self.notifier.list_deliveries(request.institution_id.strip(),
                                                   mapping.DELIVERY_STATUS_NAMES.get(request.status, ""),
                                                   Page(min(page.size, MAX_PAGE_SIZE), page.offset), _caller(context))
        return dlv.ListDeliveriesResponse(deliveries=[mapping.delivery_pb(dict(r)) for r in rows[: page.size]],
                                          next_page_token=page.next_token(len(rows)))


class ContactClockApi(cpb_grpc.ContactClockServiceServicer):
    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier

    async def SetContactPolicy(self, request: cpb.SetContactPolicyRequest, context: grpc.aio.ServicerContext
                               ) -> cpb.SetContactPolicyResponse:
        policy = await self.notifier.set_policy(mapping.policy_from_pb(request.policy), _caller(context))
        return cpb.SetContactPolicyResponse(policy=mapping.policy_pb(policy))

    async def GetLeadClock(self, request: cpb.GetLeadClockRequest, context: grpc.aio.ServicerContext
                           ) -> cpb.GetLeadClockResponse:
        v = Violations()
        v.check(bool(request.lead_id.strip()) and len(request.lead_id) <= 128, "lead_id",
                "is required, at most 128 characters")
        v.raise_if_any()
        return cpb.GetLeadClockResponse(clock=mapping.clock_pb(await self.notifier.get_clock(request.lead_id.strip())))
