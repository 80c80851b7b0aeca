"""One start of the four real service processes for the end-to-end tests (the `e2e` fixture wraps it).

Isolation on a shared stack without topic prefixes (the services use the catalogue's topic names):
- a fresh Postgres database per run (the services provision their roles and schemas in it); the role
  passwords stay the ones derived from the stack's own admin DSN, so services other people run keep working;
- a consumer group per service and run, committed at the current end of the service's topics before it
  starts, so nothing already on the broker is read and the lag of exactly these groups is measured;
- customer ids that start with this run's prefix; result topics are read from the run's start onwards;
- event times far ahead of any other stream (2031), so this tenant's event-time clock in these databases
  moves only with what the tests publish.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
from aiokafka import AIOKafkaProducer
from e2e_harness import BackgroundLoop, KafkaTail, OtlpReceiver, delete_groups, start_groups_at_end, subscribed_topics
from loyalty_contracts.base import Event, Money
from loyalty_contracts.envelope import Envelope, encode
from loyalty_contracts.events.retail import PurchaseLine, PurchaseMade
from loyalty_kit.roles import derived_password
from loyalty_suite.demo.retailer import ensure_topics
from loyalty_suite.demo.sinks import Sinks, read_sink, write_demo_programs
from loyalty_suite.services import SERVICES, SuiteProcesses

REPO = Path(__file__).resolve().parents[2]
TENANT = "acme-diy"
API_KEY = "acme-demo-key"  # the demo key whose hash programs/acme-diy.yaml lists
SOURCE = "e2e/acme-diy"
# A Monday, 12:00 in Berlin: every test day starts here or later (quiet hours 21:00-08:00 stay out of the way).
EPOCH = datetime(2031, 3, 3, 11, 0, tzinfo=UTC)


def new_traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


@dataclass
class E2ESuite:
    bootstrap: str
    admin_dsn: str
    prefix: str  # every customer id of this run starts with it
    procs: SuiteProcesses
    groups: dict[str, str]
    service_env: dict[str, dict[str, str]]
    sinks_dir: Path
    programs_dir: Path
    referral_secret: str
    otlp: OtlpReceiver
    tail: KafkaTail
    producer: AIOKafkaProducer
    started_at: float
    now: datetime = EPOCH  # the latest event time this run published (the tenant's clock in the services)
    published: list[Envelope] = field(default_factory=list)
    _orders: int = 0

    # --- time -----------------------------------------------------------------------------------------
    def new_day(self) -> datetime:
        """11:00 UTC on the first day after everything published so far (a test's own time line)."""
        day = (self.now + timedelta(days=1)).replace(hour=11, minute=0, second=0, microsecond=0)
        self.now = day
        return day

    async def advance_clock(self, to: datetime) -> None:
        """Move every service's event-time clock to `to`: a 1 EUR purchase of a customer nobody knows.

        PurchaseMade is the one retailer event all four services consume, so each watermark moves.
        """
        self._orders += 1
        await self.publish(PurchaseMade(
            customer_id=f"{self.prefix}-clock", occurred_at=to, order_id=f"{self.prefix}-clock-{self._orders}",
            store_id="web", sales_channel="web", total=Money(amount_minor=100, currency="EUR"),
            lines=[PurchaseLine(line_id="1", sku="tick", category="accessories", quantity=1,
                                unit_price=Money(amount_minor=100, currency="EUR"))],
        ))

    # --- Kafka ----------------------------------------------------------------------------------------
    async def publish(self, event: Event, traceparent: str | None = None) -> Envelope:
        env = Envelope.new(event, tenant=TENANT, source=SOURCE, traceparent=traceparent)
        record = encode(env)
        await (await self.producer.send(record.topic, record.value, key=record.key, headers=record.headers))
        self.published.append(env)
        if env.time > self.now:
            self.now = env.time
        return env

    # --- sinks ----------------------------------------------------------------------------------------
    def sink(self, name: str) -> list[dict[str, Any]]:
        return read_sink(self.sinks_dir, name)

    # --- service processes ----------------------------------------------------------------------------
    def url(self, service: str) -> str:
        return self.procs.running[service].url

    async def get(self, service: str, path: str) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.url(service), timeout=10,
                                     headers={"Authorization": f"Bearer {API_KEY}"}) as client:
            return await client.get(path)

    async def start_service(self, name: str) -> None:
        self.procs.start(name, self.service_env[name])
        await asyncio.to_thread(self.procs.wait_ready, name, 120.0)

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.procs.log_dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


@asynccontextmanager
async def running_suite(kafka_bootstrap: str, pg_admin_dsn: str, root: Path) -> AsyncIterator[E2ESuite]:
    """Sinks, OTLP receiver, a fresh database and consumer groups, the four services; all undone afterwards."""
    run = uuid.uuid4().hex[:8]
    database = f"e2e_{run}"
    conn = await asyncpg.connect(pg_admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()
    run_dsn = urlunsplit(urlsplit(pg_admin_dsn)._replace(path=f"/{database}"))  # same server + superuser

    background = BackgroundLoop()
    sinks = Sinks(root)
    otlp = OtlpReceiver()
    endpoints = background.run(sinks.start())
    background.run(otlp.start())
    programs = write_demo_programs(REPO / "programs", root / "programs", endpoints)
    referral_secret = secrets.token_urlsafe(32)
    await ensure_topics(kafka_bootstrap)
    groups = {name: f"e2e-{run}-{name}" for name in SERVICES}
    for name, group in groups.items():
        await start_groups_at_end(kafka_bootstrap, group, subscribed_topics(name))
    procs = SuiteProcesses(kafka_bootstrap, run_dsn, programs, root / "logs", extra_env={
        **endpoints.notifier_env(),
        "ACME_DIY_REFERRAL_SECRET": referral_secret,
        "LOYALTY_TIMER_CLOCK": "event",
        "LOYALTY_TIMER_POLL_INTERVAL_S": "0.5",
        "LOYALTY_OTEL_EXPORTER_ENDPOINT": otlp.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",  # ms: spans reach the receiver within a fraction of a second
        "LOYALTY_SENDER_POLL_INTERVAL_S": "0.5",
    })
    base = procs.base_env()
    service_env = {name: {**base, "LOYALTY_CONSUMER_GROUP": groups[name],
                          # keep the password other users of the stack derive for this role
                          "LOYALTY_PG_PASSWORD": derived_password(pg_admin_dsn, name)}
                   for name in SERVICES}
    tail = KafkaTail(kafka_bootstrap, prefix=f"e2e{run}")
    await tail.start()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    suite = E2ESuite(
        bootstrap=kafka_bootstrap, admin_dsn=pg_admin_dsn, prefix=f"e2e{run}", procs=procs, groups=groups,
        service_env=service_env, sinks_dir=sinks.directory, programs_dir=programs, referral_secret=referral_secret,
        otlp=otlp, tail=tail, producer=producer, started_at=asyncio.get_running_loop().time(),
    )
    try:
        for name in SERVICES:
            procs.start(name, service_env[name])
        for name in SERVICES:
            await asyncio.to_thread(procs.wait_ready, name, 120.0)
        yield suite
    finally:
        await asyncio.to_thread(procs.stop_all)
        await producer.stop()
        await tail.stop()
        background.run(otlp.stop())
        background.run(sinks.stop())
        background.close()
        await _drop_run_state(kafka_bootstrap, pg_admin_dsn, database, list(groups.values()))
        shutil.rmtree(root / "programs", ignore_errors=True)


async def _drop_run_state(bootstrap: str, admin_dsn: str, database: str, groups: list[str]) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await conn.close()
    await delete_groups(bootstrap, groups)
