"""Durable timers: rows ``(tenant, kind, key, due_at, payload)``, unique per (kind, key).

The loop claims due rows with ``FOR UPDATE SKIP LOCKED`` (replicas share the work, a row fires once), runs
the registered handler of each kind with a TimerContext whose ``emit`` writes outbox rows in the same
transaction, and deletes the fired rows in that transaction. "Due" means ``due_at <= clock(tenant)``: the
wall clock, or the tenant's event-time watermark (``timer_clock=event``; a low watermark across the consumed
partitions, settled after each batch: ``effects.settle_watermarks``).

A handler that fails for a claimed group is retried one timer at a time; a timer that still fails gets
``attempts + 1``, ``last_error`` and a wall-clock ``retry_at`` with exponential backoff (never dropped).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from opentelemetry.trace import SpanKind, Tracer

from loyalty_kit import outbox
from loyalty_kit.db import is_transient_db_error
from loyalty_kit.effects import ClockMode, EffectContext, run_committed_callbacks
from loyalty_kit.metrics import KitMetrics
from loyalty_kit.telemetry import traceparent_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timer:
    id: int
    tenant: str
    kind: str
    key: str
    due_at: datetime
    payload: dict[str, Any]
    attempts: int


class TimerContext(EffectContext):
    """What a timer handler gets: ``conn`` (open transaction), ``emit(data, tenant=...)``, ``schedule``,
    ``cancel`` and ``now_for``. Rows passed to the handler are deleted before it runs (in its transaction),
    so it may re-arm the same key."""


TimerHandler = Callable[[TimerContext, list[Timer]], Awaitable[None]]

_CLAIM_WALL = """
SELECT id, tenant, kind, key, due_at, payload::text AS payload, attempts FROM timers
WHERE kind = ANY($1::text[]) AND due_at <= now() AND (retry_at IS NULL OR retry_at <= now())
ORDER BY due_at, id LIMIT $2
FOR UPDATE SKIP LOCKED
"""
_CLAIM_EVENT = """
SELECT t.id, t.tenant, t.kind, t.key, t.due_at, t.payload::text AS payload, t.attempts
FROM timers t JOIN tenant_clocks c ON c.tenant = t.tenant
WHERE t.kind = ANY($1::text[]) AND t.due_at <= c.watermark AND (t.retry_at IS NULL OR t.retry_at <= now())
ORDER BY t.due_at, t.id LIMIT $2
FOR UPDATE OF t SKIP LOCKED
"""


def _timer(row: asyncpg.Record) -> Timer:
    return Timer(
        id=row["id"], tenant=row["tenant"], kind=row["kind"], key=row["key"], due_at=row["due_at"],
        payload=json.loads(row["payload"]), attempts=row["attempts"],
    )


class TimerLoop:
    def __init__(
        self,
        *,
        service: str,
        pool: asyncpg.Pool,
        handlers: dict[str, TimerHandler],
        tracer: Tracer,
        metrics: KitMetrics,
        clock: ClockMode = "wall",
        poll_interval_s: float = 1.0,
        claim_limit: int = 500,
        topic_prefix: str = "",
        source: str | None = None,
        on_committed: Callable[[], None] | None = None,
    ) -> None:
        self.service = service
        self.pool = pool
        self.handlers = handlers
        self.tracer = tracer
        self.metrics = metrics
        self.clock = clock
        self.poll_interval_s = poll_interval_s
        self.claim_limit = claim_limit
        self.topic_prefix = topic_prefix
        self.source = source or f"/loyalty/{service}"
        self.on_committed = on_committed
        self._wake = asyncio.Event()
        self.fired_total = 0

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        delay = 0.5
        while True:
            self._wake.clear()
            try:
                while await self.fire_due() == self.claim_limit:
                    pass  # more may be due right now
                delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not is_transient_db_error(exc):
                    log.exception("timer loop error", extra={"service": self.service})
                self.metrics.retries.labels("timers").inc()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)
            except TimeoutError:
                pass

    async def fire_due(self) -> int:
        """Claim and fire one round of due timers; returns how many were claimed."""
        if not self.handlers:
            return 0
        kinds = list(self.handlers)
        claim = _CLAIM_EVENT if self.clock == "event" else _CLAIM_WALL
        async with self.pool.acquire() as conn:
            try:
                async with conn.transaction():
                    timers = [_timer(r) for r in await conn.fetch(claim, kinds, self.claim_limit)]
                    if not timers:
                        return 0
                    committed_callbacks = await self._fire(conn, timers)
                run_committed_callbacks(committed_callbacks)
                self._fired(timers)
                return len(timers)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if is_transient_db_error(exc):
                    raise
                group_error = exc
        # The group failed: fire one by one so one bad timer does not hold back the others.
        log.warning("timer group failed; isolating", extra={"error": type(group_error).__name__})
        claimed = 0
        for timer in timers:
            claimed += 1
            async with self.pool.acquire() as conn:
                try:
                    async with conn.transaction():
                        still = await conn.fetch(
                            "SELECT id, tenant, kind, key, due_at, payload::text AS payload, attempts FROM timers "
                            "WHERE id = $1 FOR UPDATE SKIP LOCKED", timer.id,
                        )
                        if not still:
                            continue
                        committed_callbacks = await self._fire(conn, [_timer(still[0])])
                    run_committed_callbacks(committed_callbacks)
                    self._fired([timer])
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if is_transient_db_error(exc):
                        raise
                    backoff = timedelta(seconds=min(3600, 5 * 2 ** min(timer.attempts, 10)))
                    await conn.execute(
                        "UPDATE timers SET attempts = attempts + 1, last_error = $2, retry_at = now() + $3::interval "
                        "WHERE id = $1",
                        timer.id, f"{type(exc).__name__}: {exc}"[:2000], backoff,
                    )
                    log.error(
                        "timer failed; will retry",
                        extra={"timer_id": timer.id, "kind": timer.kind, "error": type(exc).__name__},
                    )
        return claimed

    async def _fire(self, conn: asyncpg.Connection, timers: list[Timer]) -> list[Callable[[], None]]:
        """Run the handlers in the caller's transaction; returns their ``after_commit`` callbacks."""
        by_kind: dict[str, list[Timer]] = {}
        for t in timers:
            by_kind.setdefault(t.kind, []).append(t)
        # Delete the fired rows before the handlers run (same transaction, so a failure restores them): a
        # handler that schedules the same (kind, key) again creates a new timer that must survive this firing.
        await conn.execute("DELETE FROM timers WHERE id = ANY($1::bigint[])", [t.id for t in timers])
        records: list[Any] = []
        committed_callbacks: list[Callable[[], None]] = []
        for kind, group in by_kind.items():
            with self.tracer.start_as_current_span(
                f"timer {kind}", kind=SpanKind.INTERNAL,
                attributes={"loyalty.service": self.service, "loyalty.timer.kind": kind, "loyalty.timers": len(group)},
            ) as span:
                ctx = TimerContext(
                    conn, service=self.service, source=self.source, clock=self.clock,
                    topic_prefix=self.topic_prefix, default_traceparent=traceparent_of(span),
                )
                await self.handlers[kind](ctx, group)
                records.extend(ctx.outbox)
                committed_callbacks.extend(ctx.committed_callbacks)
        await outbox.insert(conn, records, self.service)
        return committed_callbacks

    def _fired(self, timers: list[Timer]) -> None:
        self.fired_total += len(timers)
        for t in timers:
            self.metrics.timers_fired.labels(t.kind).inc()
        if self.on_committed is not None:
            self.on_committed()


async def count_due(conn: asyncpg.Connection, clock: ClockMode) -> int:
    if clock == "event":
        return await conn.fetchval(
            "SELECT count(*) FROM timers t JOIN tenant_clocks c ON c.tenant = t.tenant WHERE t.due_at <= c.watermark"
        )
    return await conn.fetchval("SELECT count(*) FROM timers WHERE due_at <= now()")
