"""Bring the stack up and down, remember what runs in a state file, recover after a crash."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .kafka import describe_cluster, start_kafka, stop_kafka
from .postgres import ping_postgres, start_postgres, stop_postgres
from .processes import StackError, peak_rss_mib, pid_alive, pid_cmdline

ENV_BOOTSTRAP = "LOYALTY_KAFKA_BOOTSTRAP"
ENV_PG_DSN = "LOYALTY_PG_DSN"
ENV_BACKEND = "LOYALTY_STACK_BACKEND"


@dataclass(frozen=True)
class Endpoints:
    kafka_bootstrap: str
    pg_dsn: str
    backend: str  # "external" | "embedded" | "testcontainers"

    def as_env(self) -> dict[str, str]:
        return {ENV_BOOTSTRAP: self.kafka_bootstrap, ENV_PG_DSN: self.pg_dsn}


def default_stack_dir() -> Path:
    return Path(os.environ.get("LOYALTY_STACK_DIR", Path.cwd() / ".stack")).resolve()


def default_cache_dir() -> Path:
    base = os.environ.get("LOYALTY_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "loyalty-suite")
    return Path(base).resolve()


def external_from_env() -> Endpoints | None:
    bootstrap, dsn = os.environ.get(ENV_BOOTSTRAP), os.environ.get(ENV_PG_DSN)
    if not bootstrap and not dsn:
        return None
    if not bootstrap or not dsn:
        missing = ENV_BOOTSTRAP if not bootstrap else ENV_PG_DSN
        raise StackError(f"external services need both {ENV_BOOTSTRAP} and {ENV_PG_DSN}; {missing} is not set")
    return Endpoints(bootstrap, dsn, "external")


def _run_to_completion(make: Callable[[], Coroutine[Any, Any, Any]]) -> None:
    """``asyncio.run`` that also works when the caller is inside a running event loop (``loyalty run``'s
    main job asks ``LocalStack.status()``): there the coroutine runs on a loop of its own in a worker thread.
    Without this, the check failed with "asyncio.run() cannot be called from a running event loop", a healthy
    stack looked dead, and the main job tore down a stack it had reused."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(make())
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(lambda: asyncio.run(make())).result()


def check_external(endpoints: Endpoints, timeout_s: float = 10.0) -> None:
    """Fail fast, naming the address, when an external Kafka or Postgres does not answer."""
    try:
        _run_to_completion(
            lambda: asyncio.wait_for(describe_cluster(endpoints.kafka_bootstrap, timeout_s), timeout_s + 1)
        )
    except Exception as exc:
        raise StackError(f"Kafka at {endpoints.kafka_bootstrap} (from {ENV_BOOTSTRAP}) did not answer "
                         f"within {timeout_s:.0f}s: {type(exc).__name__}: {exc}") from exc
    try:
        _run_to_completion(lambda: asyncio.wait_for(ping_postgres(endpoints.pg_dsn, timeout_s), timeout_s + 1))
    except Exception as exc:
        raise StackError(f"Postgres at {_redact(endpoints.pg_dsn)} (from {ENV_PG_DSN}) did not answer "
                         f"within {timeout_s:.0f}s: {type(exc).__name__}: {exc}") from exc


def _redact(dsn: str) -> str:
    if "@" in dsn and "://" in dsn:
        scheme, rest = dsn.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return dsn


class LocalStack:
    """The embedded stack in ``root``: ``state.json`` names the child pids and endpoints; ``dev.env`` exports them."""

    def __init__(self, root: Path | None = None, cache_dir: Path | None = None, *, tied_to_parent: bool = False,
                 fast_postgres: bool = False, kafka_heap_mb: int = 1024) -> None:
        self.root = (root or default_stack_dir()).resolve()
        self.cache_dir = (cache_dir or default_cache_dir()).resolve()
        self.tied_to_parent = tied_to_parent
        self.fast_postgres = fast_postgres
        self.kafka_heap_mb = kafka_heap_mb
        self._containers: list[Any] = []

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def env_file(self) -> Path:
        return self.root / "dev.env"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # One up/down at a time per stack dir; the kernel drops the lock if we crash, so it never goes stale.
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def read_state(self) -> dict[str, Any] | None:
        try:
            state: dict[str, Any] = json.loads(self.state_file.read_text())
            return state
        except (OSError, ValueError):
            return None

    def up(self) -> Endpoints:
        external = external_from_env()
        if external is not None:
            check_external(external)
            return external
        if os.environ.get(ENV_BACKEND, "embedded") == "testcontainers":
            return self._up_testcontainers()
        with self._locked():
            state = self.read_state()
            if state and self._healthy(state):
                return Endpoints(state["kafka_bootstrap"], state["pg_dsn"], "embedded")
            if state:
                self._stop_from_state(state)  # a crashed or half-dead previous run: clear it out
            return self._start_fresh()

    def _start_fresh(self) -> Endpoints:
        for sub in ("kafka", "postgres"):
            shutil.rmtree(self.root / sub, ignore_errors=True)
        started = time.monotonic()
        kafka = start_kafka(self.root / "kafka", self.cache_dir, heap_mb=self.kafka_heap_mb,
                            tied_to_parent=self.tied_to_parent)
        try:
            pg = start_postgres(self.root / "postgres", tied_to_parent=self.tied_to_parent, fast=self.fast_postgres)
        except BaseException:
            stop_kafka(kafka.pid)
            raise
        state = {
            "kafka_pid": kafka.pid, "kafka_bootstrap": kafka.bootstrap, "kafka_log": str(kafka.log_file),
            "pg_pid": pg.pid, "pg_dsn": pg.dsn, "pg_log": str(pg.log_file),
            "started_at": time.time(), "startup_s": round(time.monotonic() - started, 2),
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)
        endpoints = Endpoints(kafka.bootstrap, pg.dsn, "embedded")
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in endpoints.as_env().items()))
        return endpoints

    def _healthy(self, state: dict[str, Any]) -> bool:
        if not (pid_alive(state.get("kafka_pid", -1)) and pid_alive(state.get("pg_pid", -1))):
            return False
        try:
            check_external(Endpoints(state["kafka_bootstrap"], state["pg_dsn"], "embedded"), timeout_s=5)
        except StackError:
            return False
        return True

    def _stop_from_state(self, state: dict[str, Any]) -> None:
        if "kafka_pid" in state:
            stop_kafka(int(state["kafka_pid"]))
        if "pg_pid" in state:
            stop_postgres(int(state["pg_pid"]))
        # Postgres removes postmaster.pid on a clean stop; after SIGKILL it may remain and block a restart.
        pidfile = self.root / "postgres" / "cluster" / "postmaster.pid"
        with contextlib.suppress(OSError):
            pidfile.unlink()

    def down(self) -> bool:
        """Stop what this stack dir started; True if anything was running."""
        for container in reversed(self._containers):
            with contextlib.suppress(Exception):
                container.stop()
        self._containers.clear()
        with self._locked():
            state = self.read_state()
            if not state:
                return False
            self._stop_from_state(state)
            for f in (self.state_file, self.env_file):
                with contextlib.suppress(OSError):
                    f.unlink()
            return True

    def status(self) -> dict[str, Any]:
        state = self.read_state()
        if not state:
            return {"running": False, "stack_dir": str(self.root)}
        out: dict[str, Any] = {"running": True, "stack_dir": str(self.root)}
        for name in ("kafka", "pg"):
            pid = int(state[f"{name}_pid"])
            alive = pid_alive(pid) and bool(pid_cmdline(pid))
            out[name] = {"pid": pid, "alive": alive, "peak_rss_mib": peak_rss_mib(pid) if alive else None,
                         "log": state.get(f"{name}_log")}
        out["kafka"]["bootstrap"] = state["kafka_bootstrap"]
        out["pg"]["dsn"] = _redact(state["pg_dsn"])
        out["healthy"] = self._healthy(state)
        out["startup_s"] = state.get("startup_s")
        return out

    def _up_testcontainers(self) -> Endpoints:
        """Optional path for machines with a Docker engine; never imported otherwise."""
        try:
            from testcontainers.kafka import KafkaContainer
            from testcontainers.postgres import PostgresContainer
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise StackError(f"{ENV_BACKEND}=testcontainers needs the testcontainers package: {exc}") from exc
        try:
            kafka = KafkaContainer("apache/kafka:4.1.1").with_kraft()
            kafka.start()
            self._containers.append(kafka)
            pg = PostgresContainer("postgres:16-alpine", driver=None)
            pg.start()
            self._containers.append(pg)
        except Exception as exc:
            self.down()
            raise StackError(f"{ENV_BACKEND}=testcontainers but no Docker engine answered or a container failed "
                             f"to start: {type(exc).__name__}: {exc}") from exc
        return Endpoints(kafka.get_bootstrap_server(), pg.get_connection_url(), "testcontainers")

