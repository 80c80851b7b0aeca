"""Referrals benchmark: events/s through the real referrals service next to the kit's limit pipeline.

    uv run python -m bench.referrals_bench [--events N] [--batch B]

Both run in one process on the same broker and database (``LOYALTY_KAFKA_BOOTSTRAP`` / ``LOYALTY_PG_DSN``,
e.g. from ``.stack/dev.env``; without them an embedded stack is started):

1. limit: ``bench.kit_bench.run_limit_pipeline`` (raw getmany → one COPY → produce one record per event);
2. referrals: the real ServiceApp: decode + inbox → load the batch's slice of state (codes, invitations,
   customers by contact hash, claims, referrals, referral chains, velocity window) → pure domain →
   multi-row upserts → ReferralCodeIssued / ReferralConverted / ReferralRejected / grants in the outbox →
   relay publish; hold timers fire on the event-time clock as the stream's time passes.

The input is a realistic mix built from "friend groups": a referrer registers, buys, and invites two
friends; one registers through the invitation, the other with the referrer's code; both make a first
purchase; one friend in five refunds the first order inside the return window; one group in ten is a fraud
ring (a friend pays with the referrer's card). About 35 % registrations, 25 % invitations, 35 % purchases, 5 %
refunds, spread over 90 days of event time so 30-day holds expire and rewards are granted mid-stream.
The clock runs from the first consumed batch until every input is applied and the outbox is empty.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from loyalty_contracts.base import Event, Money
from loyalty_contracts.catalogue import topics_produced_by
from loyalty_contracts.envelope import Envelope, encode
from loyalty_contracts.events.retail import (
    Consents,
    ContactHashes,
    Contacts,
    CustomerRegistered,
    FriendInvited,
    PurchaseLine,
    PurchaseMade,
    PurchaseRefunded,
)
from loyalty_kit.batch import BatchOutcome, BatchProcessor, PreparedBatch
from loyalty_kit.runtime import tune_gc
from loyalty_kit.settings import ServiceSettings
from loyalty_kit.testing import fresh_database, publish_raw
from loyalty_kit.topics import delete_topics_with_prefix, ensure_topics
from loyalty_referrals.app import build
from loyalty_referrals.domain import derive_code

from bench.kit_bench import PipelineResult, endpoints, run_limit_pipeline

TENANT = "acme-diy"
PROGRAMS_DIR = Path(__file__).resolve().parents[1] / "programs"
SECRET = "bench-referral-secret-0123456789"
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
SPAN = timedelta(days=90)


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _registered(customer: str, at: datetime, code: str | None = None) -> CustomerRegistered:
    return CustomerRegistered(
        customer_id=customer,
        occurred_at=at,
        name="Customer",
        locale="en",
        time_zone="Europe/Berlin",
        contacts=Contacts(email=f"{customer}@example.org"),
        consents=Consents(transactional=True, service=True, marketing=False, survey=True),
        referral_code=code,
        contact_hashes=ContactHashes(email=_hash(f"email:{customer}")),
        email_domain="example.org",
    )


def _purchase(customer: str, order: str, at: datetime, minor: int, card: str) -> PurchaseMade:
    price = Money(amount_minor=minor, currency="EUR")
    return PurchaseMade(
        customer_id=customer,
        occurred_at=at,
        order_id=order,
        store_id="web-1",
        sales_channel="web",
        lines=[PurchaseLine(line_id="1", sku="DRILL-18V", category="tools", quantity=1, unit_price=price)],
        total=price,
        payment_fingerprint_hash=_hash(card),
        shipping_address_hash=_hash(f"addr:{card}"),
    )


def referral_mix(n: int, run: str) -> list[Event]:
    """At least ``n`` events of friend groups, in event-time order."""
    events: list[Event] = []
    groups = max(1, n // 8)
    step = SPAN / groups
    g = 0
    while len(events) < n:
        t = T0 + step * g
        referrer, fa, fb = f"{run}-r{g}", f"{run}-a{g}", f"{run}-b{g}"
        ring = g % 10 == 9  # a fraud ring pays with the referrer's card
        events += [
            _registered(referrer, t),
            FriendInvited(
                customer_id=referrer,
                occurred_at=t + timedelta(hours=1),
                invitation_id=f"{run}-i{g}a",
                invitee_contact_hash=_hash(f"email:{fa}"),
                channel="email",
            ),
            FriendInvited(
                customer_id=referrer,
                occurred_at=t + timedelta(hours=1),
                invitation_id=f"{run}-i{g}b",
                invitee_contact_hash=_hash(f"email:{fb}"),
                channel="sms",
            ),
            _registered(fa, t + timedelta(days=1)),
            _registered(fb, t + timedelta(days=1, hours=2), code=derive_code(SECRET.encode(), TENANT, referrer)),
            _purchase(
                fa,
                f"{run}-o{g}a",
                t + timedelta(days=2),
                4500 + g % 7 * 500,
                f"card:{referrer}" if ring else f"card:{fa}",
            ),
            _purchase(fb, f"{run}-o{g}b", t + timedelta(days=2, hours=3), 3500 + g % 5 * 900, f"card:{fb}"),
            _purchase(referrer, f"{run}-o{g}r", t + timedelta(hours=12), 2500, f"card:{referrer}"),
        ]
        if g % 5 == 0:
            events.append(
                PurchaseRefunded(
                    customer_id=fa,
                    occurred_at=t + timedelta(days=6),
                    order_id=f"{run}-o{g}a",
                    refund_id=f"{run}-rf{g}",
                    full=True,
                    amount=Money(amount_minor=4500 + g % 7 * 500, currency="EUR"),
                )
            )
        g += 1
    events = events[:n]
    events.sort(key=lambda e: e.occurred_at)
    return events


async def run_referrals_pipeline(
    bootstrap: str, admin_dsn: str, n: int, *, batch: int
) -> tuple[PipelineResult, dict[str, Any]]:
    run = uuid.uuid4().hex[:8]
    prefix = f"rb-{run}."
    events = referral_mix(n, run)
    mix = Counter(type(e).__name__ for e in events)
    records = [encode(Envelope.new(e, tenant=TENANT, source="/bench/retailer")) for e in events]
    await ensure_topics(bootstrap, sorted({prefix + r.topic for r in records}), prefix=prefix)
    await ensure_topics(bootstrap, [prefix + t for t in topics_produced_by("referrals")], prefix=prefix)
    print(f"publishing {len(records)} referral input events ({dict(mix)}) ...", file=sys.stderr)
    await publish_raw(bootstrap, [(prefix + r.topic, r.key, r.value, r.headers) for r in records])

    settings = ServiceSettings(
        service=f"rb_{run}",
        kafka_bootstrap=bootstrap,
        pg_dsn=admin_dsn,
        pg_admin_dsn=admin_dsn,
        consumer_group=f"bench-referrals-{run}",
        topic_prefix=prefix,
        batch_max_records=batch,
        batch_timeout_ms=50,
        outbox_poll_interval_s=0.2,
        timer_poll_interval_s=0.2,
        timer_clock="event",
        programs_dir=PROGRAMS_DIR,
    )
    app = build(settings, environ={"ACME_DIY_REFERRAL_SECRET": SECRET})
    started: list[float] = []
    cpu_started: list[float] = []
    consumed = [0]
    original = BatchProcessor.finish

    async def timed(self: BatchProcessor, batch: PreparedBatch) -> BatchOutcome:
        if not started:
            started.append(time.perf_counter())
            cpu_started.append(time.process_time())
        outcome = await original(self, batch)
        consumed[0] += len(batch.records)
        return outcome

    # Patched before start so the very first batch is counted (the consumer starts inside app.start()).
    # finish() is the kit's DB stage: it returns once the batch is committed (or dead-lettered).
    BatchProcessor.finish = timed  # type: ignore[method-assign]
    try:
        await app.start()
        print("referrals service started", file=sys.stderr)
        assert app.pool is not None
        last_report = time.monotonic()
        while True:
            if consumed[0] >= len(records) and await app.pool.fetchval("SELECT count(*) FROM outbox") == 0:
                break
            if time.monotonic() - last_report > 10:
                last_report = time.monotonic()
                print(f"  ... {consumed[0]} of {len(records)} consumed", file=sys.stderr)
            await asyncio.sleep(0.02)
        ended = time.perf_counter()
        cpu_seconds = time.process_time() - cpu_started[0]
        stats = {
            # This process's CPU (service + bench's polling) per input event: steadier than events/s on a
            # shared machine, where the wall clock also waits on Postgres, Kafka and other jobs.
            "process_cpu_us_per_event": round(cpu_seconds / len(records) * 1e6),
            "input_mix": dict(mix),
            "referrals_by_status": {
                r["status"]: r["n"]
                for r in await app.pool.fetch("SELECT status, count(*) AS n FROM referrals GROUP BY status")
            },
            "rejections_by_reason": {
                r["reason"]: r["n"]
                for r in await app.pool.fetch("SELECT reason, count(*) AS n FROM rejections GROUP BY reason")
            },
            "events_published": app.relay.published_total if app.relay else None,
            "service": app.name,
        }
        return PipelineResult("referrals", len(records), ended - started[0], batch), stats
    finally:
        BatchProcessor.finish = original  # type: ignore[method-assign]
        await app.stop()
        await delete_topics_with_prefix(bootstrap, prefix)


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.referrals_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="input events for both pipelines")
    parser.add_argument("--batch", type=int, default=1000, help="max records per consumed batch")
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    args = parser.parse_args(argv)
    tune_gc()  # as ServiceApp.run() does in a service process; applies to both pipelines alike
    async with endpoints() as (bootstrap, admin_dsn):
        async with fresh_database(admin_dsn, prefix="bench_") as dsn:
            limit = await run_limit_pipeline(bootstrap, dsn, args.events, batch=args.batch)
            referrals, stats = await run_referrals_pipeline(bootstrap, dsn, args.events, batch=args.batch)
        conn = await asyncpg.connect(admin_dsn)
        try:  # roles are cluster-wide; the database (and the role's schema) is gone now
            await conn.execute(f'DROP ROLE IF EXISTS "{stats.pop("service")}"')
        finally:
            await conn.close()
    print(f"{'pipeline':<10} {'events':>8} {'batch':>6} {'seconds':>8} {'events/s':>10}")
    for r in (limit, referrals):
        print(f"{r.name:<10} {r.events:>8} {r.batch:>6} {r.seconds:>8.2f} {r.per_second:>10.0f}")
    ratio = referrals.per_second / limit.per_second
    print(f"referrals / limit = {ratio:.0%}")
    print(f"referrals process CPU per event = {stats['process_cpu_us_per_event']} us")
    print(f"work done: {json.dumps(stats)}")
    result = {
        "events": args.events,
        "batch": args.batch,
        "limit_per_s": round(limit.per_second),
        "referrals_per_s": round(referrals.per_second),
        "referrals_vs_limit": round(ratio, 3),
        **stats,
    }
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    asyncio.run(main())
