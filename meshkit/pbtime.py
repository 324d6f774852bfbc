"""``google.protobuf.Timestamp`` ⇄ aware ``datetime``, where an unset timestamp means "none"."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp


def ts_to_dt(ts: Timestamp) -> datetime | None:
    """An unset (zero) timestamp is None."""
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    return ts.ToDatetime(tzinfo=UTC)


def set_ts(ts: Timestamp, at: datetime | None) -> None:
    """Set ``ts`` to ``at`` (left unset when ``at`` is None)."""
    if at is not None:
        ts.FromDatetime(at.astimezone(UTC))
