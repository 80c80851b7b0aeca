"""The outbox relay in a process of its own, supervised by the service process.

Why: a service process is one Python interpreter, so the consumer's decode/handle work and the relay's
read/publish work share one core. In its own process the relay runs on another core; the benchmark
(docs/BENCHMARKS.md) measures both modes. Correctness does not change: the child runs the same
``OutboxRelay`` (one leader per schema by advisory lock, every unpublished row in id order, delete after
ack), it wakes on the outbox's ``NOTIFY`` (sent by each inserting transaction, delivered at commit) and
on its poll interval.

Protocol: the parent starts ``python -m loyalty_kit.relay_child``, writes one JSON line on its stdin
(the service's settings and its role's DSN: secrets never appear in argv or the environment) and reads
lines back on its stdout: ``leader 0|1`` and ``published <n>``. The child logs JSON to stderr like the
service, dies with its parent (``PR_SET_PDEATHSIG``) and is restarted with back-off if it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from typing import Any

from loyalty_kit.metrics import KitMetrics
from loyalty_kit.runtime import die_with_parent
from loyalty_kit.settings import ServiceSettings

log = logging.getLogger(__name__)

class RelayProcess:
    """Stands in for ``OutboxRelay`` inside ``ServiceApp`` when ``outbox_relay = "process"``.

    Same surface the app and its callers use: ``run()`` (supervise until cancelled), ``wake()``,
    ``is_leader`` and ``published_total``; ``outbox_published`` is counted on the service's own /metrics.
    """

    def __init__(self, settings: ServiceSettings, dsn: str, metrics: KitMetrics | None = None) -> None:
        self.settings = settings
        self.dsn = dsn
        self.metrics = metrics
        self.is_leader = False
        self.published_total = 0
        self.restarts = 0
        self._proc: asyncio.subprocess.Process | None = None

    def wake(self) -> None:
        """Nothing to do: the child listens for the outbox's NOTIFY, sent when the inserting transaction commits."""

    def _config_line(self) -> bytes:
        return json.dumps({"settings": self.settings.model_dump(mode="json"), "dsn": self.dsn}).encode() + b"\n"

    async def run(self) -> None:
        backoff = 0.5
        while True:
            started = asyncio.get_running_loop().time()
            try:
                code = await self._run_once()
            except asyncio.CancelledError:
                await self._terminate()
                raise
            self.is_leader = False
            if asyncio.get_running_loop().time() - started > 30:
                backoff = 0.5
            log.warning("outbox relay process exited; restarting",
                        extra={"service": self.settings.service, "exit_code": code, "backoff_s": backoff})
            if self.metrics:
                self.metrics.retries.labels("outbox_relay").inc()
            self.restarts += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)

    async def _run_once(self) -> int:
        proc = self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "loyalty_kit.relay_child",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(self._config_line())
        await proc.stdin.drain()
        proc.stdin.close()
        async for line in proc.stdout:
            self._on_line(line)
        return await proc.wait()

    def _on_line(self, line: bytes) -> None:
        word, _, value = line.decode(errors="replace").strip().partition(" ")
        if word == "published":
            n = int(value)
            self.published_total += n
            if self.metrics:
                self.metrics.outbox_published.inc(n)
        elif word == "leader":
            self.is_leader = value == "1"

    async def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        self.is_leader = False
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


# --- the child ----------------------------------------------------------------------------------------------
async def _serve(config: dict[str, Any]) -> None:
    from loyalty_kit.db import create_pool
    from loyalty_kit.outbox import OutboxRelay, make_producer

    settings = ServiceSettings(**config["settings"])
    out = sys.stdout

    def report(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    pool = await create_pool(config["dsn"], settings.service, min_size=1, max_size=2)
    producer = make_producer(settings.kafka_bootstrap, **settings.kafka_options())
    try:
        await producer.start()
        relay = OutboxRelay(
            pool, settings.service, producer, poll_interval_s=settings.outbox_poll_interval_s,
            on_published=lambda n: report(f"published {n}"),
            on_leadership=lambda leader: report(f"leader {int(leader)}"),
        )
        task = asyncio.create_task(relay.run(), name=f"{settings.service}-outbox-relay")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        with contextlib.suppress(Exception):
            await producer.stop()
        await pool.close()


def main() -> None:
    die_with_parent()
    config = json.loads(sys.stdin.readline())
    from loyalty_kit.logs import configure_logging
    from loyalty_kit.runtime import tune_gc

    configure_logging(f"{config['settings']['service']}-relay", config["settings"].get("log_level", "INFO"))
    tune_gc()
    asyncio.run(_serve(config))

