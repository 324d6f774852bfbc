"""What the dead-letter tool reads from a record's headers, and its replay marks (pure)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from meshkit import codec, inbox
from meshkit.deadletters import DeadLetter, Mark, Origin, dead_letter_topics, parse_offset, parse_origin
from meshkit.topics import REGISTRY

ORIGIN = (codec.DLQ_ORIGIN, b"demand.demand-accepted.v1/2@9")
KEPT_FAILING = (codec.DLQ_KIND, codec.KEPT_FAILING.encode())


def letter(*headers: tuple[str, bytes], topic: str = "demand.demand-accepted.v1.dlq") -> DeadLetter:
    return DeadLetter(topic, 0, 12, b"k", b"v", headers)


def test_origin_is_topic_partition_and_offset_and_anything_else_is_none() -> None:
    assert parse_origin("demand.demand-accepted.v1/5@1234") == Origin("demand.demand-accepted.v1", 5, 1234)
    assert parse_origin("a/b/3@4") == Origin("a/b", 3, 4)
    for bad in (None, "", "topic", "topic/1", "topic/x@1", "topic/1@", "/1@2", "topic/1@-2"):
        assert parse_origin(bad) is None, bad


def test_a_replayed_record_keeps_its_own_headers_drops_the_dead_letter_ones_and_says_where_from() -> None:
    own = codec.make_headers("finmesh.demand.v1.DemandAccepted", "demand", "e-1")
    d = letter(*own, (codec.DLQ_REASON, b"boom"), ORIGIN, (codec.DLQ_CONSUMER, b"finmesh-matcher"), KEPT_FAILING,
               ("replayed-from", b"older"))
    assert d.refusal() is None
    assert d.replay_headers() == [*own, ("replayed-from", b"demand.demand-accepted.v1.dlq/0@12")]


def test_only_what_its_handler_kept_failing_on_goes_back_unless_asked() -> None:
    unusable = letter(ORIGIN, (codec.DLQ_KIND, codec.UNUSABLE.encode()), (codec.DLQ_REASON, b"not a valid ..."))
    assert "unusable" in (unusable.refusal() or "") and unusable.refusal(unusable_too=True) is None
    # dead-lettered before the kind was recorded: told apart by the reason
    assert letter(ORIGIN, (codec.DLQ_REASON, b"failed 5 times, last with KeyError('x')")).refusal() is None
    assert letter(ORIGIN, (codec.DLQ_REASON, b"demand.amount_fen: must be positive")).refusal() is not None


def test_refused_when_cut_short_from_elsewhere_of_unknown_origin_or_of_a_compacted_topic() -> None:
    assert "cut" in (letter(ORIGIN, KEPT_FAILING, ("dlq-truncated", b"true")).refusal() or "")
    assert "no dlq-origin" in (letter(KEPT_FAILING).refusal() or "")
    assert "is not the topic" in (letter((codec.DLQ_ORIGIN, b"other.topic/0@1"), KEPT_FAILING).refusal() or "")
    assert "is not the topic" in (letter(ORIGIN, KEPT_FAILING, topic="demand.demand-accepted.v1").refusal() or "")
    keys = letter((codec.DLQ_ORIGIN, b"demand.institution-changed.v1/0@3"), KEPT_FAILING,
                  topic="demand.institution-changed.v1.dlq")
    assert "compacted" in (keys.refusal(unusable_too=True) or "")  # an old key digest must never come back


def test_every_dead_letter_topic_of_the_registry_is_listed_and_named_after_its_topic() -> None:
    listed = dead_letter_topics()
    assert "demand.demand-accepted.v1.dlq" in listed and "demand.lead-status-changed.v1.dlq" in listed
    for t in REGISTRY:
        if t.dead_letter is not None:
            assert t.dead_letter.name == f"{t.name}.dlq" and t.dead_letter.name in listed


def test_a_mark_covers_what_is_before_it_and_what_was_replayed_one_by_one() -> None:
    m = Mark(10, frozenset({12, 15}))
    assert [o for o in range(8, 17) if m.done(o)] == [8, 9, 12, 15]
    assert parse_offset("7") == (0, 7) and parse_offset("2@7") == (2, 7)
    for bad in ("", "x", "1@", "@3", "-1"):
        with pytest.raises(ValueError):
            parse_offset(bad)


def test_inboxes_remember_an_event_until_no_dead_letter_topic_can_give_it_back() -> None:
    """A record may be delivered until its topic's retention ends, be dead-lettered then, and be
    replayed until its dead-letter topic's retention ends."""
    dead = {t.dead_letter for t in REGISTRY if t.dead_letter is not None}
    delivered = max(t.retention_ms for t in REGISTRY if t.retention_ms > 0 and t not in dead)
    replayable = max(t.retention_ms for t in dead)
    assert inbox.KEEP > timedelta(milliseconds=delivered + replayable)
