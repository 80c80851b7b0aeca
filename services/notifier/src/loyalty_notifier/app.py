"""Wiring: the kit's ServiceApp (inbox, outbox relay, dead letters, timers, health) + the notifier's
handlers, the sender loop and the read API."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from datetime import timedelta
from pathlib import Path

import httpx
from loyalty_kit.programs import ProgramFileInvalid
from loyalty_kit.service import ServiceApp
from loyalty_kit.settings import ServiceSettings
from pydantic import Field

from loyalty_notifier.api import build_router
from loyalty_notifier.channels import ChannelSenders
from loyalty_notifier.config import TenantNotifier, load_tenants, missing_secrets
from loyalty_notifier.handlers import JOURNEY_TIMER, Notifier, consumed_event_types
from loyalty_notifier.sender import Sender

MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger(__name__)


class NotifierSettings(ServiceSettings):
    service: str = "notifier"
    # Key of the HMAC that turns a recipient address into NotificationDelivered.recipient_hash.
    recipient_hash_key: str | None = Field(default=None, description="LOYALTY_RECIPIENT_HASH_KEY")
    sender_poll_interval_s: float = 0.5
    sender_claim_limit: int = 200
    sender_concurrency: int = 32  # more in flight made httpx's pool bookkeeping the bottleneck
    sender_lease_s: float = 120.0
    # Sender loops in this process (claims are serialized; more loops overlap claim/record with sends, but
    # on 2 cores the benchmark showed no gain: sending is CPU-bound).
    sender_workers: int = 1
    # Finished deliveries are the never-twice key while their source events can be replayed (input retention).
    deliveries_retention_days: int = 35
    check_secrets: bool = True


class NotifierApp(ServiceApp):
    """ServiceApp plus the sender loop (started after the kit's parts, stopped before them)."""

    def __init__(
        self,
        settings: NotifierSettings,
        tenants: dict[str, TenantNotifier],
        *,
        environ: dict[str, str] | None = None,
    ) -> None:
        super().__init__("notifier", settings, MIGRATIONS, known_tenants=set(tenants), title="loyalty notifier")
        self.notifier_settings = settings
        self.tenants = tenants
        self.environ = dict(os.environ) if environ is None else environ
        self.notifier = Notifier(tenants)
        self.sender: Sender | None = None
        self.channel_senders: dict[str, ChannelSenders] = {}
        self.http: httpx.AsyncClient | None = None
        self.batch_handler(*consumed_event_types())(self.notifier.handle_batch)
        self.timer_handler(JOURNEY_TIMER)(self.notifier.handle_journey_timers)
        self.include_router(build_router(self))

    async def start(self) -> None:
        await super().start()
        if self.sender is not None:
            return
        s = self.notifier_settings
        key = s.recipient_hash_key or self.environ.get("LOYALTY_RECIPIENT_HASH_KEY")
        if not key:
            log.warning("LOYALTY_RECIPIENT_HASH_KEY not set; recipient hashes use a development key")
            key = "loyalty-notifier-development-key"
        self.http = httpx.AsyncClient(limits=httpx.Limits(max_connections=s.sender_concurrency))
        assert self.pool is not None and self.relay is not None
        self.channel_senders = {
            name: ChannelSenders(t.program, self.http, self.environ) for name, t in self.tenants.items()
        }
        deliveries = self.counter(
            "loyalty_notifier_deliveries_total",
            "Delivery attempts' outcomes by channel (delivered, retry, failover, giveup, suppressed)",
            ["channel", "outcome"],
        )
        latency = self.histogram(
            "loyalty_notifier_delivery_latency_seconds",
            "From the source event's time to the provider's acceptance",
            ["channel"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400),
        )

        def on_outcome(channel: str, outcome: str, seconds: float | None) -> None:
            deliveries.labels(channel, outcome).inc()
            if seconds is not None:
                latency.labels(channel).observe(max(0.0, seconds))

        self.sender = Sender(
            pool=self.pool,
            tenants=self.tenants,
            channels=self.channel_senders,
            service=self.name,
            clock=s.timer_clock,
            topic_prefix=s.topic_prefix,
            hash_key=hashlib.sha256(key.encode()).digest(),
            on_committed=self.relay.wake,
            claim_limit=s.sender_claim_limit,
            lease_s=s.sender_lease_s,
            concurrency=s.sender_concurrency,
            poll_interval_s=s.sender_poll_interval_s,
            on_outcome=on_outcome,
            retention=timedelta(days=s.deliveries_retention_days),
        )
        # Registered with the kit's background tasks: readiness reports it if it stops, stop() cancels it.
        for worker in range(max(1, s.sender_workers)):
            self._tasks.append(asyncio.create_task(self.sender.run(), name=f"notifier-sender-{worker}"))

    async def stop(self) -> None:
        await super().stop()
        self.sender = None
        for senders in self.channel_senders.values():
            await senders.close()
        self.channel_senders = {}
        if self.http is not None:
            await self.http.aclose()
            self.http = None


def build_app(settings: NotifierSettings | None = None, *, environ: dict[str, str] | None = None) -> NotifierApp:
    """Load and validate every program (templates included) and the secrets they name; then wire."""
    s = settings or NotifierSettings()
    tenants = load_tenants(s.programs_dir)
    env = dict(os.environ) if environ is None else environ
    if s.check_secrets:
        problems = missing_secrets(tenants, env)
        if problems:
            raise ProgramFileInvalid(problems)
    return NotifierApp(s, tenants, environ=env)
