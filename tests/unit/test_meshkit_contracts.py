"""The topic registry, the codec and the small shared helpers."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from finmesh.demand.v1 import demand_pb2, events_pb2
from meshkit import codec, ids, pbtime, topics
from meshkit.errors import ValidationFailed, Violations
from meshkit.paging import Page
from meshkit.settings import ServiceSettings, load


def test_every_topic_is_declared_once_with_a_valid_shape() -> None:
    names = [t.name for t in topics.REGISTRY]
    assert len(names) == len(set(names))
    for t in topics.REGISTRY:
        assert t.partitions >= 1
        assert t.owner and t.description
        if t.message is None:  # dead-letter topics carry the original bytes
            assert t.name.endswith(".dlq")
        else:
            # the key field must exist on the message
            assert t.key_of(t.message()) is not None
        if t.dead_letter is not None:
            assert t.dead_letter in topics.REGISTRY


def test_every_topic_our_services_consume_has_a_dead_letter_topic() -> None:
    services = {"demand", "matcher", "notifier", "roadshow"}
    for t in topics.REGISTRY:
        consumed_by_us = services & set(t.consumers) and t is not topics.CATALOG_CHANGED
        if consumed_by_us and t.message is not None:
            assert t.dead_letter is not None, t.name


def test_topic_names_follow_owner_entity_event_version() -> None:
    for t in topics.REGISTRY:
        assert t.name.split(".")[-1].startswith("v") or t.name.endswith(".dlq"), t.name


def test_lead_topic_per_institution_round_trips_through_spec_for() -> None:
    spec = topics.lead_topic("icbc-xiamen")
    assert spec.name == "leads.icbc-xiamen.v1"
    assert topics.spec_for(spec.name) == spec
    assert topics.spec_for(topics.DEMANDS_ACCEPTED.name) is topics.DEMANDS_ACCEPTED
    with pytest.raises(ValueError):
        topics.lead_topic("Bad Id!")
    with pytest.raises(KeyError):
        topics.spec_for("no.such-topic.v1")


def test_key_of_reads_the_declared_field() -> None:
    msg = events_pb2.DemandAccepted(demand=demand_pb2.Demand(demand_id="d-1"))
    assert topics.DEMANDS_ACCEPTED.key_of(msg) == b"d-1"


def test_codec_round_trip_keeps_headers() -> None:
    msg = events_pb2.DemandAccepted(demand=demand_pb2.Demand(demand_id="d-2"))
    headers = codec.make_headers(topics.DEMANDS_ACCEPTED.event_type, "demand", event_id="e-1")
    env = codec.decode(topics.DEMANDS_ACCEPTED, msg.SerializeToString(), headers)
    assert env.event_id == "e-1"
    assert env.producer == "demand"
    assert env.event_type == "finmesh.demand.v1.DemandAccepted"
    assert env.message.demand.demand_id == "d-2"


@pytest.mark.parametrize(
    ("value", "headers", "reason"),
    [
        (None, [], "empty"),
        (b"\xff\xff\xff", [], "not a valid"),
        (b"x" * (topics.MAX_MESSAGE_BYTES + 1), [], "exceeds the limit"),
        (b"", [(codec.EVENT_TYPE, b"finmesh.other.v1.Thing")], "is not"),
        (b"", [(codec.OCCURRED_AT, b"yesterday")], "RFC 3339"),
    ],
)
def test_codec_refuses_unusable_records_with_a_reason(value, headers, reason) -> None:
    with pytest.raises(codec.PoisonMessage, match=reason):
        codec.decode(topics.DEMANDS_ACCEPTED, value, headers)


def test_a_naive_occurred_at_is_read_as_utc() -> None:
    """A naive timestamp once made every later comparison raise TypeError (retried forever: a jammed partition)."""
    payload = events_pb2.DemandAccepted(demand=demand_pb2.Demand(demand_id="d-4")).SerializeToString()
    env = codec.decode(topics.DEMANDS_ACCEPTED, payload, [(codec.OCCURRED_AT, b"2024-05-01T08:30:00")])
    assert env.occurred_at == datetime(2024, 5, 1, 8, 30, tzinfo=UTC)
    assert env.occurred_at - datetime.now(UTC) < timedelta(0)  # comparable with aware times
    shanghai = codec.decode(topics.DEMANDS_ACCEPTED, payload, [(codec.OCCURRED_AT, b"2024-05-01T16:30:00+08:00")])
    assert shanghai.occurred_at == env.occurred_at


def test_events_without_an_id_get_a_stable_one() -> None:
    payload = events_pb2.DemandAccepted(demand=demand_pb2.Demand(demand_id="d-3")).SerializeToString()
    a = codec.decode(topics.DEMANDS_ACCEPTED, payload, [])
    b = codec.decode(topics.DEMANDS_ACCEPTED, payload, [])
    assert a.event_id == b.event_id


def test_deterministic_ids() -> None:
    assert ids.lead_id("d", "p") == ids.lead_id("d", "p")
    assert ids.lead_id("d", "p") != ids.lead_id("d", "q")
    assert ids.demand_id("API", "k") != ids.demand_id("ONLINE_PORTAL", "k")


@given(st.text(), st.lists(st.text(), max_size=4))
def test_stable_ids_are_the_uuid5_of_their_parts(kind: str, parts: list[str]) -> None:
    # ids already stored must stay the same: the fast formatting is exactly uuid5's
    assert ids.stable_id(kind, *parts) == str(uuid.uuid5(ids.FINMESH, "|".join((kind, *parts))))


@given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1),
                    timezones=st.sampled_from([UTC, timezone(timedelta(hours=8)), timezone(timedelta(hours=-5))])))
def test_timestamps_are_set_as_protobuf_sets_them(at: datetime) -> None:
    ours, theirs = Timestamp(), Timestamp()
    pbtime.set_ts(ours, at)
    theirs.FromDatetime(at)
    assert ours == theirs and pbtime.ts_to_dt(ours) == at


def test_violations_report_every_field_at_once() -> None:
    v = Violations()
    v.check(False, "a", "is wrong")
    v.check(True, "b", "is fine")
    v.add("c", "is missing")
    with pytest.raises(ValidationFailed) as err:
        v.raise_if_any()
    assert [x.field for x in err.value.violations] == ["a", "c"]


def test_page_tokens() -> None:
    first = Page.of(0, "")
    assert first.size == 50 and first.offset == 0
    token = first.next_token(51)
    assert Page.of(0, token).offset == 50
    assert first.next_token(50) == ""
    with pytest.raises(ValidationFailed):
        Page.of(10, "garbage!")


def test_settings_fail_fast_naming_the_variable(monkeypatch, capsys) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgresql://x")
    monkeypatch.setenv("GRPC_PORT", "1")
    monkeypatch.setenv("METRICS_PORT", "not-a-port")
    with pytest.raises(SystemExit) as exit_:
        load(ServiceSettings, service_name="t")
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "KAFKA_BOOTSTRAP_SERVERS" in err and "METRICS_PORT" in err


def test_readme_topic_table_is_current() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert topics.markdown() in readme


def test_lead_topics_share_one_metric_label_and_other_topics_keep_their_name() -> None:
    assert topics.metric_topic(topics.lead_topic("bank-0001").name) == topics.LEADS.name
    assert topics.metric_topic(topics.lead_topic("fund-x").name) == topics.LEADS.name
    assert topics.metric_topic(topics.DEMANDS_MATCHED.name) == topics.DEMANDS_MATCHED.name


@pytest.mark.parametrize(("brokers", "replicas"), [(1, 1), (2, 2), (3, 3), (5, 3)])
def test_topics_get_a_copy_on_each_broker_up_to_three(brokers: int, replicas: int) -> None:
    assert topics.replication_factor(brokers) == replicas
