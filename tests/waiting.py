"""Waiting in tests: poll until a condition holds (tests never sleep a fixed time and hope)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def eventually(fn: Callable[[], Awaitable[Any]], ok: Callable[[Any], bool], timeout: float = 15.0) -> Any:
    """``await fn()`` every 0.1 s until ``ok`` of its value, or ``timeout`` seconds; the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await fn()
        if ok(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.1)
