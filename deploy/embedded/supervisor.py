"""Run and supervise the whole mesh on one machine: PostgreSQL, Kafka and the four services.

:class:`Mesh` starts everything as separate processes (each in its own process group), waits for
the gRPC health checks, and restarts whatever dies (same ports, same data folders) from a
background thread, with a back-off for something that keeps dying.  :meth:`Mesh.stop` stops the
services first, then Kafka, then PostgreSQL, and leaves no process behind.

Layout of ``data_dir`` (``.stack/`` by default)::

    postgres/        PGDATA            kafka/     the broker's data folder (see kafka.py)
    logs/<name>.log  service output    run/       pid files (to clean up after a crashed supervisor)
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console
from rich.table import Table

from deploy.embedded import ProcessGroup, rotate_log
from deploy.embedded.kafka import KafkaBroker
from deploy.embedded.postgres import EmbeddedPostgres
from meshkit import operators

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = REPO_ROOT / ".stack"
DEFAULT_SERVICES = ("demand", "matcher", "notifier", "roadshow")
TOPICS_COMMAND = (sys.executable, "-m", "meshkit.topics", "create")
LOG_CHECK_SECONDS = 30.0  # how often the supervisor looks at the size of the logs

STABLE_AFTER_S = 60.0  # a process up this long is healthy again: its back-off resets
MAX_BACKOFF_S = 30.0


@dataclass(frozen=True)
class Ports:
    """The mesh's ports; service ``i`` (0-based) gets ``grpc_base + i`` and ``metrics_base + i``."""

    kafka: int = 9092
    kafka_controller: int = 9093
    # Below Linux's ephemeral range (32768-60999): on one machine the mesh's own connections to
    # Kafka and PostgreSQL take local ports from that range, and one had taken gRPC's usual 50052
    # or 50054 just before a service bound it (`make run` failed at once, or waited 76 s for it).
    grpc_base: int = 7051
    metrics_base: int = 9101

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Ports:
        """Defaults overridden by ``FINMESH_KAFKA_PORT``, ``FINMESH_KAFKA_CONTROLLER_PORT``
        (default: Kafka port + 1), ``FINMESH_GRPC_BASE_PORT`` and ``FINMESH_METRICS_BASE_PORT``."""
        kafka = int(env.get("FINMESH_KAFKA_PORT", cls.kafka))
        return cls(
            kafka=kafka,
            kafka_controller=int(env.get("FINMESH_KAFKA_CONTROLLER_PORT", kafka + 1)),
            grpc_base=int(env.get("FINMESH_GRPC_BASE_PORT", cls.grpc_base)),
            metrics_base=int(env.get("FINMESH_METRICS_BASE_PORT", cls.metrics_base)),
        )


    @classmethod
    def free(cls, services: int = len(DEFAULT_SERVICES)) -> Ports:
        """Ports that are free right now, in one block (for tests and benchmarks beside `make run`)."""
        size = 2 + 2 * services
        for _ in range(500):
            base = 20000 + random.randrange(0, 40000 - size)
            if all(_port_free(p) for p in range(base, base + size)):
                return cls(kafka=base, kafka_controller=base + 1, grpc_base=base + 2, metrics_base=base + 2 + services)
        raise RuntimeError("no block of free ports found")


@dataclass(frozen=True)
class ServiceSpec:
    """One service process. ``argv`` replaces the default ``python -m services.<name>``."""

    name: str
    grpc_port: int
    metrics_port: int
    argv: tuple[str, ...] | None = None

    def command(self) -> list[str]:
        return list(self.argv) if self.argv else [sys.executable, "-m", f"services.{self.name}"]


@dataclass(frozen=True)
class ServiceEndpoint:
    """Where a running service answers."""

    name: str
    grpc_address: str
    metrics_url: str
    log_path: Path


MESH_OPERATOR = "mesh-operator"


def operator_key(data_dir: Path) -> str:
    """The mesh's own operator key, kept in ``data_dir/operator.key`` (readable by its owner only),
    made on the first start."""
    path = data_dir / "operator.key"
    if path.exists() and (kept := path.read_text().strip()):
        return kept
    data_dir.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # an empty one (a crash while writing it): make another
    key = operators.new()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


@dataclass
class MeshInfo:
    """What a running mesh offers; handed to ``deploy.demo.run(mesh_info)``."""

    services: dict[str, ServiceEndpoint]
    kafka_bootstrap_servers: str
    database_url: str
    data_dir: Path
    console: Console = field(default_factory=Console, repr=False)
    operator_key: str = field(default="", repr=False)  # the mesh's own operator (the demo's calls), ``x-operator-key``

    def grpc_address(self, service: str) -> str:
        """``host:port`` of a service's gRPC server."""
        return self.services[service].grpc_address

    def print(self, *objects: Any, **kwargs: Any) -> None:
        """Print on the supervisor's console (rich markup allowed)."""
        self.console.print(*objects, **kwargs)


class _Component(Protocol):
    """What the supervisor needs of a process it keeps alive."""

    @property
    def pid(self) -> int | None: ...
    def alive(self) -> bool: ...
    def kill(self) -> None: ...


class ServiceProcess:
    """A service run as ``spec.command()`` in its own process group, output to ``log_path``."""

    def __init__(self, spec: ServiceSpec, env: Mapping[str, str], log_path: Path, pid_path: Path) -> None:
        self.spec = spec
        self.env = dict(env)
        self._proc = ProcessGroup(spec.name, log_path, pid_path)

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    def alive(self) -> bool:
        return self._proc.alive()

    def start(self) -> int:
        """Start the service (killing a leftover of a crashed supervisor first); returns its pid."""
        self._proc.signal(signal.SIGKILL)  # stragglers of a previous run of this service's group
        cmd = self.spec.command()
        return self._proc.start(cmd, cwd=REPO_ROOT, env=self.env, stale_marker=" ".join(cmd))

    def kill(self) -> None:
        self._proc.kill()

    def terminate(self) -> None:
        """SIGTERM the group without waiting."""
        self._proc.signal(signal.SIGTERM)

    def stop(self, timeout: float = 10.0) -> None:
        self._proc.stop(timeout)


@dataclass
class _Restarts:
    """Restart bookkeeping of one component."""

    started_at: float = 0.0
    failures: int = 0  # deaths in a row, each within STABLE_AFTER_S of its start
    total: int = 0  # restarts since the mesh started
    restart_at: float | None = None
    last_pid: int | None = None  # the pid last seen running (PostgreSQL's vanishes with it)


class Mesh:
    """The whole mesh as separate processes, supervised from a background thread.

    ``kafka_bootstrap_servers`` / ``database_url``: use these instead of starting the embedded
    broker / database.  ``topics_command``: run once Kafka answers (None: skip).
    """

    def __init__(
        self,
        data_dir: Path = DEFAULT_DATA_DIR,
        *,
        ports: Ports | None = None,
        services: Sequence[str | ServiceSpec] = DEFAULT_SERVICES,
        kafka_bootstrap_servers: str | None = None,
        database_url: str | None = None,
        topics_command: Sequence[str] | None = TOPICS_COMMAND,
        extra_env: Mapping[str, str] | None = None,
        console: Console | None = None,
        check_interval: float = 0.5,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.ports = ports or Ports()
        self.console = console or Console()
        self.topics_command = tuple(topics_command) if topics_command else None
        self.extra_env = dict(extra_env or {})
        self.check_interval = check_interval
        self.specs = [
            s if isinstance(s, ServiceSpec) else ServiceSpec(s, self.ports.grpc_base + i, self.ports.metrics_base + i)
            for i, s in enumerate(services)
        ]
        self.postgres = None if database_url else EmbeddedPostgres(self.data_dir / "postgres")
        self.kafka = (
            None
            if kafka_bootstrap_servers
            else KafkaBroker(self.data_dir / "kafka", self.ports.kafka, self.ports.kafka_controller)
        )
        self._database_url = database_url
        self.operator_key = operator_key(self.data_dir)
        self._bootstrap = kafka_bootstrap_servers or self.kafka.bootstrap_servers  # type: ignore[union-attr]
        self.services: dict[str, ServiceProcess] = {}
        self._restarts: dict[str, _Restarts] = {}
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None

    @classmethod
    def from_env(cls, data_dir: Path = DEFAULT_DATA_DIR, env: Mapping[str, str] = os.environ, **kwargs: Any) -> Mesh:
        """A mesh using ``DATABASE_URL`` / ``KAFKA_BOOTSTRAP_SERVERS`` if set, ports from
        :meth:`Ports.from_env`."""
        return cls(
            data_dir,
            ports=Ports.from_env(env),
            kafka_bootstrap_servers=env.get("KAFKA_BOOTSTRAP_SERVERS") or None,
            database_url=env.get("DATABASE_URL") or None,
            **kwargs,
        )

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> MeshInfo:
        """Start PostgreSQL and Kafka (unless external), create the topics, start the services
        and the supervising thread.  Does not wait for the services: see :meth:`wait_healthy`.
        If anything fails, what was started is stopped again before the error propagates."""
        self._check_ports_free()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self.info

    def _start(self) -> None:
        if self.kafka:
            began = time.monotonic()
            self.kafka.start()  # the JVM boots while PostgreSQL starts
            self._note_started("kafka")
        if self.postgres:
            t0 = time.monotonic()
            self._database_url = self.postgres.start()
            self._note_started("postgres")
            self.console.print(
                f"[green]postgres[/] ready in {time.monotonic() - t0:.1f} s "
                f"(pid {self.postgres.pid}, {self._database_url})"
            )
        if self.kafka:
            self.kafka.wait_ready(timeout=90)
            self.console.print(
                f"[green]kafka[/] ready in {time.monotonic() - began:.1f} s (pid {self.kafka.pid}, {self._bootstrap})"
            )
        if self.topics_command:
            self.create_topics()
        for spec in self.specs:
            proc = ServiceProcess(
                spec,
                self._service_env(spec),
                self.data_dir / "logs" / f"{spec.name}.log",
                self.data_dir / "run" / f"{spec.name}.pid",
            )
            self.services[spec.name] = proc
            proc.start()
            self._note_started(spec.name)
            self.console.print(
                f"started [bold]{spec.name}[/] (pid {proc.pid}, gRPC {spec.grpc_port}, metrics {spec.metrics_port})"
            )
        self._thread = threading.Thread(target=self._supervise, name="mesh-supervisor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop supervising, then the services (SIGTERM, up to ``timeout``, SIGKILL), then Kafka,
        then PostgreSQL.  Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        if self._thread:
            self._thread.join()
        with self._lock:
            for proc in self.services.values():
                proc.terminate()
            for name, proc in self.services.items():
                proc.stop(timeout)
                self.console.print(f"stopped {name}")
            if self.kafka:
                self.kafka.stop()
                self.console.print("stopped kafka")
            if self.postgres:
                self.postgres.stop()
                self.console.print("stopped postgres")

    def wait_healthy(self, timeout: float = 120.0) -> None:
        """Wait until every service's gRPC health check (service "") answers SERVING.

        Raises :class:`TimeoutError` naming the services still not serving.
        """
        deadline = time.monotonic() + timeout
        next_progress = time.monotonic() + 5
        pending = {spec.name: self._grpc_address(spec) for spec in self.specs}
        channels = {name: grpc.insecure_channel(addr) for name, addr in pending.items()}
        try:
            while pending:
                for name in sorted(pending):
                    if _serving(channels[name]):
                        self.console.print(f"[green]✓[/] {name} SERVING on {pending.pop(name)}")
                if not pending:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"not SERVING after {timeout:.0f} s: "
                        f"{', '.join(sorted(pending))} (see {self.data_dir / 'logs'})"
                    )
                if time.monotonic() > next_progress:
                    self.console.print(f"waiting for {', '.join(sorted(pending))} …")
                    next_progress += 5
                time.sleep(0.25)  # poll interval between health checks
        finally:
            for channel in channels.values():
                channel.close()

    def create_topics(self, attempts: int = 5) -> None:
        """Run ``topics_command`` (``python -m meshkit.topics create``), retrying with a back-off."""
        assert self.topics_command
        env = {**os.environ, **self.extra_env, "KAFKA_BOOTSTRAP_SERVERS": self._bootstrap}
        for attempt in range(1, attempts + 1):
            done = subprocess.run(self.topics_command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
            if done.returncode == 0:
                self.console.print("[green]topics[/] created")
                return
            output = (done.stdout + done.stderr).strip().splitlines()[-15:]
            if attempt == attempts:
                raise RuntimeError(f"`{' '.join(self.topics_command)}` failed {attempts} times:\n" + "\n".join(output))
            self.console.print(
                f"[yellow]topic creation failed (attempt {attempt}), retrying:[/] "
                f"{output[-1] if output else done.returncode}"
            )
            time.sleep(2 ** (attempt - 1))  # back-off between attempts

    # -- inspection and failure injection -------------------------------------------------
    @property
    def info(self) -> MeshInfo:
        """The mesh's addresses (valid once started)."""
        return MeshInfo(
            services={
                s.name: ServiceEndpoint(
                    s.name,
                    self._grpc_address(s),
                    f"http://127.0.0.1:{s.metrics_port}/metrics",
                    self.data_dir / "logs" / f"{s.name}.log",
                )
                for s in self.specs
            },
            kafka_bootstrap_servers=self._bootstrap,
            database_url=self._database_url or "",
            data_dir=self.data_dir,
            console=self.console,
            operator_key=self.operator_key,
        )

    def component(self, name: str) -> _Component:
        """``"postgres"``, ``"kafka"`` or a service name (KeyError if not run by this mesh)."""
        found = {"postgres": self.postgres, "kafka": self.kafka}.get(name) or self.services.get(name)
        if found is None:
            raise KeyError(f"{name!r} is not a process of this mesh")
        return found

    def pid(self, name: str) -> int | None:
        """The current pid of a component."""
        return self.component(name).pid

    def restarts(self, name: str) -> int:
        """How many times the supervisor restarted a component."""
        return self._restarts[name].total

    def kill(self, name: str) -> int | None:
        """SIGKILL a component (the supervisor restarts it); returns the killed pid."""
        with self._lock:
            comp = self.component(name)
            pid = comp.pid
            comp.kill()
            return pid

    def print_table(self) -> None:
        """A table of every process: address, metrics URL, pid, log."""
        table = Table(title="finmesh")
        for column in ("process", "address", "metrics", "pid", "log"):
            table.add_column(column, overflow="fold")
        if self.postgres:
            table.add_row("postgres", self._database_url, "", str(self.postgres.pid), str(self.postgres.log_path))
        if self.kafka:
            table.add_row(
                "kafka", self._bootstrap, "", str(self.kafka.pid), str(self.kafka.data_dir / "logs" / "server.log")
            )
        for name, ep in self.info.services.items():
            table.add_row(name, ep.grpc_address, ep.metrics_url, str(self.pid(name)), str(ep.log_path))
        self.console.print(table)

    # -- supervision ----------------------------------------------------------------------
    def _supervise(self) -> None:
        """Every ``check_interval``: restart what died, with a back-off if it keeps dying; every
        ``LOG_CHECK_SECONDS``: rotate the logs that have grown too large (:func:`rotate_log`)."""
        logs_checked = time.monotonic()
        while not self._stopping.wait(self.check_interval):
            if time.monotonic() - logs_checked >= LOG_CHECK_SECONDS:
                logs_checked = time.monotonic()
                self._rotate_logs()
            for name in ["postgres", "kafka", *self.services]:
                with self._lock:
                    if self._stopping.is_set():
                        return
                    try:
                        comp = self.component(name)
                    except KeyError:
                        continue
                    if comp.alive():
                        self._restarts[name].last_pid = comp.pid
                    else:
                        self._handle_death(name, comp)

    def _rotate_logs(self) -> None:
        """The services' logs and PostgreSQL's (the broker rolls its own)."""
        paths = sorted((self.data_dir / "logs").glob("*.log"))
        if self.postgres is not None:
            paths.append(self.postgres.log_path)
        for path in paths:
            try:
                if rotate_log(path):
                    self.console.print(f"[dim]log rotated: {path}[/dim]")
            except OSError as err:  # a full disk must not stop the supervision
                self.console.print(f"[yellow]log not rotated: {path}: {err}[/yellow]")

    def _handle_death(self, name: str, comp: Any) -> None:
        state = self._restarts[name]
        now = time.monotonic()
        if state.restart_at is None:  # first seen dead: schedule the restart
            state.failures = state.failures + 1 if now - state.started_at < STABLE_AFTER_S else 1
            delay = 0.0 if state.failures == 1 else min(MAX_BACKOFF_S, 2.0 ** (state.failures - 2))
            state.restart_at = now + delay
            if delay:
                self.console.print(f"[yellow]{name} died again ({_exit_reason(comp)}); restarting in {delay:.0f} s[/]")
        if now < state.restart_at:
            return
        old_pid, reason = comp.pid or state.last_pid, _exit_reason(comp)
        try:
            comp.start()
        except Exception as exc:  # noqa: BLE001 - report and retry with a back-off
            self.console.print(f"[red]restarting {name} failed:[/] {exc}")
            state.restart_at = None
            state.started_at = time.monotonic()
            return
        state.restart_at = None
        state.started_at = time.monotonic()
        state.total += 1
        self.console.print(f"[yellow]restarted {name} (pid {old_pid} → {comp.pid}) after {reason}[/]")

    def _note_started(self, name: str) -> None:
        self._restarts[name] = _Restarts(started_at=time.monotonic(), last_pid=self.component(name).pid)

    # -- helpers --------------------------------------------------------------------------
    def _service_env(self, spec: ServiceSpec) -> dict[str, str]:
        env = {**os.environ, **self.extra_env}
        # Operators the environment names, and the mesh's own (its key is in the data folder).
        keys = [k for k in (env.get("OPERATOR_KEYS", ""), operators.entry(MESH_OPERATOR, self.operator_key)) if k]
        return {
            **env,
            "OPERATOR_KEYS": ",".join(keys),
            "PYTHONUNBUFFERED": "1",
            "KAFKA_BOOTSTRAP_SERVERS": self._bootstrap,
            "DATABASE_URL": self._database_url or "",
            "GRPC_PORT": str(spec.grpc_port),
            "METRICS_PORT": str(spec.metrics_port),
            "SERVICE_NAME": spec.name,
        }

    @staticmethod
    def _grpc_address(spec: ServiceSpec) -> str:
        return f"127.0.0.1:{spec.grpc_port}"

    def _check_ports_free(self) -> None:
        """Fail early, and clearly, if a port of ours is taken (e.g. by another mesh)."""
        wanted = {f"{s.name} gRPC": s.grpc_port for s in self.specs}
        wanted |= {f"{s.name} metrics": s.metrics_port for s in self.specs}
        if self.kafka and not self.kafka.alive():
            wanted |= {"kafka": self.ports.kafka, "kafka controller": self.ports.kafka_controller}
        taken = [f"{what} {port}" for what, port in wanted.items() if not _port_free(port)]
        if taken:
            raise RuntimeError(
                f"ports in use: {', '.join(taken)} — stop the other process or "
                f"choose ports with FINMESH_*_PORT (see Ports.from_env)"
            )


def _serving(channel: grpc.Channel) -> bool:
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
        return reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def _exit_reason(comp: Any) -> str:
    code = getattr(comp, "returncode", None)
    return f"exit code {code}" if code is not None else "it stopped"


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            return True
        except OSError:
            return False


def run_demo(info: MeshInfo) -> None:
    """Call ``deploy.demo.run(info)`` if that module exists (awaiting it if it is a coroutine)."""
    try:
        demo = importlib.import_module("deploy.demo")
    except ModuleNotFoundError as exc:
        if exc.name not in ("deploy.demo", "deploy"):
            raise
        info.print("[yellow]no deploy.demo module: skipping the demo[/]")
        return
    result = demo.run(info)
    if inspect.isawaitable(result):
        asyncio.run(_await(result))


async def _await(awaitable: Any) -> Any:
    return await awaitable
