"""Dead-letter topics, for operators: what is on them, and putting their records back.

A consumer dead-letters a record it can never use, or one its handler kept failing on (see
:mod:`meshkit.kafka`), with why and where from in its ``dlq-*`` headers. Once the cause is fixed
(a defect deployed again, a missing reference created), ``replay`` publishes those records again,
unchanged, to the partition they came from. Every consumer dedupes on the event id, so the groups
that had handled a record skip it, and only the one that could not handle it acts.

    python -m meshkit.deadletters list                 # every dead-letter topic: records kept, not replayed yet
    python -m meshkit.deadletters show TOPIC.dlq       # its records: origin, consumer, event, reason
    python -m meshkit.deadletters replay TOPIC.dlq [--consumer GROUP] [--offset [P@]N ...] [--unusable-too]
                                                   [--dry-run]

``replay`` takes the records after the partition's replay mark, kept on the compacted topic
``ops.deadletter-replay-marks.v1``, and moves the mark past them once the broker has acknowledged
them: a second replay, however long after, puts nothing back twice. ``--consumer`` or ``--offset``
replays only the records chosen; the mark remembers them, so a later full replay skips them. A
record refused or replayed before goes back again only when named with ``--offset``. Each origin
record goes back once, however many groups dead-lettered a copy of it. Run one replay of a topic
at a time.

Never replayed (reported as refused):
- a record whose handler did not fail but which was itself unusable (undecodable, invalid): the
  same bytes would be refused again, by every group; ``--unusable-too`` replays those as well,
  for when the fix was to what is accepted;
- a record cut to fit the dead-letter topic, or whose origin is not the topic the dead-letter
  topic belongs to;
- a record of a compacted topic (enterprises, institutions): replayed, an older version would
  become its key's latest and, once compacted, replace the newer one for every new reader; have
  the owning service announce the entity again instead (a change, or ``RotateApiKey``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord

from finmesh.ops.v1 import deadletters_pb2 as ops_pb
from meshkit import codec
from meshkit.kafka import ensure_topics, make_producer
from meshkit.pbtime import set_ts
from meshkit.topics import DEADLETTER_REPLAY_MARKS, REGISTRY, spec_for

DLQ_SUFFIX = ".dlq"
REPLAYED_FROM = "replayed-from"  # header of a replayed record: the dead-letter topic/partition@offset
TRUNCATED = "dlq-truncated"


@dataclass(frozen=True, slots=True)
class Origin:
    topic: str
    partition: int
    offset: int


def parse_origin(text: str | None) -> Origin | None:
    """The ``dlq-origin`` header (``topic/partition@offset``), or None if missing or malformed."""
    if not text or "/" not in text or "@" not in text:
        return None
    topic, _, rest = text.rpartition("/")
    partition, _, offset = rest.partition("@")
    if not topic or not partition.isdigit() or not offset.isdigit():
        return None
    return Origin(topic, int(partition), int(offset))


def _compacted(topic: str) -> bool:
    try:
        return spec_for(topic).compacted
    except (KeyError, ValueError):  # not in the registry (another application's, a test's)
        return False


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record of a dead-letter topic, as an operator reads it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    @classmethod
    def of(cls, r: ConsumerRecord) -> DeadLetter:
        return cls(r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers or ()))

    def header(self, name: str) -> str | None:
        return codec.header(list(self.headers), name)

    @property
    def origin(self) -> Origin | None:
        return parse_origin(self.header(codec.DLQ_ORIGIN))

    @property
    def kept_failing(self) -> bool:
        """Set aside because its handler failed every try (not because the record was unusable)."""
        kind = self.header(codec.DLQ_KIND)
        if kind is not None:
            return kind == codec.KEPT_FAILING
        reason = self.header(codec.DLQ_REASON) or ""  # dead-lettered before the kind was recorded
        return reason.startswith("failed ") and " times, last with " in reason

    def refusal(self, *, unusable_too: bool = False) -> str | None:
        """Why this record cannot be replayed, or None if it can."""
        if self.header(TRUNCATED) == "true":
            return "its value was cut to fit the dead-letter topic"
        origin = self.origin
        if origin is None:
            return "no dlq-origin header says where it came from"
        if not self.topic.endswith(DLQ_SUFFIX) or origin.topic != self.topic[:-len(DLQ_SUFFIX)]:
            return f"its origin {origin.topic!r} is not the topic {self.topic!r} belongs to"
        if _compacted(origin.topic):
            return (f"{origin.topic} is compacted: an older version would replace the newer one; have its owner "
                    "announce the entity again")
        if not unusable_too and not self.kept_failing:
            return "the record itself was unusable, and would be refused again (--unusable-too replays it)"
        return None

    def replay_headers(self) -> list[tuple[str, bytes]]:
        """The record's own headers (event id, type, time, producer), without the ``dlq-*`` ones,
        and where it was replayed from."""
        kept = [(k, v) for k, v in self.headers if not k.startswith("dlq-") and k != REPLAYED_FROM]
        return [*kept, (REPLAYED_FROM, f"{self.topic}/{self.partition}@{self.offset}".encode())]


def dead_letter_topics() -> list[str]:
    """The registry's dead-letter topics."""
    return sorted({t.dead_letter.name for t in REGISTRY if t.dead_letter is not None})


@dataclass
class Mark:
    """How far a partition of a dead-letter topic has been replayed."""

    next_offset: int = 0
    also_replayed: frozenset[int] = frozenset()  # offsets at or past next_offset, replayed one by one

    def done(self, offset: int) -> bool:
        return offset < self.next_offset or offset in self.also_replayed


def mark_id(topic: str, partition: int) -> str:
    return f"{topic}/{partition}"


async def _partitions(bootstrap: str, topic: str) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described["error_code"] or not described["partitions"]:
        raise LookupError(f"topic {topic!r} does not exist")
    return [TopicPartition(topic, p) for p in sorted(p["partition"] for p in described["partitions"])]


async def _read_all(consumer: AIOKafkaConsumer, tps: Sequence[TopicPartition], start: dict[TopicPartition, int]
                    ) -> tuple[list[ConsumerRecord], dict[TopicPartition, int]]:
    """Every record of ``tps`` from ``start`` to the end offsets as they are now."""
    end = await consumer.end_offsets(list(tps))
    consumer.assign(list(tps))
    for tp in tps:
        consumer.seek(tp, start[tp])
    out: list[ConsumerRecord] = []
    todo = {tp for tp in tps if start[tp] < end[tp]}
    while todo:
        batch = await consumer.getmany(*todo, timeout_ms=1000)
        for tp, records in batch.items():
            out += [r for r in records if r.offset < end[tp]]
        todo = {tp for tp in todo if await consumer.position(tp) < end[tp]}
    return out, end


def _consumer(bootstrap: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                            auto_offset_reset="earliest", fetch_max_wait_ms=100)


async def marks(bootstrap: str) -> dict[str, Mark]:
    """The latest replay mark of every dead-letter partition (none: never replayed)."""
    await ensure_topics(bootstrap, [DEADLETTER_REPLAY_MARKS])
    tps = await _partitions(bootstrap, DEADLETTER_REPLAY_MARKS.name)
    consumer = _consumer(bootstrap)
    await consumer.start()
    try:
        first = await consumer.beginning_offsets(tps)
        records, _ = await _read_all(consumer, tps, first)
    finally:
        await consumer.stop()
    out: dict[str, Mark] = {}
    for r in records:
        m = ops_pb.ReplayMark.FromString(r.value)
        out[m.mark_id] = Mark(m.next_offset, frozenset(m.also_replayed))
    return out


async def _save_marks(bootstrap: str, topic: str, new: dict[int, tuple[Mark, int]]) -> None:
    """Record the marks of ``topic``'s partitions (partition -> (mark, records replayed))."""
    producer = make_producer(bootstrap, "deadletters-replay")
    await producer.start()
    try:
        for partition, (m, replayed) in new.items():
            msg = ops_pb.ReplayMark(mark_id=mark_id(topic, partition), topic=topic, partition=partition,
                                    next_offset=m.next_offset, replayed=replayed, also_replayed=sorted(m.also_replayed))
            set_ts(msg.replayed_at, codec.now())
            await producer.send_and_wait(DEADLETTER_REPLAY_MARKS.name, key=msg.mark_id.encode(),
                                         value=msg.SerializeToString())
    finally:
        await producer.stop()


@dataclass
class Span:
    """A dead-letter topic's records: kept on the broker, and not replayed yet (None: no such topic)."""

    topic: str
    kept: int | None
    pending: int | None


async def spans(bootstrap: str, names: Sequence[str]) -> list[Span]:
    known = await marks(bootstrap)
    consumer = _consumer(bootstrap)
    await consumer.start()
    out = []
    try:
        for name in names:
            try:
                tps = await _partitions(bootstrap, name)
            except LookupError:
                out.append(Span(name, None, None))
                continue
            first = await consumer.beginning_offsets(tps)
            end = await consumer.end_offsets(tps)
            pending = 0
            for tp in tps:
                m = known.get(mark_id(name, tp.partition), Mark())
                start = max(first[tp], m.next_offset)
                pending += end[tp] - start - sum(1 for o in m.also_replayed if start <= o < end[tp])
            out.append(Span(name, sum(end[tp] - first[tp] for tp in tps), pending))
    finally:
        await consumer.stop()
    return out


async def read(bootstrap: str, topic: str, *, pending_only: bool = False) -> list[DeadLetter]:
    """The records of ``topic`` now on the broker (only those not replayed yet, with ``pending_only``)."""
    records, _, known = await _read(bootstrap, topic, from_start=not pending_only)
    return [d for d in records
            if not pending_only or not known.get(mark_id(topic, d.partition), Mark()).done(d.offset)]


async def _read(bootstrap: str, topic: str, *, from_start: bool
                ) -> tuple[list[DeadLetter], dict[TopicPartition, int], dict[str, Mark]]:
    """The records of ``topic`` (kept on the broker, or only after the replay marks), its end offsets
    now, and the replay marks."""
    tps = await _partitions(bootstrap, topic)
    known = await marks(bootstrap)
    consumer = _consumer(bootstrap)
    await consumer.start()
    try:
        first = await consumer.beginning_offsets(tps)
        start = {tp: first[tp] if from_start else max(first[tp], known.get(mark_id(topic, tp.partition),
                                                                             Mark()).next_offset) for tp in tps}
        records, end = await _read_all(consumer, tps, start)
    finally:
        await consumer.stop()
    return sorted((DeadLetter.of(r) for r in records), key=lambda d: (d.partition, d.offset)), end, known


def parse_offset(text: str) -> tuple[int, int]:
    """``--offset``: ``N`` (partition 0) or ``P@N``."""
    partition, sep, offset = text.partition("@")
    if not sep:
        partition, offset = "0", partition
    if not partition.isdigit() or not offset.isdigit():
        raise ValueError(f"--offset {text!r} is not N or PARTITION@N")
    return int(partition), int(offset)


@dataclass
class Replay:
    replayed: list[DeadLetter]
    refused: list[tuple[DeadLetter, str]]
    skipped: int  # not chosen by --consumer / --offset
    copies: list[DeadLetter] = field(default_factory=list)  # of an origin record already going back in this replay


async def replay(bootstrap: str, topic: str, *, consumer_group: str | None = None,
                 offsets: Sequence[tuple[int, int]] = (), unusable_too: bool = False,
                 dry_run: bool = False) -> Replay:
    """Publish the records of dead-letter topic ``topic`` not replayed yet again to where they came
    from (only those dead-lettered by ``consumer_group``, or at ``offsets`` (partition, offset), if
    given), one per origin record, and move the replay mark past them."""
    if not topic.endswith(DLQ_SUFFIX):
        raise ValueError(f"{topic!r} is not a dead-letter topic (its name ends with {DLQ_SUFFIX!r})")
    records, end, known = await _read(bootstrap, topic, from_start=bool(offsets))
    selective = bool(consumer_group or offsets)
    done = Replay([], [], 0)
    origins: set[Origin] = set()
    for d in records:
        if not offsets and known.get(mark_id(topic, d.partition), Mark()).done(d.offset):
            continue  # replayed (or refused) before; naming it with --offset replays it again
        if (consumer_group and d.header(codec.DLQ_CONSUMER) != consumer_group) or (
                offsets and (d.partition, d.offset) not in offsets):
            done.skipped += 1
            continue
        why = d.refusal(unusable_too=unusable_too)
        if why is not None:
            done.refused.append((d, why))
        elif d.origin in origins:
            done.copies.append(d)
        else:
            assert d.origin is not None
            origins.add(d.origin)
            done.replayed.append(d)
    if dry_run:
        return done
    if done.replayed:
        producer = make_producer(bootstrap, "deadletters-replay")
        await producer.start()
        try:
            sent = []
            for d in done.replayed:
                origin = d.origin
                assert origin is not None
                sent.append(await producer.send(origin.topic, value=d.value, key=d.key, partition=origin.partition,
                                                headers=d.replay_headers()))
            await asyncio.gather(*sent)
        finally:
            await producer.stop()
    new: dict[int, tuple[Mark, int]] = {}
    for tp, end_offset in end.items():
        m = known.get(mark_id(topic, tp.partition), Mark())
        replayed = sum(1 for d in done.replayed if d.partition == tp.partition)
        if selective:  # the records chosen, replayed or copies of those, count as done
            chosen = {d.offset for d in (*done.replayed, *done.copies) if d.partition == tp.partition}
            if chosen - m.also_replayed:
                new[tp.partition] = (Mark(m.next_offset, m.also_replayed | {o for o in chosen if o >= m.next_offset}),
                                     replayed)
        elif end_offset > m.next_offset:  # everything before the end now is done: replayed, a copy or refused
            new[tp.partition] = (Mark(end_offset), replayed)
    if new:
        await _save_marks(bootstrap, topic, new)
    return done


# -- the command ------------------------------------------------------------------------------------------------


def _short(text: str | None, width: int = 160) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= width else text[:width - 1] + "…"


def _print_records(records: Sequence[DeadLetter]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=False)
    for column in ("offset", "origin", "consumer", "event", "replayable", "reason"):
        table.add_column(column, overflow="fold")
    for d in records:
        event = f"{d.header(codec.EVENT_TYPE) or '?'} {d.header(codec.EVENT_ID) or ''}".strip()
        table.add_row(f"{d.partition}@{d.offset}", d.header(codec.DLQ_ORIGIN) or "?",
                      d.header(codec.DLQ_CONSUMER) or "?", event, d.refusal() or "yes",
                      _short(d.header(codec.DLQ_REASON)))
    Console(width=200).print(table)


async def _run(args: argparse.Namespace, bootstrap: str) -> int:
    if args.command == "list":
        for span in await spans(bootstrap, args.topics or dead_letter_topics()):
            print(f"{span.topic}: does not exist" if span.kept is None else
                  f"{span.topic}: {span.kept} kept, {span.pending} not replayed")
        return 0
    if args.command == "show":
        records = await read(bootstrap, args.topic, pending_only=args.pending)
        _print_records(records)
        print(f"{len(records)} records")
        return 0
    done = await replay(bootstrap, args.topic, consumer_group=args.consumer,
                        offsets=[parse_offset(o) for o in args.offset], unusable_too=args.unusable_too,
                        dry_run=args.dry_run)
    verb = "would replay" if args.dry_run else "replayed"
    for d in done.replayed:
        print(f"{verb} {d.topic}/{d.partition}@{d.offset} -> {d.header(codec.DLQ_ORIGIN)}"
              f" ({d.header(codec.EVENT_ID)})")
    for d in done.copies:
        print(f"copy {d.topic}/{d.partition}@{d.offset}: the same origin record goes back once")
    for d, why in done.refused:
        print(f"refused {d.topic}/{d.partition}@{d.offset}: {why}")
    mark = "nothing recorded (a dry run)" if args.dry_run else "the replay mark moved past them"
    print(f"{len(done.replayed)} {verb}, {len(done.copies)} copies, {len(done.refused)} refused, "
          f"{done.skipped} not chosen; {mark}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m meshkit.deadletters", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="every dead-letter topic: records kept, and not replayed yet")
    listing.add_argument("topics", nargs="*")
    show = sub.add_parser("show", help="the records of a dead-letter topic")
    show.add_argument("topic")
    show.add_argument("--pending", action="store_true", help="only those not replayed yet")
    again = sub.add_parser("replay", help="publish the records not replayed yet again to where they came from")
    again.add_argument("topic")
    again.add_argument("--consumer", help="only the records this consumer group dead-lettered")
    again.add_argument("--offset", action="append", default=[], help="only this record: N (partition 0) or P@N; "
                       "repeatable")
    again.add_argument("--unusable-too", action="store_true",
                       help="also records set aside as unusable (for when the fix was to what is accepted)")
    again.add_argument("--dry-run", action="store_true", help="say what would be replayed, and replay nothing")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    import os

    args = parser().parse_args(argv)
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        sys.stderr.write("configuration error — set KAFKA_BOOTSTRAP_SERVERS\n")
        return 2
    try:
        return asyncio.run(_run(args, bootstrap))
    except (LookupError, ValueError) as err:
        sys.stderr.write(f"{err}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
