"""The embedded stack: real Apache Kafka and PostgreSQL plus the four services on one machine.

* :mod:`deploy.embedded.kafka` — :class:`~deploy.embedded.kafka.KafkaBroker`
* :mod:`deploy.embedded.postgres` — :class:`~deploy.embedded.postgres.EmbeddedPostgres`
* :mod:`deploy.embedded.supervisor` — :class:`~deploy.embedded.supervisor.Mesh`, ``MeshInfo``
* ``python -m deploy.embedded run [--demo/--no-demo] [--data-dir .stack]``

This module holds the small process helpers the others share.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psutil

T = TypeVar("T")


LOG_MAX_BYTES = 64 * 1024 * 1024  # a process's log is rotated past this size
LOG_KEEP = 3  # rotated copies kept: <log>.1 (newest) to <log>.3


def rotate_log(path: Path, max_bytes: int = LOG_MAX_BYTES, keep: int = LOG_KEEP) -> bool:
    """Copy and truncate ``path`` once it is larger than ``max_bytes``; returns whether it did.

    Its content becomes ``<path>.1`` (older copies move up to ``<path>.<keep>``; the oldest is
    dropped) and the file is emptied in place: the process writing it has it open for appending, so
    it goes on writing at the start of the emptied file. Lines written between the copy and the
    truncation (microseconds) are lost; that is the price of not restarting the writer.
    """
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    for i in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{i}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{i + 1}"))
    shutil.copyfile(path, path.with_name(f"{path.name}.1"))
    os.truncate(path, 0)
    return True


def run_coroutine_blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a fresh event loop in a worker thread.

    Safe to call from synchronous code that itself runs inside an event loop (e.g. a test).
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


class ProcessGroup:
    """A child process started in its own session, so that signals reach its whole group.

    Output goes (appended) to ``log_path``.  If ``pid_path`` is given, the pid is recorded
    there, and a process left over from a supervisor that died is killed on the next start.
    """

    def __init__(self, name: str, log_path: Path, pid_path: Path | None = None) -> None:
        self.name = name
        self.log_path = log_path
        self.pid_path = pid_path
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The pid of the last started process (also its process-group id)."""
        return self._popen.pid if self._popen else None

    @property
    def returncode(self) -> int | None:
        """The exit code once it has exited; negative when killed by a signal."""
        return self._popen.poll() if self._popen else None

    def alive(self) -> bool:
        """Whether the process is running."""
        return self._popen is not None and self._popen.poll() is None

    def start(
        self,
        cmd: Sequence[str],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        stale_marker: str | None = None,
    ) -> int:
        """Launch ``cmd`` as the leader of a new session; returns its pid.

        ``stale_marker``: a string found in the command line of a leftover process recorded
        in ``pid_path``; such a process (and its group) is killed first.
        """
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.pid_path is not None and stale_marker is not None:
            _kill_stale(self.pid_path, stale_marker)
        with open(self.log_path, "ab") as log:
            log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {self.name}: {' '.join(cmd)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                list(cmd),
                cwd=cwd,
                env=dict(env) if env is not None else None,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if self.pid_path is not None:
            self.pid_path.parent.mkdir(parents=True, exist_ok=True)
            self.pid_path.write_text(f"{self._popen.pid}\n")
        return self._popen.pid

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the whole process group (ignored if it is already gone)."""
        if self._popen is None:
            return
        try:
            os.killpg(self._popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL the whole group and wait for the leader to be gone."""
        popen = self._popen  # a supervisor may start a new process meanwhile: keep this one
        if popen is None:
            return
        self.signal(signal.SIGKILL)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the leader to exit; True if it has."""
        if self._popen is None:
            return True
        try:
            self._popen.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the group, wait up to ``timeout``, then SIGKILL whatever is left of it."""
        if self._popen is None:
            return
        if self.alive():
            self.signal(signal.SIGTERM)
            self.wait(timeout)
        self.signal(signal.SIGKILL)  # stragglers of the group, or a leader that ignored SIGTERM
        self.wait(5)
        if self.pid_path is not None:
            self.pid_path.unlink(missing_ok=True)


def _kill_stale(pid_path: Path, marker: str) -> None:
    """Kill the process group recorded in ``pid_path`` if its command line contains ``marker``."""
    try:
        proc = psutil.Process(int(pid_path.read_text().strip()))
        if marker not in " ".join(proc.cmdline()):
            return
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    except (FileNotFoundError, ValueError, psutil.Error, ProcessLookupError, PermissionError):
        pass
