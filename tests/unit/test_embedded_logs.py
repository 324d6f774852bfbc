"""Log rotation of the embedded stack (``deploy.embedded.rotate_log``): a process's log is copied
aside and emptied in place once too large, and the writer, which holds it open for appending,
goes on writing into the emptied file."""

from __future__ import annotations

from pathlib import Path

from deploy.embedded import rotate_log


def test_a_log_over_the_limit_is_copied_aside_and_emptied_while_its_writer_goes_on(tmp_path: Path) -> None:
    log = tmp_path / "matcher.log"
    with open(log, "ab", buffering=0) as writer:  # as ProcessGroup opens it for the child
        for n in range(1, 6):
            writer.write(f"generation {n} ".encode() * 20)
            assert rotate_log(log, max_bytes=100, keep=3)
        writer.write(b"after")
        assert not rotate_log(log, max_bytes=100, keep=3)  # small again: left alone
    assert log.read_bytes() == b"after"  # written at the start of the emptied file, no hole before it
    kept = {p.name: p.read_text() for p in tmp_path.iterdir() if p != log}
    assert sorted(kept) == ["matcher.log.1", "matcher.log.2", "matcher.log.3"]  # the oldest dropped
    assert [kept[f"matcher.log.{i}"].split()[1] for i in (1, 2, 3)] == ["5", "4", "3"]  # newest first


def test_a_missing_or_small_log_is_left_alone(tmp_path: Path) -> None:
    assert not rotate_log(tmp_path / "absent.log", max_bytes=10)
    small = tmp_path / "demand.log"
    small.write_bytes(b"0123456789")
    assert not rotate_log(small, max_bytes=10)
    assert small.read_bytes() == b"0123456789" and list(tmp_path.iterdir()) == [small]
