"""The protobuf codec and the event headers every record carries.

Headers: ``event-id`` (UUID, the consumer's dedupe key), ``event-type`` (the protobuf
full name), ``occurred-at`` (RFC 3339, UTC, microseconds) and ``producer`` (service).
Dead-lettered records also carry ``dlq-reason``, ``dlq-origin`` (topic/partition@offset),
``dlq-consumer`` and ``dlq-kind`` (``unusable``: the record itself, e.g. undecodable or invalid;
``kept-failing``: its handler failed every try).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf.message import DecodeError, Message

from meshkit.topics import MAX_MESSAGE_BYTES, TopicSpec

EVENT_ID = "event-id"
EVENT_TYPE = "event-type"
OCCURRED_AT = "occurred-at"
PRODUCER = "producer"
DLQ_REASON = "dlq-reason"
DLQ_ORIGIN = "dlq-origin"
DLQ_CONSUMER = "dlq-consumer"
DLQ_KIND = "dlq-kind"  # why it was set aside: UNUSABLE (the record) or KEPT_FAILING (its handler)
UNUSABLE = "unusable"
KEPT_FAILING = "kept-failing"

Headers = list[tuple[str, bytes]]


class PoisonMessage(Exception):
    """A record that can never be processed: it goes to the dead-letter topic with this reason."""


@dataclass(frozen=True)
class Envelope:
    """A decoded record: the message, its headers, and the partition it was read from."""

    event_id: str
    event_type: str
    occurred_at: datetime
    producer: str
    message: Message
    partition: int = -1  # -1: not read from a topic


def now() -> datetime:
    return datetime.now(UTC)


def new_event_id() -> str:
    return str(uuid.uuid4())


def make_headers(event_type: str, producer: str, event_id: str | None = None,
                 occurred_at: datetime | None = None) -> Headers:
    return [
        (EVENT_ID, (event_id or new_event_id()).encode()),
        (EVENT_TYPE, event_type.encode()),
        (OCCURRED_AT, (occurred_at or now()).isoformat().encode()),
        (PRODUCER, producer.encode()),
    ]


def header(headers: Headers | None, name: str) -> str | None:
    for k, v in headers or ():
        if k == name:
            return v.decode(errors="replace") if v is not None else None
    return None


def decode(spec: TopicSpec, value: bytes | None, headers: Headers | None, partition: int = -1) -> Envelope:
    """Decode one record of ``spec`` (read from ``partition``); raise :class:`PoisonMessage` saying
    why it is unusable."""
    if value is None:
        raise PoisonMessage("empty record value")
    if len(value) > MAX_MESSAGE_BYTES:
        raise PoisonMessage(f"payload of {len(value)} bytes exceeds the limit of {MAX_MESSAGE_BYTES}")
    assert spec.message is not None, f"{spec.name} carries raw bytes"
    event_type = header(headers, EVENT_TYPE) or spec.event_type
    if event_type != spec.event_type:
        raise PoisonMessage(f"event-type {event_type!r} is not {spec.event_type!r}")
    msg = spec.message()
    try:
        msg.ParseFromString(value)
    except DecodeError as err:
        raise PoisonMessage(f"not a valid {spec.event_type}: {err}") from None
    occurred = header(headers, OCCURRED_AT)
    try:
        occurred_at = datetime.fromisoformat(occurred) if occurred else now()
    except ValueError:
        raise PoisonMessage(f"occurred-at {occurred!r} is not an RFC 3339 timestamp") from None
    if occurred_at.tzinfo is None:  # no offset given: UTC, as the mesh writes it (never naive downstream)
        occurred_at = occurred_at.replace(tzinfo=UTC)
    # Events from outside the mesh may lack an id: derive a stable one from the content.
    event_id = header(headers, EVENT_ID) or str(uuid.uuid5(uuid.NAMESPACE_OID, value.hex()))
    return Envelope(
        event_id=event_id,
        event_type=event_type,
        occurred_at=occurred_at,
        producer=header(headers, PRODUCER) or "unknown",
        message=msg,
        partition=partition,
    )
