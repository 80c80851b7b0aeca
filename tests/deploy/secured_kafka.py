"""The suite's SCRAM broker with the StandardAuthorizer, plus creating ACLs through Kafka's Java admin API
(CreateAcls.java), for proving that the chart's KafkaUser ACLs are exactly enough."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

from loyalty_suite.stack.secured import SecuredKafka
from loyalty_suite.stack.secured import start_secured_kafka as _start

ACL_TOOL = Path(__file__).with_name("CreateAcls.java")

__all__ = ["SecuredKafka", "create_acls", "start_secured_kafka"]


def start_secured_kafka(work: Path, users: dict[str, str]) -> SecuredKafka:
    return _start(work, users, authorizer=True)


def create_acls(kafka: SecuredKafka, lines: list[str], work: Path) -> None:
    acl_file = work / f"acls-{uuid.uuid4().hex[:6]}.txt"
    acl_file.write_text("\n".join(lines) + "\n")
    result = subprocess.run(
        [kafka.java, "-cp", f"{kafka.lib}/*", str(ACL_TOOL), kafka.internal_bootstrap, str(acl_file)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"creating ACLs failed:\n{result.stdout}\n{result.stderr[-3000:]}")
