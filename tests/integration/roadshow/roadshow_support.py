"""Helpers of the roadshow's integration tests (the demand tests' helpers are reused)."""

from __future__ import annotations

import sys
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "demand"))

from demand_support import (  # noqa: E402, F401, I001 - the demand tests' helpers
    WAN, enterprise, eventually, headers, new_uscc, read_topic, registered, rpc_error, submit,
)

from finmesh.common.v1 import finance_pb2 as fin  # noqa: E402
from finmesh.demand.v1 import demand_pb2 as dm  # noqa: E402
from finmesh.institution.v1 import institution_pb2 as inst  # noqa: E402
from finmesh.roadshow.v1 import events_pb2 as ev  # noqa: E402
from finmesh.roadshow.v1 import roadshow_pb2 as rs  # noqa: E402
from meshkit import topics  # noqa: E402


def ts(at: datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(at)
    return t


async def create(stub, now: datetime, *, held_in: timedelta = timedelta(days=10),  # noqa: ANN001
                 close_in: timedelta = timedelta(days=5), capacity: int = 2,
                 industry: int = fin.KEY_INDUSTRY_INTELLIGENT_EQUIPMENT) -> rs.Roadshow:
    reply = await stub.CreateRoadshow(rs.CreateRoadshowRequest(request_id=f"req-{uuid.uuid4()}", roadshow=rs.Roadshow(
        theme="Intelligent manufacturing equipment", theme_kind=rs.THEME_KIND_KEY_INDUSTRY, theme_industry=industry,
        city="Xiamen", held_at=ts(now + held_in), applications_close_at=ts(now + close_in), capacity=capacity)))
    assert reply.created
    return reply.roadshow


async def until_status(stub, roadshow_id: str, status: int) -> rs.Roadshow:  # noqa: ANN001
    x = await eventually(lambda: stub.GetRoadshow(rs.GetRoadshowRequest(roadshow_id=roadshow_id)),
                         lambda reply: reply.roadshow.status == status, timeout=20)
    assert x.roadshow.status == status, x
    return x.roadshow


async def when_known(call, timeout: float = 20.0):  # noqa: ANN001, ANN201
    """``call()`` retried while the roadshow does not know the enterprise or institution yet."""
    async def attempt():  # noqa: ANN202
        try:
            return await call()
        except grpc.aio.AioRpcError as err:
            if "registered on the platform" in (err.details() or ""):
                return None
            return err

    result = await eventually(attempt, lambda x: x is not None, timeout=timeout)
    assert result is not None, "never known to the roadshow service"
    return result


async def apply(stub, roadshow_id: str, uscc: str, amount_fen: int = 500 * WAN):  # noqa: ANN001, ANN201
    return await when_known(lambda: stub.Apply(rs.ApplyRequest(
        roadshow_id=roadshow_id, enterprise_uscc=uscc, amount_sought_fen=amount_fen,
        purpose=dm.PURPOSE_TECHNOLOGY_UPGRADE, pitch="precision spindles")))


async def register_institution(stubs, name: str, type_: int = inst.INSTITUTION_TYPE_FUND) -> tuple[str, str]:
    institution_id = f"{name}-{uuid.uuid4().hex[:6]}"
    reply = await stubs.institutions.RegisterInstitution(inst.RegisterInstitutionRequest(institution=inst.Institution(
        institution_id=institution_id, name=name.upper(), type=type_, regions_served=["35"])))
    return institution_id, reply.api_key


async def notices(bootstrap: str, roadshow_id: str, expected: int, linger: float = 1.5,
                  recipients: set[str] | None = None) -> list[ev.RoadshowNotice]:
    """The notices of one roadshow on the notice topic (to ``recipients`` only, if given: the broker
    is shared with other tests' enterprises), once ``expected`` have arrived (and ``linger`` more
    seconds, to catch duplicates)."""
    def mine(rec) -> bool:  # noqa: ANN001
        notice = ev.RoadshowNotice.FromString(rec.value)
        return notice.roadshow_id == roadshow_id and (recipients is None or notice.recipient_id in recipients)

    found = await read_topic(bootstrap, topics.ROADSHOW_NOTICES.name, lambda xs: len(xs) >= expected, mine,
                             timeout=20, linger=linger)
    return [ev.RoadshowNotice.FromString(x.value) for x in found]
