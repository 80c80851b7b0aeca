"""Handlers against real Postgres (no broker): the single-use token under concurrency, the recontact period
when surveys fall due together, and a customer's balance under concurrent answers."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from loyalty_kit import migrations, roles
from loyalty_kit.db import create_pool
from loyalty_kit.effects import EffectContext
from loyalty_kit.testing import fresh_database
from loyalty_kit.timers import Timer
from loyalty_surveys import store
from loyalty_surveys.app import MIGRATIONS_DIR
from loyalty_surveys.handlers import (
    NPS_REFRESH,
    NPS_REFRESH_DELAY,
    SURVEY_DUE,
    IncomingAnswer,
    SurveysHandlers,
    tenant_configs,
)

from .helpers import example_program

pytestmark = pytest.mark.integration

TENANT = "acme-diy"
T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
HANDLERS = SurveysHandlers(
    tenant_configs({TENANT: example_program()}, {TENANT: "en"}, {"LOYALTY_SURVEYS_TOKEN_SECRET_ACME_DIY": "s"})
)


@pytest.fixture
async def pool(pg_admin_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    schema = f"ss_{uuid.uuid4().hex[:8]}"
    async with fresh_database(pg_admin_dsn, prefix="ss_") as dsn:
        service_pool = await create_pool(await roles.provision(dsn, schema), schema, max_size=4)
        try:
            await migrations.apply(service_pool, schema, MIGRATIONS_DIR)
            yield service_pool
        finally:
            await service_pool.close()
    conn = await asyncpg.connect(pg_admin_dsn)
    try:
        await conn.execute(f'DROP ROLE IF EXISTS "{schema}"')
    finally:
        await conn.close()


def request(request_id: str, customer: str, due_at: datetime = T0, status: str = "requested") -> store.RequestRow:
    return store.RequestRow(
        tenant=TENANT,
        request_id=request_id,
        customer_id=customer,
        survey_id="delivery-csat",
        kind="csat",
        trigger="delivery",
        trigger_event_id=f"ev-{request_id}",
        due_at=due_at,
        status=status,
        parent_feedback_id=None,
        segment=store.Segment("store-1", "web", "tools", None),
    )


def context(conn: asyncpg.Connection) -> EffectContext:
    return EffectContext(conn, service="surveys", source="/test", clock="event")


async def answer_once(pool: asyncpg.Pool, answer: IncomingAnswer) -> tuple[Any, list[str]]:
    async with pool.acquire() as conn, conn.transaction():
        ctx = context(conn)
        [result] = await HANDLERS.apply_answers(ctx, [answer])
        return result, [env.type for env in ctx.emitted]


async def test_one_request_answered_twice_at_once_becomes_feedback_once(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await store.insert_pending_requests(conn, [request("r1", "c1")])
    answers = [
        IncomingAnswer(TENANT, "r1", 2, "courier was late", T0 + timedelta(hours=1), channel, customer_id="c1")
        for channel in ("web", "sms", "telegram")
    ]
    results = await asyncio.gather(*(answer_once(pool, a) for a in answers))
    accepted = [(r, emitted) for r, emitted in results if r.accepted]
    assert len(accepted) == 1
    assert sorted(r.reason for r, _ in results if not r.accepted) == ["reused", "reused"]
    assert sorted(accepted[0][1]) == sorted(
        ["loyalty.FeedbackReceived.v1", "loyalty.DetractorCaseOpened.v1", "loyalty.CustomerAtRisk.v1"]
    )
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM feedback") == 1
        assert await conn.fetchval("SELECT count(*) FROM cases") == 1
        assert await conn.fetchval("SELECT status FROM survey_requests WHERE request_id = 'r1'") == "answered"
        # csat 2 = survey_answered +1, csat_dissatisfied −4 (booked once)
        assert await conn.fetchval("SELECT balance FROM customers WHERE customer_id = 'c1'") == -3
        timers = await conn.fetch("SELECT kind, key FROM timers ORDER BY kind")
        assert [t["kind"] for t in timers] == ["case-deadline"]


async def test_invalid_answers_do_not_use_up_the_token(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await store.insert_pending_requests(conn, [request("r1", "c1")])
    bad, _ = await answer_once(pool, IncomingAnswer(TENANT, "r1", 9, None, T0, "web", customer_id="c1"))
    assert not bad.accepted and "outside 1–5" in bad.reason
    stranger, _ = await answer_once(pool, IncomingAnswer(TENANT, "r1", 5, None, T0, "web", customer_id="c2"))
    assert stranger.reason == "unknown_request"
    good, emitted = await answer_once(pool, IncomingAnswer(TENANT, "r1", 5, None, T0, "web", customer_id="c1"))
    assert good.accepted and emitted == ["loyalty.FeedbackReceived.v1"]


async def test_concurrent_answers_of_one_customer_keep_the_balance_exact(pool: asyncpg.Pool) -> None:
    ids = [f"r{i}" for i in range(12)]
    async with pool.acquire() as conn:
        await store.insert_pending_requests(conn, [request(i, "c1") for i in ids])
    answers = [IncomingAnswer(TENANT, i, 5, None, T0, "web", customer_id="c1") for i in ids]
    results = await asyncio.gather(*(answer_once(pool, a) for a in answers))
    assert all(r.accepted for r, _ in results)
    async with pool.acquire() as conn:
        # each CSAT 5: survey_answered +1, csat_satisfied +2 — no lost update under concurrency
        assert await conn.fetchval("SELECT balance FROM customers WHERE customer_id = 'c1'") == 12 * 3
        assert await conn.fetchval("SELECT count(*) FROM account_entries") == 24


async def test_surveys_falling_due_together_respect_the_recontact_period(pool: asyncpg.Pool) -> None:
    # c1: three surveys due within 30 days (only the first goes out) and one 40 days later (goes out);
    # c2: one survey, but a survey went out 10 days before it.
    rows = [
        request("a", "c1", T0, "pending"),
        request("b", "c1", T0 + timedelta(days=5), "pending"),
        request("c", "c1", T0 + timedelta(days=29), "pending"),
        request("d", "c1", T0 + timedelta(days=40), "pending"),
        request("e", "c2", T0, "pending"),
    ]
    async with pool.acquire() as conn:
        await store.insert_pending_requests(conn, rows)
        await conn.execute(
            "INSERT INTO customers (tenant, customer_id, last_requested_at) VALUES ($1, 'c2', $2)",
            TENANT,
            T0 - timedelta(days=10),
        )
    timers = [
        Timer(
            id=i,
            tenant=TENANT,
            kind=SURVEY_DUE,
            key=f"{TENANT}/{r.request_id}",
            due_at=r.due_at,
            payload={"request_id": r.request_id},
            attempts=0,
        )
        for i, r in enumerate(rows)
    ]
    async with pool.acquire() as conn, conn.transaction():
        ctx = context(conn)
        await HANDLERS.on_survey_due(ctx, timers)
        sent = sorted(env.data.request_id for env in ctx.emitted)  # type: ignore[attr-defined]
    assert sent == ["a", "d"]
    async with pool.acquire() as conn:
        status = dict(await conn.fetch("SELECT request_id, status FROM survey_requests"))
        assert status == {
            "a": "requested",
            "b": "skipped_recontact",
            "c": "skipped_recontact",
            "d": "requested",
            "e": "skipped_recontact",
        }
        last = await conn.fetchval("SELECT last_requested_at FROM customers WHERE customer_id = 'c1'")
        assert last == T0 + timedelta(days=40)
        # firing again (a redelivered timer) sends nothing new
    async with pool.acquire() as conn, conn.transaction():
        ctx = context(conn)
        await HANDLERS.on_survey_due(ctx, timers)
        assert ctx.emitted == []


async def test_nps_answers_refresh_the_nps_gauge(pool: asyncpg.Pool) -> None:
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    gauge = Gauge("loyalty_surveys_nps", "NPS", ["tenant"], registry=registry)
    handlers = SurveysHandlers(HANDLERS.configs, nps_gauge=gauge)
    rows = [
        dataclasses.replace(request(f"n{i}", f"c{i}"), survey_id="first-purchase-nps", kind="nps") for i in range(5)
    ]
    async with pool.acquire() as conn:
        await store.insert_pending_requests(conn, rows)
    async with pool.acquire() as conn, conn.transaction():
        # 10, 9, 8, 3, 0 → 2 promoters, 1 passive, 2 detractors → NPS 0; one refresh timer for the tenant
        results = await handlers.apply_answers(
            context(conn),
            [
                IncomingAnswer(TENANT, f"n{i}", score, None, T0 + timedelta(minutes=i), "web", customer_id=f"c{i}")
                for i, score in enumerate([10, 9, 8, 3, 0])
            ],
        )
    assert all(r.accepted for r in results)
    async with pool.acquire() as conn:
        [timer] = await conn.fetch("SELECT tenant, kind, key, due_at FROM timers WHERE kind = $1", NPS_REFRESH)
    assert timer["due_at"] == T0 + timedelta(minutes=4) + NPS_REFRESH_DELAY
    fired = Timer(id=1, tenant=TENANT, kind=NPS_REFRESH, key=TENANT, due_at=timer["due_at"], payload={}, attempts=0)
    async with pool.acquire() as conn, conn.transaction():
        await handlers.on_nps_refresh(context(conn), [fired])
    assert registry.get_sample_value("loyalty_surveys_nps", {"tenant": TENANT}) == 0.0
    # a promoter more: 3 of 6 promoters, 2 detractors → 16.7
    async with pool.acquire() as conn:
        await store.insert_pending_requests(
            conn, [dataclasses.replace(request("n9", "c9"), survey_id="first-purchase-nps", kind="nps")]
        )
    async with pool.acquire() as conn, conn.transaction():
        await handlers.apply_answers(
            context(conn), [IncomingAnswer(TENANT, "n9", 10, None, T0, "web", customer_id="c9")]
        )
        await handlers.on_nps_refresh(context(conn), [fired])
    assert registry.get_sample_value("loyalty_surveys_nps", {"tenant": TENANT}) == pytest.approx(100 / 6)


async def test_a_survey_removed_from_the_program_is_cancelled_not_sent(pool: asyncpg.Pool) -> None:
    retired = dataclasses.replace(request("old", "c1", T0, "pending"), survey_id="retired-survey")
    async with pool.acquire() as conn:
        await store.insert_pending_requests(conn, [retired, request("new", "c1", T0 + timedelta(days=1), "pending")])
    timers = [
        Timer(
            id=i, tenant=TENANT, kind=SURVEY_DUE, key=f"{TENANT}/{r}", due_at=T0, payload={"request_id": r}, attempts=0
        )
        for i, r in enumerate(["old", "new"])
    ]
    async with pool.acquire() as conn, conn.transaction():
        ctx = context(conn)
        await HANDLERS.on_survey_due(ctx, timers)
        # the cancelled one does not use up the recontact period: the other one goes out
        assert [env.data.request_id for env in ctx.emitted] == ["new"]  # type: ignore[attr-defined]
    async with pool.acquire() as conn:
        assert dict(await conn.fetch("SELECT request_id, status FROM survey_requests")) == {
            "old": "cancelled",
            "new": "requested",
        }
