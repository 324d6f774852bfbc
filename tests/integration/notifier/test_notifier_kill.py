"""The notifier as a process, killed with SIGKILL in the middle of a burst of 1,000 leads: it comes
back and the inboxes hold exactly 1,000 notifications per recipient, and the institution's webhook
receives each of the 1,000 deliveries (dedupe key: X-Finmesh-Delivery)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import asyncpg
import grpc
import pytest
from institution_keys import as_institution, publish_institution
from notifier_support import ENTERPRISE, INSTITUTION, Endpoints, Receiver, matched
from waiting import eventually

from finmesh.notification.v1 import delivery_pb2 as dlv
from finmesh.notification.v1 import delivery_pb2_grpc as dlv_grpc
from finmesh.notification.v1 import notification_pb2 as pb
from finmesh.notification.v1 import notification_pb2_grpc as pb_grpc
from meshkit import codec, topics
from meshkit.kafka import make_producer
from tests.integration.matcher.matcher_support import REPO_ROOT, MatcherProcess, matcher_env

pytestmark = pytest.mark.integration

BURST = 1000


class NotifierProcess(MatcherProcess):
    """``python -m services.notifier`` (the matcher's process helper, another module)."""

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen([sys.executable, "-m", "services.notifier"], cwd=REPO_ROOT, env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()


async def count_all(stub, kind: int, recipient: str) -> int:
    n, token = 0, ""
    while True:
        reply = await stub.ListNotifications(pb.ListNotificationsRequest(
            recipient_kind=kind, recipient_id=recipient, page_size=500, page_token=token))
        n += len(reply.notifications)
        token = reply.next_page_token
        if not token:
            return n


async def test_kill_9_mid_burst_gives_exactly_one_notification_per_lead(
        database_url: str, bootstrap: str, tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("notifier-kill")
    env = {**matcher_env(database_url, bootstrap, "unused"),
           "SERVICE_NAME": f"notifier-k{uuid.uuid4().hex[:6]}"}
    proc = NotifierProcess(env, folder / "notifier.log")
    proc.start()
    tag = uuid.uuid4().hex[:8]
    uscc, inst = f"E{tag}", f"kill-{tag}"
    try:
        await proc.wait_serving()
        async with Endpoints() as server, grpc.aio.insecure_channel(proc.address) as ch:
            receiver = Receiver()
            reply = await as_institution(dlv_grpc.DeliveryServiceStub(ch).RegisterWebhook, dlv.RegisterWebhookRequest(
                institution_id=inst, url=server.add("bank", receiver)), await publish_institution(bootstrap, inst))
            receiver.secret = reply.secret

            producer = make_producer(bootstrap, "test-burst")
            await producer.start()
            try:
                spec = topics.DEMANDS_MATCHED
                for i in range(BURST):
                    msg = matched(f"d-{tag}-{i}", uscc, [inst])
                    await producer.send(spec.name, value=msg.SerializeToString(), key=spec.key_of(msg),
                                        headers=codec.make_headers(spec.event_type, "matcher", codec.new_event_id()))
                await producer.flush()
            finally:
                await producer.stop()

            conn = await asyncpg.connect(database_url)
            try:
                async def recorded() -> int:
                    return await conn.fetchval("SELECT count(*) FROM notifier.notifications WHERE recipient_id = $1",
                                               inst)
                before = await eventually(recorded, lambda n: n >= BURST // 5, timeout=60)
            finally:
                await conn.close()
            proc.proc.kill()  # SIGKILL, mid-burst
            proc.proc.wait()
            killed_at = time.monotonic()
            proc.start()
            await proc.wait_serving()
            stub = pb_grpc.NotificationServiceStub(grpc.aio.insecure_channel(proc.address))
            counts = await eventually(
                lambda: _counts(stub, uscc, inst), lambda c: c == (BURST, BURST), timeout=120)
            assert counts == (BURST, BURST)
            await eventually(lambda: _async(lambda: len({c["delivery"] for c in receiver.delivered()})),
                             lambda n: n >= BURST, timeout=60)
            distinct = {c["delivery"] for c in receiver.delivered()}
            assert len(distinct) == BURST and all(c["signed"] for c in receiver.calls)
            back = time.monotonic() - killed_at
            print(f"\nkilled after {before} of {BURST}; back to {BURST}/{BURST} in {back:.1f} s;"
                  f" webhook calls {len(receiver.calls)} for {len(distinct)} deliveries (re-sent after the crash:"
                  f" {len(receiver.calls) - len(distinct)})")
    finally:
        proc.stop()


async def _counts(stub, uscc: str, inst: str) -> tuple[int, int]:
    return await count_all(stub, ENTERPRISE, uscc), await count_all(stub, INSTITUTION, inst)


async def _async(fn):  # noqa: ANN001, ANN202
    return fn()
