"""Institutions' API keys in tests: the ``InstitutionChanged`` the demand service publishes for an
institution (with the digest of a new key), and gRPC calls made with that key, retried while the
called service has not had the event yet (it answers UNAVAILABLE until then). And the platform's
operator, whose key the services under test know (:data:`OPERATOR_KEYS`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from finmesh.institution.v1 import events_pb2 as inst_events
from finmesh.institution.v1 import institution_pb2 as inst_pb
from meshkit import apikeys, operators, topics
from tests.integration.matcher.matcher_support import publish

Metadata = tuple[tuple[str, str], ...]
RETRY_SECONDS = 15.0


async def publish_institution(bootstrap: str, institution_id: str, *, sla_hours: int = 0, version: int = 1,
                              institution_type: int = inst_pb.INSTITUTION_TYPE_BANK) -> Metadata:
    """Publish ``InstitutionChanged`` for ``institution_id`` as the demand service does, with the digest
    of a new API key; returns call metadata carrying that key."""
    key = apikeys.new()
    await publish(bootstrap, topics.INSTITUTIONS_CHANGED, inst_events.InstitutionChanged(
        institution=inst_pb.Institution(institution_id=institution_id, name=institution_id.upper(),
                                        type=institution_type, contact_sla_hours=sla_hours, version=version),
        created=version == 1, api_key_sha256=apikeys.digest(key)))
    return ((apikeys.HEADER, key),)


async def until_known(attempt: Callable[[], Awaitable[Any]], timeout: float = RETRY_SECONDS) -> Any:
    """``attempt()``, again while it fails with UNAVAILABLE: the service does not know the institution yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await attempt()
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.05)


async def as_institution(call: Callable[..., Awaitable[Any]], request: Message, metadata: Metadata,
                         timeout: float = RETRY_SECONDS) -> Any:
    """``call(request)`` with ``metadata``, retried while the service does not know the institution yet."""
    return await until_known(lambda: call(request, metadata=metadata), timeout)


class Keys:
    """One key per institution for a test session: its InstitutionChanged published on first use."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._issued: dict[str, Metadata] = {}

    async def of(self, institution_id: str) -> Metadata:
        if institution_id not in self._issued:
            self._issued[institution_id] = await publish_institution(self.bootstrap, institution_id)
        return self._issued[institution_id]


def institution_of(request: Message) -> str:
    """The institution a request is made for: its ``institution_id``, or its product's or subscription's."""
    for holder in (request, getattr(request, "product", None), getattr(request, "subscription", None)):
        if holder is not None and getattr(holder, "institution_id", ""):
            return holder.institution_id
    return ""


class InstitutionAuth(grpc.aio.UnaryUnaryClientInterceptor):
    """A channel interceptor playing each institution's own system: a request made for an institution
    carries that institution's key (:class:`Keys`), retried while the service does not know it yet."""

    def __init__(self, keys: Keys) -> None:
        self.keys = keys

    async def intercept_unary_unary(self, continuation, client_call_details, request):  # noqa: ANN001, ANN201
        institution_id = institution_of(request)
        if not institution_id:
            return await continuation(client_call_details, request)
        metadata = (*(client_call_details.metadata or ()), *(await self.keys.of(institution_id)))
        details = grpc.aio.ClientCallDetails(client_call_details.method, client_call_details.timeout, metadata,
                                             client_call_details.credentials, client_call_details.wait_for_ready)

        async def attempt() -> Any:
            return await (await continuation(details, request))
        return await until_known(attempt)


# -- the platform's operator ------------------------------------------------------------------------------

OPERATOR_ID = "test-operator"
OPERATOR_KEY = operators.new()
OPERATOR_KEYS = operators.entry(OPERATOR_ID, OPERATOR_KEY)  # the services' OPERATOR_KEYS in the tests


class OperatorAuth(grpc.aio.UnaryUnaryClientInterceptor):
    """A channel interceptor playing the platform's operator: every call carries its key
    (``x-operator-key``; calls that are not operators' ignore it)."""

    def __init__(self, key: str = OPERATOR_KEY) -> None:
        self.key = key

    async def intercept_unary_unary(self, continuation, client_call_details, request):  # noqa: ANN001, ANN201
        metadata = (*(client_call_details.metadata or ()), (operators.HEADER, self.key))
        details = grpc.aio.ClientCallDetails(client_call_details.method, client_call_details.timeout, metadata,
                                             client_call_details.credentials, client_call_details.wait_for_ready)
        return await continuation(details, request)
