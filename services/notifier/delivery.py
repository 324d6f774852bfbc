"""The webhook delivery worker: POSTs due deliveries, signed, and records every attempt.

Deliveries are leased from PostgreSQL with ``FOR UPDATE SKIP LOCKED`` (a replica never sends what
another is sending), sent concurrently up to ``concurrency`` at a time but at most ``per_webhook``
of one webhook (the lease counts those already out), each bounded by the retry policy's timeout
from the moment its request goes out (never counting a wait for a connection), and rescheduled
with exponential backoff and jitter on failure — so a failing, slow or backlogged webhook only
ever occupies its own few slots and never holds up another. After
``max_attempts`` a delivery is DEAD with the reason. A crash while sending leaves a lease that runs
out, and the delivery is sent again with the same ``X-Finmesh-Delivery`` id (receivers dedupe on it).
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import timedelta

import aiohttp
import asyncpg

from meshkit import log
from meshkit.clock import Clock
from meshkit.metrics import Metrics
from services.notifier import domain, store
from services.notifier.domain import RetryPolicy
from services.notifier.service import Signal

logger = log.get(__name__)

USER_AGENT = "finmesh-notifier/1"


class DeliveryWorker:
    def __init__(self, pool: asyncpg.Pool, metrics: Metrics, clock: Clock, wake: Signal, *,
                 policy: RetryPolicy = RetryPolicy(), concurrency: int = 32, per_webhook: int = 4,
                 poll_seconds: float = 1.0) -> None:
        self.pool = pool
        self.metrics = metrics
        self.clock = clock
        self.wake = wake
        self.policy = policy
        self.concurrency = concurrency
        self.per_webhook = per_webhook
        self.poll_seconds = poll_seconds
        self._slots: dict[str, list] = {}  # webhook id → [semaphore, sends holding or awaiting it]

    async def run(self) -> None:
        """Until cancelled; survives database restarts."""
        # No connection-pool limits: the sends are bounded here (``concurrency``, ``per_webhook``), so a
        # request never waits for a connection while its timeout runs.
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
        async with aiohttp.ClientSession(connector=connector, headers={"User-Agent": USER_AGENT}) as http:
            inflight: set[asyncio.Task] = set()
            try:
                while True:
                    try:
                        due = await store.claim_due(self.pool, self.clock(), self.concurrency - len(inflight),
                                                    lease_seconds=self.policy.timeout_seconds * 3 + 5,
                                                    per_webhook=self.per_webhook)
                    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
                        logger.warning("claiming deliveries failed; retrying", error=repr(err))
                        due = []
                        await asyncio.sleep(1.0)
                    for d in due:
                        inflight.add(asyncio.create_task(self._send(http, d)))
                    if due and len(inflight) < self.concurrency:
                        continue  # there may be more due right now
                    waker = asyncio.create_task(self.wake.wait(self.poll_seconds))
                    done, _ = await asyncio.wait({waker, *inflight}, return_when=asyncio.FIRST_COMPLETED)
                    waker.cancel()
                    inflight -= done
            finally:
                for t in inflight:
                    t.cancel()
                await asyncio.gather(*inflight, return_exceptions=True)

    async def _send(self, http: aiohttp.ClientSession, d: store.Due) -> None:
        slot = self._slots.setdefault(d.webhook_id, [asyncio.Semaphore(self.per_webhook), 0])
        slot[1] += 1
        try:
            async with slot[0]:  # taken before the timeout starts
                await self._attempt(http, d)
        finally:
            slot[1] -= 1
            if not slot[1]:
                del self._slots[d.webhook_id]

    async def _attempt(self, http: aiohttp.ClientSession, d: store.Due) -> None:
        now = self.clock()
        ts = int(now.timestamp())
        headers = {
            "Content-Type": "application/json", "X-Finmesh-Delivery": d.delivery_id, "X-Finmesh-Event": d.kind,
            "X-Finmesh-Timestamp": str(ts), "X-Finmesh-Signature": domain.sign(d.secret, d.body, ts),
        }
        began = time.perf_counter()
        status, error, reason = 0, "", ""
        try:
            async with http.post(d.url, data=d.body, headers=headers,
                                 timeout=aiohttp.ClientTimeout(total=self.policy.timeout_seconds)) as resp:
                status = resp.status
                if not 200 <= status < 300:
                    error, reason = f"HTTP {status}", f"http_{status}"
        except TimeoutError:
            error, reason = f"no answer within {self.policy.timeout_seconds:g} s", "timeout"
        except aiohttp.ClientError as err:
            error, reason = f"{type(err).__name__}: {err}", "error"
        ms = int((time.perf_counter() - began) * 1000)
        at = self.clock()
        attempt = store.Attempt(ok=not error, http_status=status, error=error, duration_ms=ms, at=at)
        n = d.attempts + 1
        try:
            if not error:
                await store.record_attempt(self.pool, d, attempt, next_attempt_at=None)
                self.metrics.deliveries.labels("delivered", d.kind).inc()
                self.metrics.delivery_latency.observe(max(0.0, (at - d.created_at).total_seconds()))
                return
            self.metrics.webhook_failures.labels(reason).inc()
            if n >= self.policy.max_attempts:
                await store.record_attempt(self.pool, d, attempt, next_attempt_at=None,
                                           dead_reason=f"{n} attempts failed; last: {error}")
                self.metrics.deliveries.labels("dead", d.kind).inc()
                logger.warning("webhook delivery dead", delivery_id=d.delivery_id, url=d.url, error=error)
            else:
                delay = self.policy.delay(n, random.random())
                await store.record_attempt(self.pool, d, attempt, next_attempt_at=at + timedelta(seconds=delay))
                self.metrics.deliveries.labels("retry", d.kind).inc()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:  # the lease runs out: sent again
            logger.warning("recording a delivery attempt failed", delivery_id=d.delivery_id, error=repr(err))
