"""Surveys benchmark: answers/s (answer → feedback → rules → outbox → Kafka) next to the kit's limit pipeline.

    uv run python -m bench.surveys_bench [--answers N] [--batch B]

Both run in one process on the same broker and database (``LOYALTY_KAFKA_BOOTSTRAP`` / ``LOYALTY_PG_DSN``,
e.g. from ``.stack/dev.env``; without them an embedded stack is started) and read the same pre-filled topic
of SurveyAnswered records:

1. limit: ``bench.kit_bench.run_limit_pipeline`` (raw getmany → one COPY → produce one record per event);
2. surveys: the real surveys ServiceApp: decode + inbox → single-use token claim → request lookup → themes,
   sentiment, follow-up and case rules (business-hours deadlines) → feedback, cases, loyalty-account ledger →
   FeedbackReceived / DetractorCaseOpened / CustomerAtRisk in the outbox → relay publish.

The answers are a realistic CSAT mix (45 % 5, 25 % 4 (half silent → follow-up timer), 10 % 3, 20 % 1–2 with
comments → detractor case + deadline timer). Survey requests are seeded in the database first (not timed).
The clock runs from the first consumed batch until every answer is feedback and the outbox is empty.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from loyalty_contracts.catalogue import topic_for, topics_produced_by
from loyalty_contracts.envelope import Envelope, encode
from loyalty_contracts.events.retail import SurveyAnswered
from loyalty_kit import migrations, roles
from loyalty_kit.batch import BatchProcessor
from loyalty_kit.db import create_pool
from loyalty_kit.settings import ServiceSettings
from loyalty_kit.testing import fresh_database, publish_raw
from loyalty_kit.topics import delete_topics_with_prefix, ensure_topics
from loyalty_surveys import store
from loyalty_surveys.app import MIGRATIONS_DIR, build_app

from bench.kit_bench import PipelineResult, endpoints, run_limit_pipeline

TENANT = "acme-diy"
PROGRAMS_DIR = Path(__file__).resolve().parents[1] / "programs"
SECRET_ENV = {"LOYALTY_SURVEYS_TOKEN_SECRET_ACME_DIY": "bench-secret"}
ANSWERED = SurveyAnswered.ce_type()
T0 = datetime(2026, 10, 5, 9, 0, tzinfo=UTC)

COMMENTS = [
    "The courier was two days late",
    "Консультант был груб",
    "Дрель сломалась через неделю, качество ужасное",
    "Way overpriced for what it is",
]


def answer_mix(i: int) -> tuple[int, str | None]:
    """Score and comment of answer i: a fixed, realistic CSAT distribution."""
    slot = i % 20
    if slot < 9:
        return 5, None
    if slot < 12:
        return 4, None  # silent 4 → follow-up
    if slot < 14:
        return 4, "Good, but the box was dented"
    if slot < 16:
        return 3, None
    return (1 if slot % 2 else 2), COMMENTS[i % len(COMMENTS)]


def request_rows(n: int) -> list[store.RequestRow]:
    return [
        store.RequestRow(
            tenant=TENANT,
            request_id=f"req-{i}",
            customer_id=f"cust-{i % 5000}",
            survey_id="delivery-csat",
            kind="csat",
            trigger="delivery",
            trigger_event_id=f"ev-{i}",
            due_at=T0,
            status="requested",
            parent_feedback_id=None,
            segment=store.Segment("store-1", "web", "tools", "novice"),
        )
        for i in range(n)
    ]


def answer_records(n: int, prefix: str) -> list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]]:
    records: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
    for i in range(n):
        score, comment = answer_mix(i)
        data = SurveyAnswered(
            customer_id=f"cust-{i % 5000}",
            occurred_at=T0 + timedelta(seconds=i),
            survey_id="delivery-csat",
            request_id=f"req-{i}",
            score=score,
            comment=comment,
            answer_channel="sms",
        )
        r = encode(Envelope.new(data, tenant=TENANT, source="/bench/retailer"))
        records.append((prefix + r.topic, r.key, r.value, r.headers))
    return records


async def run_surveys_pipeline(bootstrap: str, dsn: str, n: int, *, batch: int, prefix: str) -> PipelineResult:
    run = uuid.uuid4().hex[:8]
    settings = ServiceSettings(
        service=f"sb_{run}",
        kafka_bootstrap=bootstrap,
        pg_dsn=dsn,
        pg_admin_dsn=dsn,
        consumer_group=f"bench-surveys-{run}",
        topic_prefix=prefix,
        batch_max_records=batch,
        batch_timeout_ms=50,
        outbox_poll_interval_s=0.5,
        timer_clock="event",
        programs_dir=PROGRAMS_DIR,
    )
    await ensure_topics(bootstrap, [prefix + t for t in topics_produced_by("surveys")], prefix=prefix)
    app, _ = build_app(settings, environ=SECRET_ENV)
    # Seed the survey requests before the consumer starts, so no answer arrives before its request.
    pool = await create_pool(await roles.provision(dsn, settings.service), settings.service)
    try:
        await migrations.apply(pool, settings.service, MIGRATIONS_DIR)
        async with pool.acquire() as conn:
            rows = request_rows(n)
            for start in range(0, n, 5000):
                await store.insert_pending_requests(conn, rows[start : start + 5000])
            await conn.execute("ANALYZE survey_requests")
    finally:
        await pool.close()
    started: list[float] = []
    original = BatchProcessor.prepare

    def timed(self: BatchProcessor, records: Any) -> Any:
        if not started:
            started.append(time.perf_counter())
        return original(self, records)

    BatchProcessor.prepare = timed  # type: ignore[method-assign]  # the clock starts at the first batch
    await app.start()
    assert app.pool is not None
    waited_from = time.perf_counter()
    try:
        while True:
            async with app.pool.acquire() as conn:
                done = await conn.fetchval("SELECT count(*) FROM feedback")
                backlog = await conn.fetchval("SELECT count(*) FROM outbox")
            if done >= n and backlog == 0:
                break
            if time.perf_counter() - waited_from > 600:
                raise TimeoutError(f"only {done} of {n} answers became feedback in 600 s (dead letters?)")
            await asyncio.sleep(0.02)
        ended = time.perf_counter()
        return PipelineResult("surveys", n, ended - started[0], batch)
    finally:
        BatchProcessor.prepare = original  # type: ignore[method-assign]
        await app.stop()


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.surveys_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=20_000, help="answers for both pipelines")
    parser.add_argument("--batch", type=int, default=1000, help="max records per consumed batch")
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    args = parser.parse_args(argv)
    n = args.answers
    async with endpoints() as (bootstrap, admin_dsn), fresh_database(admin_dsn, prefix="bench_") as dsn:
        prefix = f"sbench-{uuid.uuid4().hex[:8]}."
        input_topic = prefix + topic_for(ANSWERED)
        print(f"preparing {n} SurveyAnswered records on {input_topic} ...", file=sys.stderr)
        await ensure_topics(bootstrap, [input_topic], prefix=prefix)
        await publish_raw(bootstrap, answer_records(n, prefix))
        try:
            limit = await run_limit_pipeline(bootstrap, dsn, n, batch=args.batch, input_topic=input_topic)
            surveys = await run_surveys_pipeline(bootstrap, dsn, n, batch=args.batch, prefix=prefix)
        finally:
            await delete_topics_with_prefix(bootstrap, prefix)
    print(f"{'pipeline':<8} {'events':>8} {'batch':>6} {'seconds':>8} {'events/s':>10}")
    for r in (limit, surveys):
        print(f"{r.name:<8} {r.events:>8} {r.batch:>6} {r.seconds:>8.2f} {r.per_second:>10.0f}")
    ratio = surveys.per_second / limit.per_second
    print(f"surveys / limit = {ratio:.0%}")
    result = {
        "answers": n,
        "batch": args.batch,
        "limit_per_s": round(limit.per_second),
        "surveys_per_s": round(surveys.per_second),
        "surveys_vs_limit": round(ratio, 3),
    }
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    asyncio.run(main())
