"""Durable timers: fire once (even with two loops competing), emit through the outbox, event-time clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from loyalty_contracts.envelope import Envelope
from loyalty_contracts.events.tiers import TierProgressMilestone
from loyalty_contracts.samples import T0, sample, with_customer
from loyalty_kit import migrations
from loyalty_kit.db import create_pool
from loyalty_kit.effects import clock_now, record_event_times, schedule_timer, settle_watermarks, tenant_watermark
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


def test_tenant_watermark_is_the_slowest_unread_partition_else_the_newest() -> None:
    a, b, c = ("retail", 0), ("retail", 1), ("referrals", 0)
    day = [T0 + timedelta(days=i) for i in range(10)]
    newest = {a: day[9], b: day[2], c: day[5]}
    assert tenant_watermark(newest, set()) == day[9]  # every partition read to its end
    assert tenant_watermark(newest, {b}) == day[2]  # b may still hold events after day 2
    assert tenant_watermark(newest, {a, c}) == day[5]
    # A partition behind that never showed the tenant (not read yet): its events could be any time: hold.
    assert tenant_watermark(newest, {b, ("retail", 7)}) is None
    assert tenant_watermark({}, {a}) is None
    assert tenant_watermark({}, set()) is None


def purchase_at(t: datetime, tenant: str) -> Envelope:
    data = with_customer(sample("loyalty.PurchaseMade.v1"), "c1", t)
    return Envelope.new(data, tenant=tenant, source="/test")


async def test_event_clock_fires_when_the_tenant_watermark_passes_due_at(
    timer_pool: asyncpg.Pool, service_name: str
) -> None:
    p0, p1 = ("retail", 0), ("retail", 1)
    day = [T0 + timedelta(days=i) for i in range(10)]
    async with timer_pool.acquire() as conn:
        await schedule_timer(conn, kind="nudge", key="k", due_at=day[4], payload={"customer": "c1"}, tenant="acme-diy")
    fired: list[str] = []
    loop = loop_for(timer_pool, service_name, fired, clock="event")
    assert await loop.fire_due() == 0  # no events yet: the tenant's clock is at the epoch

    async def settle(events: list[tuple[tuple[str, int], Envelope]], behind: dict[tuple[str, int], bool]) -> datetime:
        async with timer_pool.acquire() as conn:
            await record_event_times(conn, events)
            await settle_watermarks(conn, behind)
            return await clock_now(conn, "acme-diy", "event")

    assert await settle([(p0, purchase_at(day[1], "acme-diy")), (p1, purchase_at(day[5], "other-tenant"))],
                        {p0: False, p1: False}) == day[1]  # another tenant's time does not move this tenant's clock
    # Partition 1 reaches day 3 with records still unread: nothing earlier than day 3 can still come.
    assert await settle([(p1, purchase_at(day[3], "acme-diy"))], {p1: True}) == day[3]
    # Partition 0 runs ahead to day 6, but partition 1 may still hold days 3-6: the clock waits for it.
    assert await settle([(p0, purchase_at(day[6], "acme-diy"))], {p0: False}) == day[3]
    assert await loop.fire_due() == 0
    assert await settle([(p0, purchase_at(day[0], "acme-diy"))], {p0: False}) == day[3]  # a late event: no change
    assert await settle([], {p1: True}) == day[3]
    assert await loop.fire_due() == 0
    # Partition 1 read to its end: the newest time seen anywhere is the clock.
    assert await settle([], {p1: False}) == day[6]
    assert await loop.fire_due() == 1
    assert fired == ["k"]
    assert await loop.fire_due() == 0
    async with timer_pool.acquire() as conn:
        assert await clock_now(conn, "other-tenant", "event") == day[5]
        # The clock never goes back, even when a partition falls behind again at an earlier time.
        await settle_watermarks(conn, {p1: True})
        assert await clock_now(conn, "acme-diy", "event") == day[6]
        # A topic the service no longer consumes keeps a partition "behind" for ever: it holds the clock only
        # until the service says which topics it consumes.
        gone = ("retired-topic", 0)
        await record_event_times(conn, [(gone, purchase_at(day[7], "acme-diy")), (p0, purchase_at(day[9], "acme-diy"))])
        await settle_watermarks(conn, {gone: True, p0: False, p1: False})
        assert await clock_now(conn, "acme-diy", "event") == day[7]
        await settle_watermarks(conn, {p0: False}, consumed=["retail"])
        assert await clock_now(conn, "acme-diy", "event") == day[9]


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
