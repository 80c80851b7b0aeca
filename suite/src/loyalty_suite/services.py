"""Run the four services as separate processes (as in production) against a given Kafka and Postgres."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml
from loyalty_kit.kafka import group_for

from .stack.processes import StackError, free_port, tail

SERVICES = ("referrals", "tiers", "surveys", "notifier")


@dataclass
class ServiceProcess:
    name: str
    port: int
    log_file: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def secret_env_names(programs_dir: Path) -> set[str]:
    """Environment variables the program files reference for secrets (keys ending in ``_env`` / ``_envs``)."""
    names: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(key, str) and key.endswith("_env") and isinstance(value, str):
                    names.add(value)
                elif isinstance(key, str) and key.endswith("_envs") and isinstance(value, list):
                    names.update(v for v in value if isinstance(v, str))
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for path in sorted(programs_dir.glob("*.yaml")):
        walk(yaml.safe_load(path.read_text()))
    return {n for n in names if re.fullmatch(r"[A-Z_][A-Z0-9_]*", n)}


def random_secret_for(name: str) -> str:
    """A fresh secret for a variable a program names; webhook signing secrets use the Standard Webhooks form."""
    if "WEBHOOK" in name:
        return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    return secrets.token_urlsafe(32)


@dataclass
class SuiteProcesses:
    """Starts ``python -m loyalty_<svc>`` for each service and stops them all, whatever happens."""

    kafka_bootstrap: str
    pg_admin_dsn: str
    programs_dir: Path
    log_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    services: tuple[str, ...] = SERVICES
    running: dict[str, ServiceProcess] = field(default_factory=dict)

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOYALTY_")}
        # Secrets the programs reference get a per-run random value unless the caller provides one.
        for name in secret_env_names(self.programs_dir):
            env.setdefault(name, random_secret_for(name))
        env.update({
            "LOYALTY_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "LOYALTY_PG_ADMIN_DSN": self.pg_admin_dsn,
            "LOYALTY_PG_DSN": self.pg_admin_dsn,
            "LOYALTY_PROGRAMS_DIR": str(self.programs_dir.resolve()),
            "LOYALTY_HTTP_HOST": "127.0.0.1",
        })
        env.update(self.extra_env)
        return env

    def start(self, name: str, env: dict[str, str] | None = None) -> ServiceProcess:
        port = free_port()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_file = self.log_dir / f"{name}.log"
        proc_env = {**(env or self.base_env()), "LOYALTY_SERVICE": name, "LOYALTY_HTTP_PORT": str(port)}
        with open(log_file, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", f"loyalty_{name}"], env=proc_env, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.running[name] = ServiceProcess(name, port, log_file, proc)
        return self.running[name]

    def start_all(self, timeout_s: float = 120.0) -> None:
        env = self.base_env()
        for name in self.services:
            self.start(name, env)
        for name in self.services:
            self.wait_ready(name, timeout_s)

    def wait_ready(self, name: str, timeout_s: float = 120.0) -> None:
        svc = self.running[name]
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        while time.monotonic() < deadline:
            if svc.proc.poll() is not None:
                raise StackError(f"service {name} exited with code {svc.proc.returncode} during start-up. "
                                 f"Last lines of {svc.log_file}:\n{tail(svc.log_file)}")
            try:
                resp = httpx.get(f"{svc.url}/readyz", timeout=2)
                if resp.status_code == 200:
                    return
                last = resp.text[:300]
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            time.sleep(0.3)
        raise StackError(f"service {name} was not ready after {timeout_s:.0f}s ({last}). "
                         f"Last lines of {svc.log_file}:\n{tail(svc.log_file)}")

    def stop(self, name: str, grace_s: float = 20.0) -> None:
        svc = self.running.pop(name, None)
        if svc is None or svc.proc.poll() is not None:
            return
        svc.proc.send_signal(signal.SIGTERM)  # uvicorn shuts the lifespan down: broker, relay, timers, pool
        try:
            svc.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            svc.proc.kill()
            svc.proc.wait(10)

    def kill(self, name: str) -> None:
        """Crash a service (SIGKILL), as a failure test or a chaos demo would."""
        svc = self.running.pop(name)
        svc.proc.kill()
        svc.proc.wait(10)

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name)


async def consumer_lag(bootstrap: str, groups: list[str]) -> dict[str, int]:
    """Total lag per consumer group: end offsets minus committed offsets, over the group's partitions."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        out: dict[str, int] = {}
        for group in groups:
            committed = await admin.list_consumer_group_offsets(group)
            if not committed:
                out[group] = 0
                continue
            ends = await consumer.end_offsets(list(committed))
            out[group] = sum(max(0, ends[tp] - meta.offset) for tp, meta in committed.items() if meta.offset >= 0)
        return out
    finally:
        await consumer.stop()
        await admin.close()


async def service_lag(bootstrap: str, services: tuple[str, ...] | list[str] = SERVICES) -> dict[str, int]:
    """Lag per service name; each service consumes as its kit consumer group ``group_for(service)``."""
    by_group = await consumer_lag(bootstrap, [group_for(s) for s in services])
    return {s: by_group[group_for(s)] for s in services}


async def wait_drained(bootstrap: str, groups: list[str], timeout_s: float, settle_s: float = 2.0) -> dict[str, int]:
    """Wait until every group has caught up (lag 0 twice, ``settle_s`` apart) or the timeout passes."""
    deadline = time.monotonic() + timeout_s
    lag = await consumer_lag(bootstrap, groups)
    while time.monotonic() < deadline:
        if not any(lag.values()):
            await asyncio.sleep(settle_s)
            lag = await consumer_lag(bootstrap, groups)
            if not any(lag.values()):
                return lag
        await asyncio.sleep(0.5)
        lag = await consumer_lag(bootstrap, groups)
    return lag
