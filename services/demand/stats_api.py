"""gRPC StatsService (translate and delegate to :mod:`services.demand.stats`), the mapping of
its messages, and the task that keeps the all-time figures on ``/metrics``."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime

import asyncpg
import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from finmesh.common.v1 import finance_pb2 as fin
from finmesh.demand.v1 import demand_pb2 as dpb
from finmesh.stats.v1 import stats_pb2 as spb
from finmesh.stats.v1 import stats_pb2_grpc as spb_grpc
from meshkit import log
from meshkit.errors import ValidationFailed, Violations
from meshkit.lifecycle import Runtime
from meshkit.metrics import Metrics
from services.demand import stats

logger = log.get(__name__)

REFRESH_SECONDS = 15.0
REFRESH_SHARE = 0.01  # of the time, at most, spent recomputing the all-time figures
_EARLIEST = Timestamp(seconds=-62135596800)  # 0001-01-01T00:00:00Z, the smallest valid Timestamp
_LATEST = Timestamp(seconds=253402300799)  # 9999-12-31T23:59:59Z


def _time(ts: Timestamp, field: str, v: Violations, present: bool) -> datetime | None:
    if not present:
        return None
    if not (_EARLIEST.seconds <= ts.seconds <= _LATEST.seconds and 0 <= ts.nanos < 1_000_000_000):
        v.add(field, "is not a valid timestamp")
        return None
    return ts.ToDatetime(tzinfo=UTC)


def query_from_pb(m: spb.GetPlatformStatsRequest, *, now: datetime) -> tuple[stats.Range, stats.Dimension]:
    v = Violations()
    start = _time(m.start_time, "start_time", v, m.HasField("start_time"))
    end = _time(m.end_time, "end_time", v, m.HasField("end_time"))
    try:
        r = stats.check_query(start, end, int(m.dimension), now=now)
    except ValidationFailed as err:
        v.items.extend(err.violations)
    v.raise_if_any()
    return r, stats.Dimension(int(m.dimension))


def figures_to_pb(f: stats.Figures) -> spb.PlatformFigures:
    m = spb.PlatformFigures(
        enterprises_registered=f.enterprises_registered, institutions_registered=f.institutions_registered,
        demands=f.demands, amount_requested_fen=f.amount_requested_fen, leads_issued=f.leads_issued,
        leads_contacted=f.leads_contacted, take_up_bps=f.take_up_bps,
        time_to_contact_avg_seconds=f.time_to_contact_avg_seconds,
        time_to_contact_p90_seconds=f.time_to_contact_p90_seconds, approvals=f.approvals,
        loans_disbursed=f.loans_disbursed, amount_disbursed_fen=f.amount_disbursed_fen,
        medium_long_term_share_bps=f.medium_long_term_share_bps, first_time_borrowers=f.first_time_borrowers,
    )
    if f.demands_yoy_growth_bps is not None:
        m.demands_yoy_growth_bps = f.demands_yoy_growth_bps
    if f.amount_requested_yoy_growth_bps is not None:
        m.amount_requested_yoy_growth_bps = f.amount_requested_yoy_growth_bps
    return m


_ENUMS = {stats.Dimension.KEY_INDUSTRY: fin.KeyIndustry, stats.Dimension.SRDI_TIER: fin.SrdiTier,
          stats.Dimension.CHANNEL: dpb.Channel}


def group_key(dimension: stats.Dimension, key: str) -> str:
    """A group's key as clients see it: enumerations by their value name, the rest as stored."""
    enum = _ENUMS.get(dimension)
    if enum is None:
        return key
    try:
        return enum.Name(int(key))
    except ValueError:  # a number the contract does not know (yet)
        return key


def stats_to_pb(s: stats.Stats) -> spb.GetPlatformStatsResponse:
    groups = sorted(((group_key(s.dimension, k), f) for k, f in s.groups), key=lambda g: g[0])
    m = spb.GetPlatformStatsResponse(
        dimension=int(s.dimension), totals=figures_to_pb(s.totals),
        groups=[spb.PlatformStatsGroup(key=k, figures=figures_to_pb(f)) for k, f in groups],
    )
    if s.range.start is not None:
        m.start_time.FromDatetime(s.range.start)
    m.end_time.FromDatetime(s.range.end)
    m.computed_at.FromDatetime(s.computed_at)
    return m


class StatsApi(spb_grpc.StatsServiceServicer):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def GetPlatformStats(self, request: spb.GetPlatformStatsRequest, context: grpc.aio.ServicerContext
                               ) -> spb.GetPlatformStatsResponse:
        now = datetime.now(UTC)
        r, dimension = query_from_pb(request, now=now)
        return stats_to_pb(await stats.load(self.pool, r, dimension, now=now))


def export(metrics: Metrics, f: stats.Figures) -> None:
    """Set the platform gauges to the all-time figures ``f``."""
    metrics.platform_enterprises.set(f.enterprises_registered)
    metrics.platform_institutions.set(f.institutions_registered)
    metrics.platform_demands.set(f.demands)
    metrics.platform_amount_requested.set(f.amount_requested_fen)
    metrics.platform_leads.set(f.leads_issued)
    metrics.platform_take_up.set(f.take_up_bps)
    metrics.platform_time_to_contact.labels("avg").set(f.time_to_contact_avg_seconds)
    metrics.platform_time_to_contact.labels("p90").set(f.time_to_contact_p90_seconds)
    metrics.platform_approvals.set(f.approvals)
    metrics.platform_loans_disbursed.set(f.loans_disbursed)
    metrics.platform_amount_disbursed.set(f.amount_disbursed_fen)
    metrics.platform_medium_long_term_share.set(f.medium_long_term_share_bps)
    metrics.platform_first_time_borrowers.set(f.first_time_borrowers)
    growths = (("demands", f.demands_yoy_growth_bps), ("amount_requested", f.amount_requested_yoy_growth_bps))
    for label, growth in growths:
        metrics.platform_yoy_growth.labels(label).set(math.nan if growth is None else growth)


def refresh_pause(took: float, every: float = REFRESH_SECONDS, share: float = REFRESH_SHARE) -> float:
    """Seconds to wait before the next refresh, after one that ``took`` seconds: ``every``, or longer
    once the figures (which read every demand and lead) take more than ``share`` of the time."""
    return max(every, took / share)


async def refresh_gauges(pool: asyncpg.Pool, metrics: Metrics) -> None:
    """Recompute the all-time figures and export them (see :func:`refresh_pause`); survives failures."""
    while True:
        began = time.monotonic()
        try:
            now = datetime.now(UTC)
            export(metrics, (await stats.load(pool, stats.Range(None, now), stats.Dimension.NONE, now=now)).totals)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - a database restart: try again next time
            logger.warning("platform statistics not refreshed", error=repr(err))
        await asyncio.sleep(refresh_pause(time.monotonic() - began))


def register(rt: Runtime) -> None:
    """Serve StatsService and keep the platform gauges fresh (from the demand service's ``build``)."""
    rt.grpc.add(spb_grpc.add_StatsServiceServicer_to_server, StatsApi(rt.pool),
                spb.DESCRIPTOR.services_by_name["StatsService"])
    rt.task(lambda: refresh_gauges(rt.pool, rt.metrics))
