"""Time, injectable: services read the time through a :data:`Clock` (``codec.now`` in production),
so that tests and benchmarks can move it.

:class:`SettableClock` is real time plus an offset that tests move forward, so a 72-hour contact
deadline can pass in a second while retries and timeouts still see time flow.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

Clock = Callable[[], datetime]  # returns the current time, timezone-aware (UTC)


class SettableClock:
    """Real time shifted by an offset that :meth:`advance` and :meth:`set` move; call it (or
    :meth:`now`) for the time."""

    def __init__(self, offset: timedelta = timedelta(0)) -> None:
        self.offset = offset

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    __call__ = now

    def advance(self, delta: timedelta) -> datetime:
        self.offset += delta
        return self.now()

    def set(self, at: datetime) -> None:
        self.offset = at - datetime.now(UTC)
