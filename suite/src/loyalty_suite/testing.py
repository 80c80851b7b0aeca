"""pytest plugin: session fixtures that hand tests a real Kafka bootstrap address and Postgres DSN.

Both come from the same stack code as ``loyalty stack up``: the external services named by
``LOYALTY_KAFKA_BOOTSTRAP`` / ``LOYALTY_PG_DSN`` when set, otherwise an embedded stack started for the
session in a temporary directory and stopped at its end (its children also die with the test process).
A stack that cannot start is a test error with the reason, never a skip.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .stack import Endpoints, LocalStack
from .stack.processes import peak_rss_mib, tree_pss_mib


@pytest.fixture(scope="session")
def stack_endpoints() -> Iterator[Endpoints]:
    # Not pytest's tmp_path: that is private to the user, and Postgres may run as another (unprivileged) user.
    root = Path(tempfile.mkdtemp(prefix="loyalty-test-stack-"))
    root.chmod(0o755)
    stack = LocalStack(root, tied_to_parent=True, fast_postgres=True)
    try:
        yield stack.up()
    finally:
        _MEMORY.update(_stack_memory(stack))
        stack.down()
        shutil.rmtree(root, ignore_errors=True)


_MEMORY: dict[str, float] = {}


def _stack_memory(stack: LocalStack) -> dict[str, float]:
    state = stack.read_state() or {}
    out: dict[str, float] = {}
    if "kafka_pid" in state and (hwm := peak_rss_mib(int(state["kafka_pid"]))) is not None:
        out["kafka peak RSS MiB"] = hwm
    if "pg_pid" in state and (pss := tree_pss_mib(int(state["pg_pid"]))) is not None:
        out["postgres PSS at end MiB (all processes)"] = pss
    return out


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Memory of the embedded stack the session used (the issue asks for broker and Postgres peaks)."""
    if _MEMORY:
        terminalreporter.write_line(
            "local stack memory: " + ", ".join(f"{k} {v:.0f}" for k, v in _MEMORY.items())
        )


@pytest.fixture(scope="session")
def kafka_bootstrap(stack_endpoints: Endpoints) -> str:
    return stack_endpoints.kafka_bootstrap


@pytest.fixture(scope="session")
def pg_admin_dsn(stack_endpoints: Endpoints) -> str:
    return stack_endpoints.pg_dsn


@pytest.fixture
def unique_suffix() -> str:
    """A short random suffix for topic, group, database and schema names, so parallel runs never collide."""
    return uuid.uuid4().hex[:10]
