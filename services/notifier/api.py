"""gRPC: NotificationService."""

from __future__ import annotations

import asyncpg
import grpc

from finmesh.notification.v1 import notification_pb2 as pb
from finmesh.notification.v1 import notification_pb2_grpc as pb_grpc
from meshkit.errors import FieldViolation, ValidationFailed
from meshkit.paging import Page
from services.notifier import domain, mapping, store


def _language(context: grpc.aio.ServicerContext) -> str:
    """From the ``accept-language`` metadata: "zh…" for Chinese, else English."""
    for key, value in context.invocation_metadata() or ():
        if key == "accept-language":
            return value.strip().lower()
    return "en"


class NotificationApi(pb_grpc.NotificationServiceServicer):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def ListNotifications(self, request: pb.ListNotificationsRequest, context: grpc.aio.ServicerContext
                                ) -> pb.ListNotificationsResponse:
        violations: list[FieldViolation] = []
        try:
            domain.validate_query(request.recipient_kind, request.recipient_id)
        except ValidationFailed as err:
            violations += err.violations
        try:
            page = Page.of(request.page_size, request.page_token)
        except ValidationFailed as err:
            violations += err.violations
        if violations:
            raise ValidationFailed(violations)
        notes = await store.inbox(self.pool, domain.RecipientKind(request.recipient_kind),
                                  request.recipient_id.strip(), page)
        language = _language(context)
        return pb.ListNotificationsResponse(
            notifications=[mapping.notification_pb(n, language) for n in notes[: page.size]],
            next_page_token=page.next_token(len(notes)),
        )
