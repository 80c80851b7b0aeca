"""A throwaway single-node Kafka (KRaft, the stack's Maven jars) whose client listener only accepts
SASL_PLAINTEXT with SCRAM-SHA-512 — for tests that prove clients really authenticate and, with
``authorizer=True`` (StandardAuthorizer, deny by default), that ACLs are exactly enough.

Listeners: CLIENT (SCRAM, what users connect to) and INTERNAL (PLAINTEXT, authenticated as ANONYMOUS, the
super user the test uses to create topics and ACLs)."""

from __future__ import annotations

import base64
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .kafka import ensure_kafka_jars, require_java17
from .processes import StackError, free_port, spawn, tail, terminate
from .stack import default_cache_dir


@dataclass
class SecuredKafka:
    client_bootstrap: str
    internal_bootstrap: str
    lib: Path
    java: str
    pid: int
    log: Path

    @property
    def bootstrap(self) -> str:
        """Where SCRAM users connect."""
        return self.client_bootstrap

    def stop(self) -> None:
        terminate(self.pid, grace_s=20, expect_in_cmdline="kafka.Kafka")


def _properties(client: int, internal: int, controller: int, data: Path, authorizer: bool) -> str:
    lines = [
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
        "log.cleaner.dedupe.buffer.size=16777216",  # the 128 MiB default does not fit a small heap
    ]
    if authorizer:
        lines += [
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            # PLAINTEXT listeners authenticate as ANONYMOUS: the broker itself and the test's admin side.
            "super.users=User:ANONYMOUS",
            "allow.everyone.if.no.acl.found=false",
        ]
    return "\n".join(lines) + "\n"


def start_secured_kafka(work: Path, users: dict[str, str], *, authorizer: bool = False,
                        ready_timeout_s: float = 90.0) -> SecuredKafka:
    """Format and start the broker with a SCRAM credential per user (name -> password); waits until ready.

    The broker dies with the calling process (tests)."""
    java = require_java17()
    lib = ensure_kafka_jars(default_cache_dir())
    client, internal, controller = free_port(), free_port(), free_port()
    properties = work / "server.properties"
    properties.write_text(_properties(client, internal, controller, work / "data", authorizer))
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
    scram = [arg for name, password in users.items()
             for arg in ("--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]")]
    classpath = f"{lib}/*"
    formatted = subprocess.run(
        [java, "-cp", classpath, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(properties),
         *scram],
        capture_output=True, text=True, timeout=120, check=False,
    )
    if formatted.returncode != 0:
        raise StackError(f"kafka storage format failed:\n{formatted.stdout}\n{formatted.stderr[-3000:]}")
    log = work / "kafka.log"
    process = spawn([java, "-Xms128m", "-Xmx384m", "-cp", classpath, "kafka.Kafka", str(properties)],
                    log_file=log, tied_to_parent=True)
    broker = SecuredKafka(f"127.0.0.1:{client}", f"127.0.0.1:{internal}", lib, java, process.pid, log)
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StackError(f"SCRAM kafka exited {process.returncode}:\n{tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", client), timeout=1):
                return broker
        except OSError:
            time.sleep(0.5)
    broker.stop()
    raise StackError(f"SCRAM kafka did not open its client port in {ready_timeout_s:.0f} s:\n{tail(log)}")
