"""StatsService.GetPlatformStats on the real PostgreSQL, from a known data set with exact figures.

The data set (all in 2024 and the first half of 2025, so "all time" is the same whenever the
test runs): three enterprises, two institutions, six demands (one a duplicate of another),
five leads with contacts, approvals and disbursements at known times.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from finmesh.stats.v1 import stats_pb2 as spb
from finmesh.stats.v1 import stats_pb2_grpc as spb_grpc
from meshkit import db
from meshkit.grpcserver import GrpcServer, field_violations
from meshkit.metrics import Metrics
from services.demand import stats, stats_api
from services.demand.app import MIGRATIONS, SCHEMA
from services.demand.domain import uscc_check_char

pytestmark = pytest.mark.integration


def at(y: int, m: int, d: int, h: int = 0) -> datetime:
    return datetime(y, m, d, h, tzinfo=UTC)


def uscc(n: int) -> str:
    first17 = f"91350200MA{n:07d}"
    return first17 + uscc_check_char(first17)


E1, E2, E3 = uscc(1), uscc(2), uscc(3)
PORTAL, API = 1, 3
HOUR, DAY = 3600, 86_400

ENTERPRISES = [  # uscc, city, zones, key industry, SRDI tier, has borrowed, registered
    (E1, "Xiamen", ["Civil aircraft", "5G"], 10, 4, False, at(2024, 3, 1)),
    (E2, "Mianyang", [], 3, 3, True, at(2025, 2, 1)),
    (E3, "Xiamen", ["5G"], 3, 1, True, at(2025, 3, 1)),
]
INSTITUTIONS = [("bank-a", at(2024, 1, 10)), ("bank-b", at(2025, 1, 10))]
DEMANDS = [  # id, enterprise, submitted, amount (fen), term, channel, duplicate of
    ("d1", E1, at(2024, 4, 1), 1_000_000, 12, PORTAL, ""),
    ("d2", E1, at(2024, 5, 1), 2_000_000, 24, API, ""),
    ("d3", E1, at(2025, 2, 15), 3_000_000, 36, PORTAL, ""),
    ("d4", E2, at(2025, 3, 10), 1_000_000, 6, API, ""),
    ("d5", E3, at(2025, 4, 1), 500_000, 24, PORTAL, ""),
    ("d6", E3, at(2025, 4, 2), 500_000, 24, PORTAL, "d5"),  # the same need again: not counted
]
LEADS = [  # id, demand, institution, issued, contact after (s), approved, disbursed, amount, offer term
    ("l0", "d1", "bank-a", at(2024, 4, 2), DAY, at(2024, 4, 10), at(2024, 4, 20), 1_000_000, 12),
    ("l1", "d3", "bank-a", at(2025, 2, 16), HOUR, at(2025, 2, 20), at(2025, 3, 1), 2_500_000, 36),
    ("l2", "d3", "bank-b", at(2025, 2, 16), 3 * DAY, None, None, 0, 0),
    ("l3", "d4", "bank-a", at(2025, 3, 11), 2 * HOUR, at(2025, 3, 15), at(2025, 3, 20), 1_000_000, 6),
    ("l4", "d5", "bank-b", at(2025, 4, 2), None, None, None, 0, 0),
]
H1_2025 = (at(2025, 1, 1), at(2025, 7, 1))


async def load_data_set(conn: asyncpg.Connection) -> None:
    for u, city, zones, industry, tier, borrowed, registered in ENTERPRISES:
        await conn.execute(
            "INSERT INTO enterprises (uscc, name, region_code, city, key_industry, size, srdi_tier, founded_year,"
            " has_borrowed, special_zones, registered_at) VALUES ($1, 'E', '350200', $2, $3, 2, $4, 2010, $5, $6, $7)",
            u, city, industry, tier, borrowed, zones, registered,
        )
    for iid, registered in INSTITUTIONS:
        await conn.execute(
            "INSERT INTO institutions (institution_id, name, type, contact_sla_hours, lead_topic, registered_at)"
            " VALUES ($1, $1, 1, 72, 'leads.' || $1 || '.v1', $2)", iid, registered,
        )
    borrowed = {u: b for u, _, _, _, _, b, _ in ENTERPRISES}
    for did, u, submitted, amount, term, channel, duplicate_of in DEMANDS:
        await conn.execute(
            "INSERT INTO demands (demand_id, channel, idempotency_key, content_hash, enterprise_uscc, amount_fen,"
            " term_months, max_rate_bps, loan_category, purpose, valid_until, docking_mode, status, submitted_at,"
            " updated_at, enterprise, duplicate_of)"
            " VALUES ($1, $2, $1, 'h', $3, $4, $5, 500, 0, 1, $6, 1, $7, $6, $6, $8::jsonb, $9)",
            did, channel, u, amount, term, submitted, 13 if duplicate_of else 3,
            json.dumps({"uscc": u, "has_borrowed": borrowed[u]}), duplicate_of,
        )
    for lid, did, iid, issued, contact_after, approved, disbursed, amount, offer_term in LEADS:
        contacted = issued + timedelta(seconds=contact_after) if contact_after is not None else None
        await conn.execute(
            "INSERT INTO leads (lead_id, demand_id, institution_id, product_id, product_version, origin, score, rank,"
            " explanation, rules_version, status, created_at, contacted_at, offer_term_months, disbursed_amount_fen,"
            " disbursed_at) VALUES ($1, $2, $3, 'p', 1, 1, 80, 1, '[]', 'r1', 2, $4, $5, $6, $7, $8)",
            lid, did, iid, issued, contacted, offer_term, amount, disbursed,
        )
        history = [(1, issued), (2, issued)] + ([(3, contacted)] if contacted else [])
        history += [(4, approved), (5, approved)] if approved else []
        history += [(6, disbursed)] if disbursed else []
        for seq, (status, when) in enumerate(history, 1):
            await conn.execute("INSERT INTO lead_history (lead_id, seq, status, at, actor, reason)"
                               " VALUES ($1, $2, $3, $4, 'bank', '')", lid, seq, status, when)


@pytest.fixture(scope="module")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    await db.migrate(database_url, SCHEMA, MIGRATIONS)
    p = await db.create_pool(database_url, schema=SCHEMA)
    async with p.acquire() as conn:
        await load_data_set(conn)
    yield p
    await p.close()


@pytest.fixture(scope="module")
async def client(pool: asyncpg.Pool) -> AsyncIterator[spb_grpc.StatsServiceStub]:
    server = GrpcServer(service="stats-test", host="127.0.0.1", port=0, metrics=Metrics())
    server.add(spb_grpc.add_StatsServiceServicer_to_server, stats_api.StatsApi(pool),
               spb.DESCRIPTOR.services_by_name["StatsService"])
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield spb_grpc.StatsServiceStub(channel)
    await server.stop(1)


def ts(when: datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(when)
    return t


async def get(client: spb_grpc.StatsServiceStub, rng: tuple[datetime, datetime] | None = None,
              dimension: int = 0) -> spb.GetPlatformStatsResponse:
    request = spb.GetPlatformStatsRequest(dimension=dimension)  # type: ignore[arg-type]
    if rng:
        request.start_time.CopyFrom(ts(rng[0]))
        request.end_time.CopyFrom(ts(rng[1]))
    return await client.GetPlatformStats(request, timeout=10)


def fig(**kw: int) -> spb.PlatformFigures:
    return spb.PlatformFigures(**kw)


ALL_TIME = fig(
    enterprises_registered=3, institutions_registered=2, demands=5, amount_requested_fen=7_500_000,
    leads_issued=5, leads_contacted=4, take_up_bps=8_000,
    time_to_contact_avg_seconds=89_100,  # (1 d + 1 h + 3 d + 2 h) / 4
    time_to_contact_p90_seconds=3 * DAY, approvals=3, loans_disbursed=3, amount_disbursed_fen=4_500_000,
    medium_long_term_share_bps=5_556,  # 2.5 of 4.5 million on a 36-month term
    first_time_borrowers=1, demands_yoy_growth_bps=0, amount_requested_yoy_growth_bps=0,
)
H1_TOTALS = fig(
    enterprises_registered=2, institutions_registered=1, demands=3, amount_requested_fen=4_500_000,
    leads_issued=4, leads_contacted=3, take_up_bps=7_500, time_to_contact_avg_seconds=90_000,
    time_to_contact_p90_seconds=3 * DAY, approvals=2, loans_disbursed=2, amount_disbursed_fen=3_500_000,
    medium_long_term_share_bps=7_143, first_time_borrowers=1,
    demands_yoy_growth_bps=5_000, amount_requested_yoy_growth_bps=5_000,  # 2 demands, 3 million in H1 2024
)


async def test_all_time_totals(client: spb_grpc.StatsServiceStub) -> None:
    before = datetime.now(UTC)
    reply = await get(client)
    assert reply.totals == ALL_TIME
    assert not reply.HasField("start_time") and reply.end_time.ToDatetime(tzinfo=UTC) >= before
    assert list(reply.groups) == []


async def test_a_range_against_the_same_range_a_year_earlier(client: spb_grpc.StatsServiceStub) -> None:
    reply = await get(client, H1_2025)
    assert reply.totals == H1_TOTALS
    assert reply.start_time.ToDatetime(tzinfo=UTC) == H1_2025[0]


async def test_an_open_start_and_an_empty_range(client: spb_grpc.StatsServiceStub) -> None:
    reply = await client.GetPlatformStats(spb.GetPlatformStatsRequest(end_time=ts(at(2025, 1, 1))), timeout=10)
    t = reply.totals
    assert (t.enterprises_registered, t.institutions_registered, t.demands, t.amount_requested_fen) == \
        (1, 1, 2, 3_000_000)
    assert (t.leads_issued, t.leads_contacted, t.approvals, t.loans_disbursed, t.medium_long_term_share_bps) == \
        (1, 1, 1, 1, 0)  # a 12-month loan is not medium or long-term
    assert not t.HasField("demands_yoy_growth_bps")  # nothing before 2024
    empty = await get(client, (at(2020, 1, 1), at(2021, 1, 1)), dimension=spb.DIMENSION_PILOT_CITY)
    assert empty.totals == fig() and list(empty.groups) == []


async def test_by_pilot_city(client: spb_grpc.StatsServiceStub) -> None:
    reply = await get(client, H1_2025, spb.DIMENSION_PILOT_CITY)
    assert reply.totals == H1_TOTALS
    groups = {g.key: g.figures for g in reply.groups}
    assert list(groups) == ["Mianyang", "Xiamen"]
    assert groups["Xiamen"] == fig(
        enterprises_registered=1, demands=2, amount_requested_fen=3_500_000, leads_issued=3, leads_contacted=2,
        take_up_bps=6_667, time_to_contact_avg_seconds=131_400, time_to_contact_p90_seconds=3 * DAY, approvals=1,
        loans_disbursed=1, amount_disbursed_fen=2_500_000, medium_long_term_share_bps=10_000, first_time_borrowers=1,
        demands_yoy_growth_bps=0, amount_requested_yoy_growth_bps=1_667,
    )
    assert groups["Mianyang"] == fig(
        enterprises_registered=1, demands=1, amount_requested_fen=1_000_000, leads_issued=1, leads_contacted=1,
        take_up_bps=10_000, time_to_contact_avg_seconds=7_200, time_to_contact_p90_seconds=7_200, approvals=1,
        loans_disbursed=1, amount_disbursed_fen=1_000_000,
    )


async def test_by_channel_and_by_institution(client: spb_grpc.StatsServiceStub) -> None:
    channels = {g.key: g.figures for g in (await get(client, H1_2025, spb.DIMENSION_CHANNEL)).groups}
    assert list(channels) == ["CHANNEL_API", "CHANNEL_ONLINE_PORTAL"]
    portal, api = channels["CHANNEL_ONLINE_PORTAL"], channels["CHANNEL_API"]
    assert (portal.demands, portal.amount_requested_fen, portal.demands_yoy_growth_bps,
            portal.amount_requested_yoy_growth_bps) == (2, 3_500_000, 10_000, 25_000)
    assert (api.demands, api.amount_requested_fen, api.demands_yoy_growth_bps,
            api.amount_requested_yoy_growth_bps) == (1, 1_000_000, 0, -5_000)
    assert portal.enterprises_registered == portal.institutions_registered == 0  # not by channel

    banks = {g.key: g.figures for g in (await get(client, H1_2025, spb.DIMENSION_INSTITUTION)).groups}
    assert banks["bank-a"] == fig(
        demands=2, amount_requested_fen=4_000_000, leads_issued=2, leads_contacted=2, take_up_bps=10_000,
        time_to_contact_avg_seconds=5_400, time_to_contact_p90_seconds=7_200, approvals=2, loans_disbursed=2,
        amount_disbursed_fen=3_500_000, medium_long_term_share_bps=7_143, first_time_borrowers=1,
        demands_yoy_growth_bps=10_000, amount_requested_yoy_growth_bps=30_000,
    )
    assert banks["bank-b"] == fig(
        institutions_registered=1, demands=2, amount_requested_fen=3_500_000, leads_issued=2, leads_contacted=1,
        take_up_bps=5_000, time_to_contact_avg_seconds=3 * DAY, time_to_contact_p90_seconds=3 * DAY,
    )


async def test_by_zone_industry_and_tier(client: spb_grpc.StatsServiceStub) -> None:
    zones = {g.key: g.figures for g in (await get(client, H1_2025, spb.DIMENSION_SPECIAL_ZONE)).groups}
    assert list(zones) == ["", "5G", "Civil aircraft"]  # "" = in no zone
    assert (zones["5G"].enterprises_registered, zones["5G"].demands, zones["5G"].amount_requested_fen) == \
        (1, 2, 3_500_000)  # E1 (registered earlier) and E3
    assert (zones["Civil aircraft"].demands, zones["Civil aircraft"].loans_disbursed) == (1, 1)
    assert (zones[""].enterprises_registered, zones[""].demands, zones[""].approvals) == (1, 1, 1)

    industries = {g.key: g.figures for g in (await get(client, H1_2025, spb.DIMENSION_KEY_INDUSTRY)).groups}
    assert {k: (f.demands, f.leads_issued) for k, f in industries.items()} == {
        "KEY_INDUSTRY_AEROSPACE": (1, 2), "KEY_INDUSTRY_INTELLIGENT_EQUIPMENT": (2, 2)}
    tiers = {g.key: g.figures for g in (await get(client, H1_2025, spb.DIMENSION_SRDI_TIER)).groups}
    assert {k: f.enterprises_registered for k, f in tiers.items()} == {
        "SRDI_TIER_LITTLE_GIANT": 0, "SRDI_TIER_NONE": 1, "SRDI_TIER_PROVINCIAL": 1}


async def test_invalid_requests_name_every_wrong_field(client: spb_grpc.StatsServiceStub) -> None:
    request = spb.GetPlatformStatsRequest(start_time=ts(at(2025, 6, 1)), end_time=ts(at(2025, 1, 1)),
                                          dimension=42)  # type: ignore[arg-type]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.GetPlatformStats(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(err.value)) == {"end_time", "dimension"}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.GetPlatformStats(spb.GetPlatformStatsRequest(start_time=Timestamp(seconds=10**12)), timeout=10)
    assert set(field_violations(err.value)) == {"start_time"}


async def test_the_gauges_show_the_all_time_figures(pool: asyncpg.Pool) -> None:
    metrics = Metrics()
    now = datetime.now(UTC)
    stats_api.export(metrics, (await stats.load(pool, stats.Range(None, now), stats.Dimension.NONE)).totals)
    sample = metrics.registry.get_sample_value
    assert sample("finmesh_platform_demands") == 5
    assert sample("finmesh_platform_amount_disbursed_fen") == 4_500_000
    assert sample("finmesh_platform_take_up_bps") == 8_000
    assert sample("finmesh_platform_time_to_contact_seconds", {"stat": "p90"}) == 3 * DAY
    assert sample("finmesh_platform_yoy_growth_bps", {"figure": "demands"}) == 0
