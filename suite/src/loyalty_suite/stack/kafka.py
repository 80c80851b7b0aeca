"""A real single-node Apache Kafka (KRaft) run from jars resolved from Maven Central."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .processes import StackError, ensure_port_free, free_port, port_open, spawn, tail, terminate

KAFKA_VERSION = "4.1.1"
_POM = "kafka-pom.xml"


def require_java17() -> str:
    java = shutil.which("java")
    if java is None:
        raise StackError("Java 17+ is required to run Kafka but `java` is not on PATH "
                         "(Debian/Ubuntu: apt-get install -y openjdk-17-jre-headless)")
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    text = out.stderr + out.stdout
    match = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if not match:
        raise StackError(f"could not read the Java version from `java -version`: {text.strip()[:200]}")
    major = int(match.group(1))
    if major == 1 and match.group(2):
        major = int(match.group(2))
    if major < 17:
        raise StackError(f"Kafka {KAFKA_VERSION} needs Java 17+, found Java {major} at {java}")
    return java


def ensure_kafka_jars(cache_dir: Path) -> Path:
    """Resolve Kafka's runtime jars into ``cache_dir/kafka-<version>/lib`` (once; later runs reuse them)."""
    home = cache_dir / f"kafka-{KAFKA_VERSION}"
    lib = home / "lib"
    marker = home / ".complete"
    if marker.exists() and any(lib.glob("kafka_2.13-*.jar")):
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError("Maven (`mvn`) is required once to fetch Kafka's jars from Maven Central "
                         "(Debian/Ubuntu: apt-get install -y maven)")
    home.mkdir(parents=True, exist_ok=True)
    pom = resources.files(__package__).joinpath(_POM).read_text()
    (home / "pom.xml").write_text(pom)
    if lib.exists():
        shutil.rmtree(lib)
    cmd = [mvn, "-B", "-q", "org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies",
           "-DincludeScope=runtime", f"-DoutputDirectory={lib}"]
    proc = subprocess.run(cmd, cwd=home, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not any(lib.glob("kafka_2.13-*.jar")):
        raise StackError("resolving Kafka jars with Maven failed:\n" + (proc.stdout + proc.stderr)[-3000:])
    marker.write_text(KAFKA_VERSION)
    return lib


@dataclass
class KafkaProcess:
    pid: int
    port: int
    controller_port: int
    data_dir: Path

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "kafka.log"


def _server_properties(port: int, cport: int, log_dirs: Path) -> str:
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.bootstrap.servers=127.0.0.1:{cport}",
        f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name=PLAINTEXT",
        f"log.dirs={log_dirs}",
        "num.partitions=3",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=10",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "default.replication.factor=1",
        "min.insync.replicas=1",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=false",
        "log.retention.hours=24",
        "",
    ])


def _log4j2_config(log_file: Path) -> str:
    return "\n".join([
        "status = warn",
        "appender.file.type = File",
        "appender.file.name = FILE",
        f"appender.file.fileName = {log_file}",
        "appender.file.layout.type = PatternLayout",
        "appender.file.layout.pattern = [%d] %p %m (%c)%n",
        "rootLogger.level = INFO",
        "rootLogger.appenderRef.file.ref = FILE",
        "logger.request.name = kafka.request.logger",
        "logger.request.level = WARN",
        "",
    ])


def start_kafka(data_dir: Path, cache_dir: Path, *, port: int | None = None, heap_mb: int = 512,
                tied_to_parent: bool, ready_timeout_s: float = 90.0) -> KafkaProcess:
    java = require_java17()
    lib = ensure_kafka_jars(cache_dir)
    if port is not None:
        ensure_port_free(port, "Kafka")
    port = port or free_port()
    cport = free_port()
    while cport == port:
        cport = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    logs = data_dir / "logs"
    props = data_dir / "server.properties"
    props.write_text(_server_properties(port, cport, logs))
    log_file = data_dir / "kafka.log"
    log4j = data_dir / "log4j2.properties"
    log4j.write_text(_log4j2_config(log_file))
    classpath = f"{lib}/*"
    uuid = subprocess.run([java, "-cp", classpath, "kafka.tools.StorageTool", "random-uuid"],
                          capture_output=True, text=True, check=False)
    cluster_id = uuid.stdout.strip().splitlines()[-1] if uuid.returncode == 0 and uuid.stdout.strip() else ""
    if not cluster_id:
        raise StackError(f"kafka StorageTool random-uuid failed: {uuid.stderr[-2000:]}")
    fmt = subprocess.run([java, "-cp", classpath, f"-Dlog4j2.configurationFile={log4j}",
                          "kafka.tools.StorageTool", "format", "--standalone", "-t", cluster_id, "-c", str(props)],
                         capture_output=True, text=True, check=False)
    if fmt.returncode != 0:
        raise StackError(f"formatting Kafka storage in {logs} failed:\n{(fmt.stdout + fmt.stderr)[-2000:]}")
    argv = [java, f"-Xms{min(256, heap_mb)}m", f"-Xmx{heap_mb}m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}", "-cp", classpath, "kafka.Kafka", str(props)]
    proc = spawn(argv, log_file=data_dir / "kafka.stdout", tied_to_parent=tied_to_parent)
    kafka = KafkaProcess(pid=proc.pid, port=port, controller_port=cport, data_dir=data_dir)
    try:
        wait_kafka_ready(kafka.bootstrap, ready_timeout_s, process=proc, log_file=log_file)
    except BaseException:
        terminate(proc.pid, grace_s=5)
        raise
    return kafka


def wait_kafka_ready(bootstrap: str, timeout_s: float, *, process: subprocess.Popen[bytes] | None = None,
                     log_file: Path | None = None) -> None:
    """Ready means a real admin call (describe cluster) answered, not just an open port."""
    host, _, port_s = bootstrap.rpartition(":")
    deadline = time.monotonic() + timeout_s
    last_error = "port not open yet"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise StackError(f"Kafka exited with code {process.returncode} before it was ready. "
                             f"Last lines of {log_file}:\n{tail(log_file) if log_file else ''}")
        if port_open(host, int(port_s)):
            try:
                asyncio.run(describe_cluster(bootstrap, timeout_s=10))
                return
            except Exception as exc:  # the broker may still be electing its controller
                last_error = f"{type(exc).__name__}: {exc}"
        time.sleep(0.3)
    raise StackError(f"Kafka at {bootstrap} was not ready after {timeout_s:.0f}s ({last_error}). "
                     f"Last lines of {log_file}:\n{tail(log_file) if log_file else ''}")


async def describe_cluster(bootstrap: str, timeout_s: float = 10.0) -> dict[str, object]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        return dict(await asyncio.wait_for(admin.describe_cluster(), timeout_s))
    finally:
        await admin.close()


def stop_kafka(pid: int) -> None:
    # SIGTERM lets the broker close its logs cleanly, so the next start on the same dir is fast.
    terminate(pid, grace_s=30, expect_in_cmdline="kafka.Kafka")
