"""The sender loop: claims due deliveries, enforces the contact budget, sends, records the outcome.

Three short transactions per round, never a network call inside one:
1. claim — lease due rows (FOR UPDATE SKIP LOCKED, status 'sending'); decide the contact budget and
   frequency caps for them (domain.budget_decision) and reserve a slot for each message allowed; suppress
   the others; refuse rows of disabled webhook endpoints;
2. send — outside any transaction, concurrently, per-provider rate limits;
3. record — delivered / retry later (backoff + jitter, then quiet hours) / fail over to the next channel /
   give up; NotificationDelivered / NotificationFailed / NotificationSuppressed through the kit's outbox.
A sender that dies between 1 and 3 leaves rows in 'sending'; when the lease runs out they are resolved by
domain.decide_after_lost_lease (webhooks are resent under the same webhook-id, other channels are not).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from loyalty_contracts.events.notifier import NotificationDelivered, NotificationFailed
from loyalty_kit import outbox
from loyalty_kit.db import is_transient_db_error
from loyalty_kit.effects import EffectContext, clock_now

from loyalty_notifier import store
from loyalty_notifier.channels import ChannelSenders, SendResult
from loyalty_notifier.config import TenantNotifier
from loyalty_notifier.domain import (
    Category,
    Channel,
    ContactRecord,
    EndpointHealth,
    Failover,
    GiveUp,
    Retry,
    Suppressed,
    SuppressionReason,
    budget_decision,
    decide_after_failure,
    decide_after_lost_lease,
    endpoint_after_attempt,
    notification_id,
    recipient_hash,
    release_after_quiet_hours,
    still_allowed,
    zone,
)
from loyalty_notifier.handlers import DELIVERIES_CHANNEL, REPORTED_REASONS, suppressed_event
from loyalty_notifier.store import Attempt, ClaimedDelivery, NewDelivery, Outcome, SuppressionRow

log = logging.getLogger(__name__)

FAILED_REASON_DISABLED = "endpoint_disabled"
CLAIM_LOCK = 0x6E6F7469666965  # "notifie": one advisory lock key for the notifier's claim transactions


class Sender:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        tenants: dict[str, TenantNotifier],
        channels: dict[str, ChannelSenders],
        service: str,
        clock: str = "wall",
        topic_prefix: str = "",
        hash_key: bytes,
        on_committed: Callable[[], None] | None = None,
        claim_limit: int = 200,
        lease_s: float = 120.0,
        concurrency: int = 64,
        poll_interval_s: float = 0.5,
        rnd: Callable[[], float] = random.random,
        retention: timedelta = timedelta(days=35),
        on_outcome: Callable[[str, str, float | None], None] | None = None,
    ) -> None:
        self.pool = pool
        self.tenants = tenants
        self.channels = channels
        self.service = service
        self.clock = clock
        self.topic_prefix = topic_prefix
        self.hash_key = hash_key
        self.on_committed = on_committed
        self.claim_limit = claim_limit
        self.lease_s = lease_s
        self.poll_interval_s = poll_interval_s
        self.rnd = rnd
        self.retention = retention
        self._last_prune = 0.0
        # (channel, outcome, seconds from the source event to delivery) → metrics
        self.on_outcome = on_outcome or (lambda channel, outcome, latency: None)
        self._gate = asyncio.Semaphore(concurrency)
        self._wake = asyncio.Event()
        self.sent_total = 0
        # Seconds spent per phase, and rounds (the benchmark prints them: where does the time go?).
        self.phase_s: dict[str, float] = {"claim": 0.0, "send": 0.0, "record": 0.0}
        self.rounds = 0

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Send forever; woken by NOTIFY from the planning transactions, or by the poll interval."""
        async with self.pool.acquire() as listener:
            await listener.add_listener(DELIVERIES_CHANNEL, self._on_notify)
            try:
                await self._loop()
            finally:
                with contextlib.suppress(Exception):
                    await listener.remove_listener(DELIVERIES_CHANNEL, self._on_notify)

    async def prune(self) -> dict[str, int]:
        windows = [t.budget.per_days for t in self.tenants.values() if t.budget]
        windows += [c.per_days for t in self.tenants.values() for c in t.caps]
        async with self.pool.acquire() as conn:
            return await store.prune(conn, self.retention, timedelta(days=max([1, *windows]) + 1))

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def _loop(self) -> None:
        delay = 0.5
        while True:
            self._wake.clear()
            try:
                if time.monotonic() - self._last_prune > 3600:
                    await self.prune()
                    self._last_prune = time.monotonic()
                await self.recover_lost_leases()
                while await self.send_due() >= self.claim_limit:
                    pass
                delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not is_transient_db_error(exc):
                    log.exception("sender loop error")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)

    def _effects(self, conn: asyncpg.Connection, traceparent: str | None) -> EffectContext:
        return EffectContext(
            conn,
            service=self.service,
            source=f"/loyalty/{self.service}",
            clock=self.clock,  # type: ignore[arg-type]
            topic_prefix=self.topic_prefix,
            default_traceparent=traceparent,
        )

    # ------------------------------------------------------------------------------------------------ round

    async def send_due(self) -> int:
        """One round: claim, send, record. Returns how many rows were claimed."""
        t0 = time.perf_counter()
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                # Claims (and the budget decisions in them) are serialized across workers and replicas, so the
                # contact budget is exact; the claim transaction is short, sends of other workers overlap it.
                await conn.execute("SELECT pg_advisory_xact_lock($1)", CLAIM_LOCK)
                claimed = await store.claim_due(conn, limit=self.claim_limit, lease_s=self.lease_s, clock=self.clock)
                if not claimed:
                    return 0
                to_send, records = await self._admit(conn, claimed)
                await outbox.insert(conn, records, self.service)
        if records and self.on_committed:
            self.on_committed()
        t1 = time.perf_counter()
        results = await asyncio.gather(*(self._send_one(d) for d in to_send))
        t2 = time.perf_counter()
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                records = await self._record(conn, list(zip(to_send, results, strict=True)))
                await outbox.insert(conn, records, self.service)
        self.sent_total += sum(1 for r in results if r.ok)
        if records and self.on_committed:
            self.on_committed()
        t3 = time.perf_counter()
        self.rounds += 1
        for phase, seconds in (("claim", t1 - t0), ("send", t2 - t1), ("record", t3 - t2)):
            self.phase_s[phase] += seconds
        return len(claimed)

    async def _send_one(self, delivery: ClaimedDelivery) -> SendResult:
        senders = self.channels.get(delivery.tenant)
        if senders is None:
            return SendResult(False, None, "tenant no longer configured")
        async with self._gate:
            try:
                return await senders.send(delivery)
            except Exception as exc:  # a bug in a sender must not lose the row's outcome
                log.exception("sender raised", extra={"channel": delivery.channel.value})
                return SendResult(False, None, f"{type(exc).__name__}")

    async def _now(self, conn: asyncpg.Connection, tenant: str) -> datetime:
        return await clock_now(conn, tenant, self.clock)  # type: ignore[arg-type]

    async def _admit(
        self, conn: asyncpg.Connection, claimed: list[ClaimedDelivery]
    ) -> tuple[list[ClaimedDelivery], list[Any]]:
        """Budget, caps and endpoint state, decided in the claim transaction (so two rounds cannot overspend)."""
        budgeted = {
            d.id for d in claimed if d.channel is not Channel.WEBHOOK and d.category is not Category.TRANSACTIONAL
        }
        nows = {t: await self._now(conn, t) for t in {d.tenant for d in claimed}}
        history: dict[store.CustomerKey, list[tuple[str, ContactRecord]]] = {}
        if budgeted:
            longest = max(
                [t.budget.per_days for t in self.tenants.values() if t.budget]
                + [c.per_days for t in self.tenants.values() for c in t.caps]
                + [1]
            )
            history = await store.contact_history(
                conn,
                {(d.tenant, d.customer_id) for d in claimed if d.id in budgeted},
                min(nows.values()) - timedelta(days=longest),
            )
        # Consent is checked again at send time (only customers' messages; webhooks are partner deliveries).
        customers = await store.load_customers(
            conn, {(d.tenant, d.customer_id) for d in claimed if d.channel is not Channel.WEBHOOK}
        )
        endpoints = await store.endpoint_health(conn, {(d.tenant, d.endpoint_id) for d in claimed if d.endpoint_id})
        to_send: list[ClaimedDelivery] = []
        outcomes: list[Outcome] = []
        suppressions: list[tuple[SuppressionRow, datetime]] = []
        failures: list[tuple[ClaimedDelivery, str, str]] = []
        reserve: list[tuple[str, str, str, Category, datetime]] = []

        def suppress(d: ClaimedDelivery, reason: str, detail: str) -> None:
            self.on_outcome(d.channel.value, "suppressed", None)
            outcomes.append(Outcome(d.id, "suppressed", error=reason))
            row = SuppressionRow(d.tenant, d.customer_id, d.source_event_id, d.source_event_type, d.template,
                                 d.category, d.channel, reason, detail)
            suppressions.append((row, d.source_time))

        for d in claimed:
            tenant = self.tenants.get(d.tenant)
            if tenant is None:
                outcomes.append(Outcome(d.id, "failed", error="tenant no longer configured"))
                continue
            if d.endpoint_id and endpoints[(d.tenant, d.endpoint_id)].disabled:
                outcomes.append(Outcome(d.id, "failed", error="endpoint disabled"))
                failures.append((d, FAILED_REASON_DISABLED, f"endpoint {d.endpoint_id} is disabled"))
                continue
            if d.channel is not Channel.WEBHOOK:
                customer = customers.get((d.tenant, d.customer_id))
                withdrawn = still_allowed(customer.profile if customer else None, d.category, d.channel)
                if withdrawn is not None:
                    suppress(d, withdrawn.reason.value, withdrawn.detail)
                    continue
            if d.id in budgeted:
                own = history.setdefault((d.tenant, d.customer_id), [])
                if not any(source == d.source_event_id for source, _ in own):  # retries/failover: already counted
                    now = nows[d.tenant]
                    verdict = budget_decision(d.category, (r for _, r in own), now, tenant.budget, tenant.caps)
                    if isinstance(verdict, Suppressed):
                        suppress(d, verdict.reason.value, verdict.detail)
                        continue
                    own.append((d.source_event_id, ContactRecord(now, d.category)))
                    reserve.append((d.tenant, d.customer_id, d.source_event_id, d.category, now))
            to_send.append(d)
        await store.record_outcomes(conn, outcomes)
        await store.reserve_contacts(conn, reserve)
        records: list[Any] = []
        rows = [s for s, _ in suppressions]
        for index in await store.insert_suppressions(conn, rows):
            row, at = suppressions[index]
            if SuppressionReason(row.reason) in REPORTED_REASONS:
                fx = self._effects(conn, None)
                fx.emit(suppressed_event(row, at), tenant=row.tenant)
                records.extend(fx.outbox)
        for d, reason, detail in failures:
            records.extend(self._failed(conn, d, reason, detail))
        return to_send, records

    def _failed(self, conn: asyncpg.Connection, d: ClaimedDelivery, reason: str, detail: str) -> list[Any]:
        fx = self._effects(conn, d.traceparent)
        fx.emit(
            NotificationFailed(
                customer_id=d.customer_id,
                occurred_at=d.source_time,
                notification_id=d.notification_id,
                source_event_id=d.source_event_id,
                source_event_type=d.source_event_type,
                channel=d.channel.value,  # type: ignore[arg-type]
                template=d.template,
                reason=reason,  # type: ignore[arg-type]
                detail=detail[:500],
                attempts=d.attempts,
            ),
            tenant=d.tenant,
        )
        return fx.outbox

    async def _record(self, conn: asyncpg.Connection, results: list[tuple[ClaimedDelivery, SendResult]]) -> list[Any]:
        outcomes: list[Outcome] = []
        attempts: list[Attempt] = []
        failovers: list[NewDelivery] = []
        released: list[tuple[str, str, str]] = []
        records: list[Any] = []
        health = await store.endpoint_health(conn, {(d.tenant, d.endpoint_id) for d, _ in results if d.endpoint_id})
        changed_health: dict[tuple[str, str], EndpointHealth] = {}
        for d, result in results:
            attempts.append(
                Attempt(
                    d.id,
                    d.attempts,
                    result.ok,
                    result.failure.value if result.failure else None,
                    result.status_code,
                    result.detail or None,
                )
            )
            tenant = self.tenants.get(d.tenant)
            if d.endpoint_id and tenant is not None:
                endpoint = next((w for w in tenant.program.webhooks if w.id == d.endpoint_id), None)
                if endpoint is not None:
                    hkey = (d.tenant, d.endpoint_id)
                    health[hkey] = changed_health[hkey] = endpoint_after_attempt(
                        health[hkey], succeeded=result.ok, disable_after=endpoint.disable_after_failures
                    )
            if result.ok:
                self.on_outcome(d.channel.value, "delivered", time.time() - d.source_time.timestamp())
                outcomes.append(Outcome(d.id, "delivered"))
                fx = self._effects(conn, d.traceparent)
                fx.emit(
                    NotificationDelivered(
                        customer_id=d.customer_id,
                        occurred_at=d.source_time,
                        notification_id=d.notification_id,
                        source_event_id=d.source_event_id,
                        source_event_type=d.source_event_type,
                        channel=d.channel.value,  # type: ignore[arg-type]
                        template=d.template,
                        recipient_hash=recipient_hash(d.recipient, self.hash_key),
                        attempts=d.attempts,
                    ),
                    tenant=d.tenant,
                )
                records.extend(fx.outbox)
                continue
            if tenant is None or result.failure is None:
                outcomes.append(Outcome(d.id, "failed", error=result.detail))
                records.extend(self._failed(conn, d, "provider_error", result.detail))
                released.append((d.tenant, d.customer_id, d.source_event_id))
                continue
            now = await self._now(conn, d.tenant)
            decision = decide_after_failure(
                result.failure,
                attempts_made=d.attempts,
                schedule=tenant.program.retry.schedule_seconds,
                jitter_fraction=tenant.program.retry.jitter_fraction,
                rnd=self.rnd(),
                now=now,
                fallbacks=d.fallbacks,
                error=result.detail,
            )
            self.on_outcome(d.channel.value, type(decision).__name__.lower(), None)
            if isinstance(decision, Retry):
                due = release_after_quiet_hours(
                    decision.at, zone(d.time_zone, tenant.timezone), tenant.quiet, d.category
                )
                outcomes.append(Outcome(d.id, "pending", due_at=due, error=result.detail))
            elif isinstance(decision, Failover):
                outcomes.append(Outcome(d.id, "failed_over", error=result.detail))
                failovers.append(self._failover_row(d, decision, now))
            else:
                assert isinstance(decision, GiveUp)
                outcomes.append(Outcome(d.id, "failed", error=decision.reason))
                reason = "retries_exhausted" if d.attempts > 1 else "provider_error"
                records.extend(self._failed(conn, d, reason, decision.reason))
                released.append((d.tenant, d.customer_id, d.source_event_id))
        await store.record_outcomes(conn, outcomes)
        await store.log_attempts(conn, attempts)
        if await store.insert_deliveries(conn, failovers):
            self._wake.set()  # the next channel is due now: do not wait for the poll interval
        await store.release_contacts(conn, released)
        await store.save_endpoint_health(conn, changed_health)
        return records

    def _failover_row(self, d: ClaimedDelivery, decision: Failover, now: datetime) -> NewDelivery:
        return NewDelivery(
            tenant=d.tenant,
            customer_id=d.customer_id,
            notification_id=notification_id(d.tenant, d.source_event_id, decision.channel, decision.recipient),
            source_event_id=d.source_event_id,
            source_event_type=d.source_event_type,
            channel=decision.channel,
            recipient=decision.recipient,
            endpoint_id=None,
            category=d.category,
            template=d.template,
            locale=d.locale,
            time_zone=d.time_zone,
            content=d.content,
            fallbacks=decision.fallbacks,
            journey_step=d.journey_step,
            due_at=max(now, d.due_at),
            source_time=d.source_time,
            traceparent=d.traceparent,
        )

    # ------------------------------------------------------------------------------------------------ leases

    async def recover_lost_leases(self) -> int:
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                lost = await store.claim_lost_leases(conn, self.claim_limit)
                if not lost:
                    return 0
                outcomes: list[Outcome] = []
                records: list[Any] = []
                for d in lost:
                    decision = decide_after_lost_lease(d.channel, await self._now(conn, d.tenant))
                    if isinstance(decision, Retry):
                        outcomes.append(Outcome(d.id, "pending", due_at=decision.at, error="lease lost; resending"))
                    else:
                        outcomes.append(Outcome(d.id, "failed", error=decision.reason))
                        records.extend(self._failed(conn, d, "provider_error", decision.reason))
                await store.record_outcomes(conn, outcomes)
                await outbox.insert(conn, records, self.service)
        if records and self.on_committed:
            self.on_committed()
        return len(lost)
