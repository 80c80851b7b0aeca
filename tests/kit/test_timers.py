"""Durable timers: fire once (even with two loops competing), emit through the outbox, event-time clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from loyalty_contracts.events.tiers import TierProgressMilestone
from loyalty_kit import migrations
from loyalty_kit.db import create_pool
from loyalty_kit.effects import advance_watermarks, schedule_timer
from loyalty_kit.metrics import KitMetrics
from loyalty_kit.timers import Timer, TimerContext, TimerLoop
from opentelemetry.sdk.trace import TracerProvider


@pytest.fixture
async def timer_pool(kit_db: str, service_name: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(kit_db, service_name, min_size=1, max_size=8)
    await migrations.apply(pool, service_name, None)
    yield pool
    await pool.close()


def loop_for(
    pool: asyncpg.Pool, service: str, fired: list[str], *, clock: str = "wall", fail_on: str = ""
) -> TimerLoop:
    async def on_nudge(ctx: TimerContext, timers: list[Timer]) -> None:
        await asyncio.sleep(0.01)  # widen the window in which a second loop could grab the same rows
        for t in timers:
            if t.key == fail_on:
                raise RuntimeError("boom")
            fired.append(t.key)
            ctx.emit(
                TierProgressMilestone(
                    customer_id=t.payload["customer"], occurred_at=t.due_at, tier="a", next_tier="b",
                    fraction=0.5, points=1, points_needed=1,
                ),
                tenant=t.tenant,
            )

    return TimerLoop(
        service=service, pool=pool, handlers={"nudge": on_nudge}, tracer=TracerProvider().get_tracer("t"),
        metrics=KitMetrics(service), clock=clock, poll_interval_s=0.05, claim_limit=7,  # type: ignore[arg-type]
    )


async def test_due_timers_fire_once_across_competing_loops(timer_pool: asyncpg.Pool, service_name: str) -> None:
    now = datetime.now(UTC)
    async with timer_pool.acquire() as conn:
        for i in range(60):
            await schedule_timer(
                conn, kind="nudge", key=f"due-{i}", due_at=now - timedelta(seconds=1), payload={"customer": f"c{i}"},
                tenant="acme-diy",
            )
        await schedule_timer(
            conn, kind="nudge", key="later", due_at=now + timedelta(hours=1), payload={"customer": "x"},
            tenant="acme-diy",
        )
        # replace=False keeps the first schedule; replace=True moves it.
        await schedule_timer(
            conn, kind="nudge", key="due-0", due_at=now + timedelta(days=9), payload={"customer": "c0"},
            tenant="acme-diy", replace=False,
        )
    fired: list[str] = []
    loops = [loop_for(timer_pool, service_name, fired) for _ in range(2)]
    tasks = [asyncio.create_task(lp.run()) for lp in loops]
    try:
        for _ in range(100):
            if len(fired) >= 60:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert sorted(fired) == sorted(f"due-{i}" for i in range(60))
    assert sum(lp.fired_total for lp in loops) == 60
    async with timer_pool.acquire() as conn:
        left = await conn.fetch("SELECT key FROM timers")
        assert [r["key"] for r in left] == ["later"]
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 60


async def test_event_clock_fires_when_the_tenant_watermark_passes_due_at(
    timer_pool: asyncpg.Pool, service_name: str
) -> None:
    from loyalty_contracts.envelope import Envelope
    from loyalty_contracts.samples import T0, sample, with_customer

    def purchase_at(t: datetime, tenant: str) -> Envelope:
        data = with_customer(sample("loyalty.PurchaseMade.v1"), "c1", t)
        return Envelope.new(data, tenant=tenant, source="/test")

    async with timer_pool.acquire() as conn:
        await schedule_timer(
            conn, kind="nudge", key="k", due_at=T0 + timedelta(days=2), payload={"customer": "c1"}, tenant="acme-diy"
        )
    fired: list[str] = []
    loop = loop_for(timer_pool, service_name, fired, clock="event")
    assert await loop.fire_due() == 0  # no events yet: the tenant's clock is at the epoch
    async with timer_pool.acquire() as conn:
        await advance_watermarks(conn, [purchase_at(T0 + timedelta(days=1), "acme-diy")])
        await advance_watermarks(conn, [purchase_at(T0 + timedelta(days=5), "other-tenant")])
    assert await loop.fire_due() == 0  # another tenant's time does not move this tenant's clock
    async with timer_pool.acquire() as conn:
        await advance_watermarks(conn, [purchase_at(T0 + timedelta(days=3), "acme-diy")])
        await advance_watermarks(conn, [purchase_at(T0, "acme-diy")])  # late event: clock never goes back
    assert await loop.fire_due() == 1
    assert fired == ["k"]
    assert await loop.fire_due() == 0


async def test_a_failing_timer_is_retried_later_and_does_not_block_others(
    timer_pool: asyncpg.Pool, service_name: str
) -> None:
    now = datetime.now(UTC)
    async with timer_pool.acquire() as conn:
        for key in ("a", "bad", "c"):
            await schedule_timer(
                conn, kind="nudge", key=key, due_at=now - timedelta(seconds=1), payload={"customer": key},
                tenant="acme-diy",
            )
    fired: list[str] = []
    loop = loop_for(timer_pool, service_name, fired, fail_on="bad")
    await loop.fire_due()
    assert set(fired) == {"a", "c"}  # "a" ran twice in memory (group attempt rolled back), once in the DB:
    async with timer_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 2
        row = await conn.fetchrow("SELECT key, attempts, last_error, retry_at FROM timers")
    assert row["key"] == "bad" and row["attempts"] == 1 and "boom" in row["last_error"]
    assert row["retry_at"] > now
    assert await loop.fire_due() == 0  # backing off


async def test_a_handler_that_reschedules_its_own_key_keeps_the_new_timer(
    timer_pool: asyncpg.Pool, service_name: str
) -> None:
    """A recurring check (e.g. a downgrade check that re-arms itself) must survive its own firing."""
    now = datetime.now(UTC)
    fired: list[datetime] = []

    async def on_check(ctx: TimerContext, timers: list[Timer]) -> None:
        for t in timers:
            fired.append(t.due_at)
            await ctx.schedule("check", t.key, t.due_at + timedelta(days=30), {"customer": "c1"}, t.tenant)

    loop = TimerLoop(
        service=service_name, pool=timer_pool, handlers={"check": on_check},
        tracer=TracerProvider().get_tracer("t"), metrics=KitMetrics(service_name), clock="wall",
        poll_interval_s=0.05,
    )
    async with timer_pool.acquire() as conn:
        await schedule_timer(conn, kind="check", key="c1", due_at=now - timedelta(seconds=1),
                             payload={"customer": "c1"}, tenant="acme-diy")
    assert await loop.fire_due() == 1
    assert await loop.fire_due() == 0  # the re-armed timer is due in 30 days, not now
    async with timer_pool.acquire() as conn:
        rows = await conn.fetch("SELECT key, due_at FROM timers WHERE kind = 'check'")
    assert [(r["key"], r["due_at"]) for r in rows] == [("c1", fired[0] + timedelta(days=30))]
