"""The stack refuses bad configuration with a clear message, and recovers after a crash."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
from pathlib import Path

import pytest
from loyalty_suite.stack import Endpoints, LocalStack, StackError, check_external
from loyalty_suite.stack.kafka import ensure_kafka_jars, require_java17
from loyalty_suite.stack.processes import ensure_port_free, pid_alive


def test_unreachable_external_kafka_fails_fast_naming_the_address(monkeypatch: pytest.MonkeyPatch,
                                                                   pg_admin_dsn: str) -> None:
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("LOYALTY_KAFKA_BOOTSTRAP", dead)
    monkeypatch.setenv("LOYALTY_PG_DSN", pg_admin_dsn)
    with pytest.raises(StackError) as err:
        LocalStack(Path("/nonexistent-never-used")).up()
    assert dead in str(err.value)
    assert "LOYALTY_KAFKA_BOOTSTRAP" in str(err.value)


def test_unreachable_external_postgres_names_it_without_the_password(kafka_bootstrap: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dsn = f"postgresql://svc:s3cret@127.0.0.1:{port}/db"
    with pytest.raises(StackError) as err:
        check_external(Endpoints(kafka_bootstrap, dsn, "external"), timeout_s=3)
    assert f"127.0.0.1:{port}/db" in str(err.value)
    assert "s3cret" not in str(err.value)


def test_half_configured_external_services_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOYALTY_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    monkeypatch.delenv("LOYALTY_PG_DSN", raising=False)
    with pytest.raises(StackError, match="LOYALTY_PG_DSN is not set"):
        LocalStack(Path("/nonexistent-never-used")).up()


def test_taken_port_is_reported() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(StackError, match=f"127.0.0.1:{port} is already taken"):
            ensure_port_free(port, "Kafka")


def test_missing_java_and_maven_are_explained(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    with pytest.raises(StackError, match="Java 17\\+ is required"):
        require_java17()
    with pytest.raises(StackError, match="Maven"):
        ensure_kafka_jars(tmp_path / "empty-cache")


@pytest.mark.integration
def test_second_up_after_a_crash_recovers_and_down_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    tmp_path = Path(tempfile.mkdtemp(prefix="loyalty-crash-test-"))
    tmp_path.chmod(0o755)
    monkeypatch.delenv("LOYALTY_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.delenv("LOYALTY_PG_DSN", raising=False)
    stack = LocalStack(tmp_path / "stack", tied_to_parent=True, fast_postgres=True, kafka_heap_mb=384)
    try:
        first = stack.up()
        state = stack.read_state()
        assert state is not None
        os.kill(state["kafka_pid"], signal.SIGKILL)  # the broker crashes
        second = stack.up()  # recovers: the leftovers are cleared and a fresh stack starts
        new_state = stack.read_state()
        assert new_state is not None and new_state["kafka_pid"] != state["kafka_pid"]
        assert second.kafka_bootstrap != first.kafka_bootstrap or new_state["kafka_pid"] != state["kafka_pid"]
        assert stack.status()["healthy"] is True
        assert stack.up() == second  # a healthy stack is reused, not restarted
    finally:
        assert stack.down() is True
    assert not pid_alive(new_state["kafka_pid"]) and not pid_alive(new_state["pg_pid"])
    assert not (tmp_path / "stack" / "postgres" / "cluster" / "postmaster.pid").exists()
    assert not stack.state_file.exists()
    shutil.rmtree(tmp_path, ignore_errors=True)
