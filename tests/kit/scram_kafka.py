"""A throwaway single-node Kafka (KRaft, the suite's Maven jars) whose only client listener is
SASL_PLAINTEXT with SCRAM-SHA-512, so a client that ignored the kit's security settings cannot connect.
(tests/deploy/secured_kafka.py adds ACLs on top of the same idea; here no authorizer: only authentication.)"""

from __future__ import annotations

import base64
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from loyalty_suite.stack.kafka import ensure_kafka_jars, require_java17
from loyalty_suite.stack.processes import free_port, spawn, tail, terminate
from loyalty_suite.stack.stack import default_cache_dir


@dataclass
class ScramKafka:
    bootstrap: str
    pid: int
    log: Path

    def stop(self) -> None:
        terminate(self.pid, grace_s=20, expect_in_cmdline="kafka.Kafka")


def start_scram_kafka(work: Path, users: dict[str, str]) -> ScramKafka:
    java = require_java17()
    lib = ensure_kafka_jars(default_cache_dir())
    client, internal, controller = free_port(), free_port(), free_port()
    properties = work / "server.properties"
    properties.write_text("\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{controller}",
        f"listeners=CLIENT://127.0.0.1:{client},INTERNAL://127.0.0.1:{internal},CONTROLLER://127.0.0.1:{controller}",
        f"advertised.listeners=CLIENT://127.0.0.1:{client},INTERNAL://127.0.0.1:{internal}",
        "listener.security.protocol.map=CLIENT:SASL_PLAINTEXT,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name=INTERNAL",
        "controller.listener.names=CONTROLLER",
        "sasl.enabled.mechanisms=SCRAM-SHA-512",
        "listener.name.client.scram-sha-512.sasl.jaas.config="
        "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        f"log.dirs={work / 'data'}",
        "num.partitions=1",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=false",
        "log.cleaner.dedupe.buffer.size=16777216",  # the 128 MiB default does not fit a small heap
    ]) + "\n")
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
    scram = [arg for name, password in users.items()
             for arg in ("--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]")]
    formatted = subprocess.run(
        [java, "-cp", f"{lib}/*", "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(properties),
         *scram],
        capture_output=True, text=True, timeout=120,
    )
    if formatted.returncode != 0:
        raise RuntimeError(f"kafka storage format failed:\n{formatted.stdout}\n{formatted.stderr[-3000:]}")
    log = work / "kafka.log"
    process = spawn([java, "-Xms128m", "-Xmx384m", "-cp", f"{lib}/*", "kafka.Kafka", str(properties)],
                    log_file=log, tied_to_parent=True)
    broker = ScramKafka(f"127.0.0.1:{client}", process.pid, log)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"SCRAM kafka exited {process.returncode}:\n{tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", client), timeout=1):
                return broker
        except OSError:
            time.sleep(0.5)
    broker.stop()
    raise RuntimeError(f"SCRAM kafka did not open its client port in 90 s:\n{tail(log)}")
