"""Time for the notifier, injectable: contact clocks and delivery retries read ``clock.now()``.

:class:`SystemClock` is the real one. :class:`SettableClock` runs with real time plus an
offset that tests (and the benchmark) move forward, so a 72-hour deadline can pass in a second
while retries and timeouts still see time flow.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware (UTC)."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class SettableClock:
    """Real time shifted by an offset that :meth:`advance` and :meth:`set` move."""

    def __init__(self, offset: timedelta = timedelta(0)) -> None:
        self.offset = offset

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, delta: timedelta) -> datetime:
        self.offset += delta
        return self.now()

    def set(self, at: datetime) -> None:
        self.offset = at - datetime.now(UTC)
