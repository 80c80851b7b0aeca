"""A throwaway single-node Kafka (KRaft, the suite's Maven jars) with SCRAM-SHA-512 and the StandardAuthorizer,
for proving that the chart's KafkaUser ACLs are exactly enough. Listeners: CLIENT (SASL_PLAINTEXT, what
the users connect to) and INTERNAL (PLAINTEXT, super user, used to create topics and ACLs)."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from loyalty_suite.stack.kafka import ensure_kafka_jars, require_java17
from loyalty_suite.stack.stack import default_cache_dir

ACL_TOOL = Path(__file__).with_name("CreateAcls.java")


@dataclass
class SecuredKafka:
    client_bootstrap: str
    internal_bootstrap: str
    lib: Path
    java: str
    process: subprocess.Popen[bytes]
    log: Path

    def create_acls(self, lines: list[str], work: Path) -> None:
        acl_file = work / f"acls-{uuid.uuid4().hex[:6]}.txt"
        acl_file.write_text("\n".join(lines) + "\n")
        result = subprocess.run(
            [self.java, "-cp", f"{self.lib}/*", str(ACL_TOOL), self.internal_bootstrap, str(acl_file)],
            capture_output=True, text=True, timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(f"creating ACLs failed:\n{result.stdout}\n{result.stderr[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def start_secured_kafka(work: Path, users: dict[str, str]) -> SecuredKafka:
    """Format and start the broker with a SCRAM credential per user (name -> password); waits until ready."""
    java = require_java17()
    lib = ensure_kafka_jars(default_cache_dir())
    client, internal, controller = _free_ports(3)
    data = work / "data"
    properties = work / "server.properties"
    properties.write_text("\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{controller}",
        f"listeners=CLIENT://127.0.0.1:{client},INTERNAL://127.0.0.1:{internal},"
        f"CONTROLLER://127.0.0.1:{controller}",
        f"advertised.listeners=CLIENT://127.0.0.1:{client},INTERNAL://127.0.0.1:{internal}",
        "listener.security.protocol.map=CLIENT:SASL_PLAINTEXT,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name=INTERNAL",
        "controller.listener.names=CONTROLLER",
        "sasl.enabled.mechanisms=SCRAM-SHA-512",
        "listener.name.client.scram-sha-512.sasl.jaas.config="
        "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        # PLAINTEXT listeners authenticate as ANONYMOUS: the broker itself and the test's admin side.
        "super.users=User:ANONYMOUS",
        "allow.everyone.if.no.acl.found=false",
        f"log.dirs={data}",
        "num.partitions=1",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=false",
    ]) + "\n")
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
    scram = [arg for name, password in users.items()
             for arg in ("--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]")]
    classpath = f"{lib}/*"
    formatted = subprocess.run(
        [java, "-cp", classpath, "kafka.tools.StorageTool", "format", "-t", cluster_id,
         "-c", str(properties), *scram],
        capture_output=True, text=True, timeout=120,
    )
    if formatted.returncode != 0:
        raise RuntimeError(f"kafka storage format failed:\n{formatted.stdout}\n{formatted.stderr[-3000:]}")
    log = work / "kafka.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [java, "-Xms256m", "-Xmx384m", "-cp", classpath, "kafka.Kafka", str(properties)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    broker = SecuredKafka(f"127.0.0.1:{client}", f"127.0.0.1:{internal}", lib, java, process, log)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"secured kafka exited {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", client), timeout=1):
                return broker
        except OSError:
            time.sleep(0.5)
    broker.stop()
    raise RuntimeError(f"secured kafka did not open its client port in 90 s:\n{log.read_text()[-3000:]}")
