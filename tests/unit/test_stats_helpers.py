"""Platform statistics: the pure helpers and the request and response mapping."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from finmesh.common.v1 import finance_pb2 as fin
from finmesh.demand.v1 import demand_pb2 as dpb
from finmesh.stats.v1 import stats_pb2 as spb
from meshkit.errors import ValidationFailed
from services.demand import stats
from services.demand.stats import Aggregates, Dimension, Range
from services.demand.stats_api import figures_to_pb, group_key, query_from_pb, refresh_pause

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("part", "whole", "bps"), [
    (0, 0, 0), (5, 0, 0), (0, 7, 0), (1, 1, 10_000), (1, 3, 3_333), (2, 3, 6_667), (1, 8, 1_250),
    (6411, 10_000, 6_411), (1, 20_000, 1), (1, 20_001, 0), (3, 2, 15_000),
])
def test_ratio_bps_rounds_half_up(part: int, whole: int, bps: int) -> None:
    assert stats.ratio_bps(part, whole) == bps


@pytest.mark.parametrize(("current", "previous", "bps"), [
    (140, 100, 4_000), (100, 100, 0), (50, 100, -5_000), (0, 100, -10_000), (1, 3, -6_667), (5, 3, 6_667),
    (300, 100, 20_000), (7, 0, None), (0, 0, None),
])
def test_growth_bps(current: int, previous: int, bps: int | None) -> None:
    assert stats.growth_bps(current, previous) == bps


def test_mean_rounded() -> None:
    assert stats.mean_rounded(0, 0) == 0
    assert stats.mean_rounded(10, 4) == 3  # 2.5 rounds up
    assert stats.mean_rounded(9, 4) == 2
    assert stats.mean_rounded(3 * 86_400, 1) == 259_200


def test_year_earlier_keeps_the_calendar_date() -> None:
    assert stats.year_earlier(datetime(2026, 3, 1, tzinfo=UTC)) == datetime(2025, 3, 1, tzinfo=UTC)
    assert stats.year_earlier(datetime(2024, 2, 29, 8, tzinfo=UTC)) == datetime(2023, 2, 28, 8, tzinfo=UTC)
    r = Range(datetime(2026, 1, 1, tzinfo=UTC), NOW).year_earlier()
    assert r == Range(datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 11, 26, 12, 0, tzinfo=UTC))
    assert Range(None, NOW).year_earlier().start is None


def test_check_query_defaults_end_to_now() -> None:
    assert stats.check_query(None, None, 0, now=NOW) == Range(None, NOW)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert stats.check_query(start, None, Dimension.CHANNEL, now=NOW) == Range(start, NOW)


def test_check_query_names_every_wrong_field() -> None:
    with pytest.raises(ValidationFailed) as err:
        stats.check_query(NOW, datetime(2026, 1, 1, tzinfo=UTC), 99, now=NOW)
    assert {v.field for v in err.value.violations} == {"dimension", "end_time"}
    with pytest.raises(ValidationFailed) as err:
        stats.check_query(datetime(2027, 1, 1, tzinfo=UTC), None, 0, now=NOW)
    assert [v.field for v in err.value.violations] == ["start_time"]


def test_figures_from_aggregates() -> None:
    f = stats.figures(Aggregates(
        enterprises=3, institutions=2, demands=14, amount_fen=1_400, demands_before=10, amount_fen_before=1_000,
        leads=8, contacted=6, contact_seconds_total=100, contact_seconds_p90=40, approvals=3, loans=2,
        disbursed_fen=1_000, disbursed_long_fen=641, first_time_borrowers=1,
    ))
    assert f.take_up_bps == 7_500
    assert f.time_to_contact_avg_seconds == 17  # 16.67
    assert f.time_to_contact_p90_seconds == 40
    assert f.medium_long_term_share_bps == 6_410
    assert f.demands_yoy_growth_bps == 4_000
    assert f.amount_requested_yoy_growth_bps == 4_000
    empty = stats.figures(Aggregates())
    assert (empty.take_up_bps, empty.time_to_contact_avg_seconds, empty.demands_yoy_growth_bps) == (0, 0, None)


def test_group_keys_use_the_contract_names() -> None:
    assert group_key(Dimension.KEY_INDUSTRY, "10") == "KEY_INDUSTRY_AEROSPACE"
    assert group_key(Dimension.KEY_INDUSTRY, "9") == fin.KeyIndustry.Name(fin.KEY_INDUSTRY_5G_INDUSTRIAL_INTERNET)
    assert group_key(Dimension.SRDI_TIER, "4") == "SRDI_TIER_LITTLE_GIANT"
    assert group_key(Dimension.CHANNEL, "1") == dpb.Channel.Name(dpb.CHANNEL_ONLINE_PORTAL)
    assert group_key(Dimension.KEY_INDUSTRY, "77") == "77"
    assert group_key(Dimension.PILOT_CITY, "Xiamen") == "Xiamen"
    assert group_key(Dimension.SPECIAL_ZONE, "") == ""


def test_dimensions_are_numbered_as_the_contract() -> None:
    assert {d.name: d.value for d in Dimension} == {
        spb.Dimension.Name(v).removeprefix("DIMENSION_").replace("UNSPECIFIED", "NONE"): v
        for v in spb.Dimension.values()
    }


def test_query_from_pb() -> None:
    r, dim = query_from_pb(spb.GetPlatformStatsRequest(), now=NOW)
    assert (r, dim) == (Range(None, NOW), Dimension.NONE)
    m = spb.GetPlatformStatsRequest(dimension=spb.DIMENSION_SPECIAL_ZONE, start_time=Timestamp(seconds=0))
    r, dim = query_from_pb(m, now=NOW)  # an explicitly set epoch is a start, not "unset"
    assert r.start == datetime(1970, 1, 1, tzinfo=UTC) and dim == Dimension.SPECIAL_ZONE


def test_query_from_pb_rejects_bad_timestamps_and_dimension() -> None:
    m = spb.GetPlatformStatsRequest(start_time=Timestamp(seconds=10**12), end_time=Timestamp(seconds=5, nanos=-1),
                                    dimension=42)  # type: ignore[arg-type]
    with pytest.raises(ValidationFailed) as err:
        query_from_pb(m, now=NOW)
    assert {v.field for v in err.value.violations} == {"start_time", "end_time", "dimension"}


def test_growth_is_unset_in_the_response_when_undefined() -> None:
    m = figures_to_pb(stats.figures(Aggregates(demands=3, amount_fen=30)))
    assert not m.HasField("demands_yoy_growth_bps") and not m.HasField("amount_requested_yoy_growth_bps")
    m = figures_to_pb(stats.figures(Aggregates(demands=0, amount_fen=0, demands_before=2, amount_fen_before=20)))
    assert m.demands_yoy_growth_bps == -10_000 and m.amount_requested_yoy_growth_bps == -10_000


@pytest.mark.parametrize(("took", "pause"), [(0.02, 15.0), (0.15, 15.0), (0.5, 50.0), (3.0, 300.0)])
def test_the_gauges_refresh_every_15_s_until_that_costs_more_than_1_percent(took: float, pause: float) -> None:
    # the all-time figures read every demand and lead: as the tables grow, they are recomputed less often
    assert refresh_pause(took) == pytest.approx(pause)
