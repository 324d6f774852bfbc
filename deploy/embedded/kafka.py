"""A single-node Apache Kafka broker (KRaft, broker+controller) run as a child process.

The broker's jars come from Maven Central through ``deploy/kafka/pom.xml`` (see
:func:`ensure_jars`).  Everything the broker writes lives in one data folder::

    <data_dir>/cluster.id           the KRaft cluster id (storage is formatted once)
    <data_dir>/server.properties    written on every start
    <data_dir>/log4j2.properties    written on every start
    <data_dir>/kafka.out            the JVM's stdout/stderr
    <data_dir>/logs/server.log      broker log (rolled, bounded)
    <data_dir>/data/                the log segments and KRaft metadata

Starting again on the same data folder and ports after a ``kill -9`` recovers the log:
acknowledged records are not lost.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from deploy.embedded import ProcessGroup, run_coroutine_blocking

KAFKA_HOME = Path(__file__).resolve().parent.parent / "kafka"
DEFAULT_JARS_DIR = KAFKA_HOME / "target" / "dependency"

MIB = 1024 * 1024

# Broker settings beyond the listeners; chosen so a mesh running for days keeps its data
# folder bounded, and so a payload a little over 1 MiB still reaches the dead-letter logic.
RETENTION_SETTINGS: dict[str, str] = {
    "num.partitions": "1",
    "auto.create.topics.enable": "false",
    "group.initial.rebalance.delay.ms": "0",
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "10",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "10",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "log.retention.hours": "24",
    "log.retention.bytes": str(256 * MIB),
    "log.segment.bytes": str(64 * MIB),
    "log.retention.check.interval.ms": "60000",
    "message.max.bytes": str(2 * MIB),
    # After a kill -9 the new incarnation cannot register until the old session expires
    # (default 9 s): shorter sessions make a crashed broker come back in ~8 s, not ~15 s.
    "broker.heartbeat.interval.ms": "500",
    "broker.session.timeout.ms": "3000",
    "replica.fetch.max.bytes": str(2 * MIB),
}

# The options Kafka's own start script (kafka-run-class.sh) gives a broker: G1 aiming at 20 ms
# pauses (the JVM's default aim is 200 ms; a 68 ms young collection was seen mid-benchmark).
BROKER_JVM_OPTIONS = (
    "-server", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent", "-XX:MaxInlineLevel=15",
)

LOG4J2_PROPERTIES = """\
# Written by deploy.embedded.kafka: the broker logs to a rolled file, warnings also to stdout.
status = warn
name = finmesh-kafka
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
appender.console.filter.threshold.type = ThresholdFilter
appender.console.filter.threshold.level = warn
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = {log_dir}/server.log
appender.file.filePattern = {log_dir}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = info
rootLogger.appenderRef.console.ref = STDOUT
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = info
logger.apache.name = org.apache.kafka
logger.apache.level = info
"""


class KafkaUnavailable(RuntimeError):
    """The broker cannot be fetched, started or reached."""


def ensure_jars(jars_dir: Path = DEFAULT_JARS_DIR) -> Path:
    """Fetch the broker's jars with Maven unless ``jars_dir`` already holds them.

    Raises :class:`KafkaUnavailable` with a clear message if ``java`` or ``mvn`` is missing.
    """
    if shutil.which("java") is None:
        raise KafkaUnavailable("`java` not found on PATH: the embedded Kafka broker needs Java 17+")
    if any(jars_dir.glob("kafka_2.13-*.jar")):
        return jars_dir
    if shutil.which("mvn") is None:
        raise KafkaUnavailable(
            f"no Kafka jars in {jars_dir} and `mvn` not found on PATH: install Maven, or run "
            f"`cd deploy/kafka && mvn -q -B dependency:copy-dependencies -DincludeScope=runtime`"
        )
    cmd = ["mvn", "-q", "-B", "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={jars_dir}"]
    done = subprocess.run(cmd, cwd=KAFKA_HOME, capture_output=True, text=True)
    if done.returncode != 0 or not any(jars_dir.glob("kafka_2.13-*.jar")):
        raise KafkaUnavailable(
            f"fetching the Kafka jars failed ({' '.join(cmd)}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    (jars_dir / ".fetched").touch()  # the Makefile's stamp
    return jars_dir


def random_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (as Kafka's Uuid)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):  # Kafka avoids ids that look like command-line options
            return cid


class KafkaBroker:
    """One Kafka broker+controller on 127.0.0.1, run from ``data_dir`` as its own process group."""

    def __init__(
        self,
        data_dir: Path,
        port: int = 9092,
        controller_port: int = 9093,
        *,
        jars_dir: Path = DEFAULT_JARS_DIR,
        heap: str = "512m",
        extra_config: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.controller_port = controller_port
        self.jars_dir = jars_dir
        self.heap = heap
        self.extra_config = dict(extra_config or {})
        self._proc = ProcessGroup("kafka", self.data_dir / "kafka.out", self.data_dir / "kafka.pid")

    # -- identity -------------------------------------------------------------------------
    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` for Kafka clients."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker JVM's pid, or None if it was never started."""
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit code once the broker has exited (negative: killed by that signal)."""
        return self._proc.returncode

    def alive(self) -> bool:
        """Whether the broker process is running."""
        return self._proc.alive()

    # -- lifecycle ------------------------------------------------------------------------
    def ensure_jars(self) -> Path:
        """Fetch the jars if missing (see :func:`ensure_jars`)."""
        return ensure_jars(self.jars_dir)

    def start(self) -> int:
        """Format the storage if needed, write the configs and launch the broker; returns its pid.

        Does not wait for the broker to answer: call :meth:`wait_ready`.
        """
        if self.alive():
            return self.pid  # type: ignore[return-value]
        self.ensure_jars()
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        props = self.write_config()
        self._format_once(props)
        cmd = [
            "java",
            f"-Xmx{self.heap}",
            "-Xms256m",
            *BROKER_JVM_OPTIONS,
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp",
            self._classpath(),
            "kafka.Kafka",
            str(props),
        ]
        return self._proc.start(cmd, cwd=self.data_dir, stale_marker=str(props))

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Block until the broker answers a metadata request; returns the seconds waited.

        Raises :class:`KafkaUnavailable` if the process exits or ``timeout`` passes.
        """
        began = time.monotonic()
        deadline = began + timeout
        while True:
            if not self.alive():
                raise KafkaUnavailable(f"kafka exited with code {self.returncode}; log tail:\n{self.log_tail()}")
            if run_coroutine_blocking(_answers_metadata(self.bootstrap_servers)):
                return time.monotonic() - began
            if time.monotonic() > deadline:
                raise KafkaUnavailable(
                    f"kafka did not answer on {self.bootstrap_servers} within "
                    f"{timeout:.0f} s; log tail:\n{self.log_tail()}"
                )
            time.sleep(0.2)  # poll interval between readiness probes

    def kill(self) -> None:
        """SIGKILL the broker (and anything in its process group); for failure tests."""
        self._proc.kill()

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (a controlled shutdown), wait up to ``timeout``, then SIGKILL."""
        self._proc.stop(timeout)

    # -- files ----------------------------------------------------------------------------
    def config(self) -> dict[str, str]:
        """The broker's server.properties as a dict."""
        return {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir / "data"),
            **RETENTION_SETTINGS,
            **self.extra_config,
        }

    def write_config(self) -> Path:
        """Write server.properties and log4j2.properties into the data folder."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = self.data_dir / "server.properties"
        props.write_text("".join(f"{k}={v}\n" for k, v in self.config().items()))
        (self.data_dir / "log4j2.properties").write_text(LOG4J2_PROPERTIES.format(log_dir=self.data_dir / "logs"))
        return props

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the JVM output and of the broker log, for error messages."""
        out = []
        for path in (self.data_dir / "kafka.out", self.data_dir / "logs" / "server.log"):
            if path.exists():
                out.append(f"--- {path}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)

    def _classpath(self) -> str:
        return str(self.jars_dir / "*")

    def _format_once(self, props: Path) -> None:
        """Format the KRaft storage the first time; the cluster id is kept in the data folder."""
        if (self.data_dir / "data" / "meta.properties").exists():
            return
        id_file = self.data_dir / "cluster.id"
        if not id_file.exists():
            id_file.write_text(random_cluster_id() + "\n")
        cmd = [
            "java",
            "-Xmx256m",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp",
            self._classpath(),
            "kafka.tools.StorageTool",
            "format",
            "--standalone",
            "--ignore-formatted",
            "-t",
            id_file.read_text().strip(),
            "-c",
            str(props),
        ]
        done = subprocess.run(
            cmd, capture_output=True, text=True, cwd=self.data_dir, env={**os.environ, "KAFKA_HEAP_OPTS": ""}
        )
        if done.returncode != 0:
            raise KafkaUnavailable(f"formatting the Kafka storage failed:\n{done.stdout}{done.stderr}")


async def _answers_metadata(bootstrap_servers: str) -> bool:
    """True if a broker at ``bootstrap_servers`` answers a metadata request and lists itself."""
    from aiokafka.client import AIOKafkaClient
    from aiokafka.errors import KafkaError

    host, _, port = bootstrap_servers.split(",")[0].rpartition(":")
    try:  # a plain connect first: cheap, and spares the log aiokafka's "Unable connect" errors
        _, writer = await asyncio.open_connection(host, int(port))
        writer.close()
    except OSError:
        return False
    client = AIOKafkaClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=3000, connections_max_idle_ms=5000)
    try:
        await client.bootstrap()
        return bool(client.cluster.brokers())
    except (KafkaError, OSError):
        return False
    finally:
        await client.close()
