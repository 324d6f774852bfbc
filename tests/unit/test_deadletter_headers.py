"""What the dead-letter tool reads from a record's headers (pure)."""

from __future__ import annotations

from meshkit import codec
from meshkit.deadletters import DeadLetter, Origin, dead_letter_topics, parse_origin
from meshkit.topics import REGISTRY


def letter(*headers: tuple[str, bytes], topic: str = "demand.demand-accepted.v1.dlq") -> DeadLetter:
    return DeadLetter(topic, 0, 12, b"k", b"v", headers)


def test_origin_is_topic_partition_and_offset_and_anything_else_is_none() -> None:
    assert parse_origin("demand.demand-accepted.v1/5@1234") == Origin("demand.demand-accepted.v1", 5, 1234)
    assert parse_origin("a/b/3@4") == Origin("a/b", 3, 4)
    for bad in (None, "", "topic", "topic/1", "topic/x@1", "topic/1@", "/1@2", "topic/1@-2"):
        assert parse_origin(bad) is None, bad


def test_a_replayed_record_keeps_its_own_headers_drops_the_dead_letter_ones_and_says_where_from() -> None:
    own = codec.make_headers("finmesh.demand.v1.DemandAccepted", "demand", "e-1")
    d = letter(*own, (codec.DLQ_REASON, b"boom"), (codec.DLQ_ORIGIN, b"demand.demand-accepted.v1/2@9"),
               (codec.DLQ_CONSUMER, b"finmesh-matcher"), ("replayed-from", b"older"))
    assert d.refusal() is None
    assert d.replay_headers() == [*own, ("replayed-from", b"demand.demand-accepted.v1.dlq/0@12")]


def test_refused_when_cut_short_or_from_elsewhere_or_of_unknown_origin() -> None:
    origin = (codec.DLQ_ORIGIN, b"demand.demand-accepted.v1/2@9")
    assert "cut" in (letter(origin, ("dlq-truncated", b"true")).refusal() or "")
    assert "no dlq-origin" in (letter().refusal() or "")
    assert "is not the topic" in (letter((codec.DLQ_ORIGIN, b"other.topic/0@1")).refusal() or "")
    assert "is not the topic" in (letter(origin, topic="demand.demand-accepted.v1").refusal() or "")


def test_every_dead_letter_topic_of_the_registry_is_listed_and_named_after_its_topic() -> None:
    listed = dead_letter_topics()
    assert "demand.demand-accepted.v1.dlq" in listed and "demand.lead-status-changed.v1.dlq" in listed
    for t in REGISTRY:
        if t.dead_letter is not None:
            assert t.dead_letter.name == f"{t.name}.dlq" and t.dead_letter.name in listed


def test_inboxes_remember_an_event_as_long_as_a_dead_letter_topic_can_give_it_back() -> None:
    from datetime import timedelta

    from meshkit import inbox

    longest = max(t.dead_letter.retention_ms for t in REGISTRY if t.dead_letter is not None)
    assert inbox.KEEP > timedelta(milliseconds=longest)
