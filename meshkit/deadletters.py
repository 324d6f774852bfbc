"""Dead-letter topics, for operators: what is on them, and putting their records back.

A consumer dead-letters a record it can never use, or one that kept failing (see
:mod:`meshkit.kafka`), with why and where from in its ``dlq-*`` headers. Once the cause is
fixed (a defect deployed again, a missing reference created), ``replay`` publishes those records
again, unchanged, to the partition they came from. Every consumer dedupes on the event id, so the
groups that had handled a record skip it, and only the one that could not handle it acts.

    python -m meshkit.deadletters list                 # every dead-letter topic: records kept, not replayed yet
    python -m meshkit.deadletters show TOPIC.dlq       # its records: origin, consumer, event, reason
    python -m meshkit.deadletters replay TOPIC.dlq [--consumer GROUP] [--offset N ...] [--dry-run]

``replay`` takes the records after the topic's replay mark (the offset committed by the group
``finmesh.deadletters.replay``) and moves the mark past them once the broker has acknowledged
them, so running it twice replays nothing twice. With ``--consumer`` or ``--offset`` it replays
only the records chosen and leaves the mark where it was. A record cut to fit the dead-letter
topic (``dlq-truncated``), or whose origin is not the topic the dead-letter topic belongs to, is
never replayed: it is reported as refused.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord

from meshkit import codec
from meshkit.kafka import make_producer
from meshkit.topics import REGISTRY

REPLAY_GROUP = "finmesh.deadletters.replay"
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

    def refusal(self) -> str | None:
        """Why this record cannot be replayed, or None if it can."""
        if self.header(TRUNCATED) == "true":
            return "its value was cut to fit the dead-letter topic"
        origin = self.origin
        if origin is None:
            return "no dlq-origin header says where it came from"
        if not self.topic.endswith(DLQ_SUFFIX) or origin.topic != self.topic[:-len(DLQ_SUFFIX)]:
            return f"its origin {origin.topic!r} is not the topic {self.topic!r} belongs to"
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
class Span:
    """A dead-letter topic's records: kept on the broker, and after the replay mark."""

    topic: str
    kept: int
    pending: int


async def _open(bootstrap: str, topic: str) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described["error_code"] or not described["partitions"]:
        raise LookupError(f"topic {topic!r} does not exist")
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=REPLAY_GROUP, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=100)
    await consumer.start()
    tps = [TopicPartition(topic, p["partition"]) for p in sorted(described["partitions"], key=lambda p: p["partition"])]
    consumer.assign(tps)
    return consumer, tps


async def _marks(consumer: AIOKafkaConsumer, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
    """Where reading starts for each partition: the replay mark, or the oldest record kept if the
    mark is older (or there is none)."""
    first = await consumer.beginning_offsets(list(tps))
    marks = {}
    for tp in tps:
        committed = await consumer.committed(tp)
        marks[tp] = max(first[tp], committed or 0)
    return marks


async def spans(bootstrap: str, names: Sequence[str]) -> list[Span]:
    out = []
    for name in names:
        consumer, tps = await _open(bootstrap, name)
        try:
            first = await consumer.beginning_offsets(tps)
            end = await consumer.end_offsets(tps)
            marks = await _marks(consumer, tps)
            out.append(Span(name, sum(end[tp] - first[tp] for tp in tps), sum(end[tp] - marks[tp] for tp in tps)))
        finally:
            await consumer.stop()
    return out


async def read(bootstrap: str, topic: str, *, from_mark: bool = False) -> list[DeadLetter]:
    """The records of ``topic`` now on the broker (after the replay mark, with ``from_mark``)."""
    records, _ = await _read(bootstrap, topic, from_mark=from_mark)
    return records


async def _read(bootstrap: str, topic: str, *, from_mark: bool) -> tuple[list[DeadLetter], dict[TopicPartition, int]]:
    consumer, tps = await _open(bootstrap, topic)
    try:
        end = await consumer.end_offsets(tps)
        start = await _marks(consumer, tps) if from_mark else await consumer.beginning_offsets(tps)
        for tp in tps:
            consumer.seek(tp, start[tp])
        out: list[DeadLetter] = []
        todo = {tp for tp in tps if start[tp] < end[tp]}
        while todo:
            batch = await consumer.getmany(*todo, timeout_ms=1000)
            for tp, records in batch.items():
                out += [DeadLetter.of(r) for r in records if r.offset < end[tp]]
            todo = {tp for tp in todo if await consumer.position(tp) < end[tp]}
        return sorted(out, key=lambda d: (d.partition, d.offset)), end
    finally:
        await consumer.stop()


@dataclass
class Replay:
    replayed: list[DeadLetter]
    refused: list[tuple[DeadLetter, str]]
    skipped: int  # not chosen by --consumer / --offset
    mark_moved: bool


async def replay(bootstrap: str, topic: str, *, consumer_group: str | None = None,
                 offsets: Sequence[int] = (), dry_run: bool = False) -> Replay:
    """Publish the records of dead-letter topic ``topic`` after its replay mark again to where
    they came from (only those dead-lettered by ``consumer_group``, or at ``offsets``, if given)."""
    if not topic.endswith(DLQ_SUFFIX):
        raise ValueError(f"{topic!r} is not a dead-letter topic (its name ends with {DLQ_SUFFIX!r})")
    records, end = await _read(bootstrap, topic, from_mark=True)
    chosen, refused, skipped = [], [], 0
    for d in records:
        if (consumer_group and d.header(codec.DLQ_CONSUMER) != consumer_group) or (offsets and d.offset not in offsets):
            skipped += 1
            continue
        why = d.refusal()
        if why is None:
            chosen.append(d)
        else:
            refused.append((d, why))
    selective = bool(consumer_group or offsets)
    if dry_run:
        return Replay(chosen, refused, skipped, mark_moved=False)
    if chosen:
        producer = make_producer(bootstrap, "deadletters-replay")
        await producer.start()
        try:
            sent = []
            for d in chosen:
                origin = d.origin
                assert origin is not None
                sent.append(await producer.send(origin.topic, value=d.value, key=d.key, partition=origin.partition,
                                                headers=d.replay_headers()))
            await asyncio.gather(*sent)
        finally:
            await producer.stop()
    if not selective:
        consumer, _ = await _open(bootstrap, topic)
        try:
            await consumer.commit(end)
        finally:
            await consumer.stop()
    return Replay(chosen, refused, skipped, mark_moved=not selective)


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
        names = args.topics or dead_letter_topics()
        for span in await spans(bootstrap, names):
            print(f"{span.topic}: {span.kept} kept, {span.pending} not replayed")
        return 0
    if args.command == "show":
        records = await read(bootstrap, args.topic, from_mark=args.pending)
        _print_records(records)
        print(f"{len(records)} records")
        return 0
    done = await replay(bootstrap, args.topic, consumer_group=args.consumer, offsets=args.offset,
                        dry_run=args.dry_run)
    verb = "would replay" if args.dry_run else "replayed"
    for d in done.replayed:
        print(f"{verb} {d.topic}/{d.partition}@{d.offset} -> {d.header(codec.DLQ_ORIGIN)}"
              f" ({d.header(codec.EVENT_ID)})")
    for d, why in done.refused:
        print(f"refused {d.topic}/{d.partition}@{d.offset}: {why}")
    mark = "the replay mark moved past them" if done.mark_moved else "the replay mark did not move"
    print(f"{len(done.replayed)} {verb}, {len(done.refused)} refused, {done.skipped} not chosen; {mark}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m meshkit.deadletters", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="every dead-letter topic: records kept, and not replayed yet")
    listing.add_argument("topics", nargs="*")
    show = sub.add_parser("show", help="the records of a dead-letter topic")
    show.add_argument("topic")
    show.add_argument("--pending", action="store_true", help="only those after the replay mark")
    again = sub.add_parser("replay", help="publish the records after the replay mark again to where they came from")
    again.add_argument("topic")
    again.add_argument("--consumer", help="only the records this consumer group dead-lettered")
    again.add_argument("--offset", type=int, action="append", default=[], help="only this offset (repeatable)")
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
