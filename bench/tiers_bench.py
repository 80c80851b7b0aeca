"""Tiers benchmark: PurchaseMade events/s through the tiers service next to the kit's limit pipeline.

    uv run python -m bench.tiers_bench [--events N] [--customers 10000,1000000] [--batch B] [--history 1,100]
                                       [--repeat R]

One process, one broker, one database server (``LOYALTY_KAFKA_BOOTSTRAP`` / ``LOYALTY_PG_DSN``, e.g. from
``.stack/dev.env``; without them an embedded stack is started):

1. limit: ``bench.kit_bench.run_limit_pipeline`` (raw getmany → one COPY → produce one record per event);
2. tiers, once per customer count: the real tiers ServiceApp with the acme-diy program: decode + inbox →
   facts → ledger (derived per customer) → tier evaluation → statuses, history, check timers → TierChanged /
   TierProgressMilestone in the outbox → relay publish.

Before each tiers run (not timed) a fresh database is seeded with COPY: every customer already has one
earlier purchase (70 % at 300 points, 20 % at 450, 10 % at 920), so the new purchase (~114 points) is a
no-op for most, crosses the 50 % milestone for some and promotes 10 % to "maker" (TierChanged + a check
timer). ``--history H`` (H > 1) seeds every customer with H earlier purchases of 10.00 EUR over the 300 days
before instead (a frequent shopper; their rewarded order ids spill from the status document to the rewarded
table above ``store.REWARDED_INLINE``). Input events are spread over all customers; durable timers follow
event time (the input replays March 2026). The clock runs from the first consumed batch until every
event is applied and the outbox is empty. RSS is sampled from /proc during the run (the whole bench process);
"CPU us/event" is this process's CPU time over the run per event (service + bench loop), a steadier figure
than events/s on a shared machine; the line under the table adds the kit's relay child (which publishes the
outbox when the relay runs as a process) and the broker's and Postgres' CPU over the same span.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
from loyalty_contracts.catalogue import topic_for
from loyalty_contracts.envelope import Envelope, encode
from loyalty_contracts.samples import T0, sample, with_customer
from loyalty_kit import ServiceSettings, migrations
from loyalty_kit.batch import BatchProcessor
from loyalty_kit.db import create_pool
from loyalty_kit.outbox import make_producer
from loyalty_kit.programs import load_program_files
from loyalty_kit.runtime import tune_gc
from loyalty_kit.testing import fresh_database, publish_raw
from loyalty_kit.topics import ensure_topics
from loyalty_tiers import domain, store
from loyalty_tiers.app import MIGRATIONS_DIR, build_app
from loyalty_tiers.program import TiersProgram

from bench.kit_bench import PURCHASE, CpuMeter, CpuUse, PipelineResult, endpoints, run_limit_pipeline

TENANT = "acme-diy"
PROGRAMS = Path(__file__).resolve().parents[1] / "programs"
SEED_TIME = T0 - timedelta(days=10)
# (share of customers, points of their earlier purchase)
SEED_MIX = ((7, 300), (2, 450), (1, 920))


@dataclass(frozen=True)
class TiersResult:
    customers: int
    events: int
    seconds: float
    emitted: int
    peak_rss_mb: float
    seed_seconds: float
    cpu_seconds: float  # CPU time of this process (service + bench loop) during the timed run
    cpu: CpuUse | None = None  # the same, plus the kit's relay child, the broker and Postgres
    history: int = 1  # earlier purchases per seeded customer

    @property
    def label(self) -> str:
        return f"tiers {self.customers}" + (f" h{self.history}" if self.history > 1 else "")

    @property
    def cpu_us_per_event(self) -> float:
        return self.cpu_seconds / self.events * 1e6

    @property
    def per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")


def _median(results: list[Any]) -> Any:
    """The run with the median events/s (the lower middle one for an even count)."""
    return sorted(results, key=lambda r: r.per_second)[(len(results) - 1) // 2]


def customer_id(i: int) -> str:
    return f"cust-{i:07d}"


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def prepare_input(bootstrap: str, topic: str, n: int, customers: int) -> None:
    """n PurchaseMade records spread over all customers (a stride walks the whole id range)."""
    await ensure_topics(bootstrap, [topic])
    base = sample(PURCHASE)
    stride = 7919  # prime: i * stride % customers visits every customer before repeating
    producer = make_producer(bootstrap, linger_ms=20)
    await producer.start()
    try:
        chunk: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
        for i in range(n):
            data = with_customer(base, customer_id(i * stride % customers), T0 + timedelta(seconds=i))
            data = data.model_copy(update={"order_id": f"bench-order-{i}"})
            rec = encode(Envelope.new(data, tenant=TENANT, source="/bench/retailer"))
            chunk.append((topic, rec.key, rec.value, rec.headers))
            if len(chunk) == 10_000:
                await publish_raw(bootstrap, chunk, producer=producer)
                chunk = []
        if chunk:
            await publish_raw(bootstrap, chunk, producer=producer)
    finally:
        await producer.stop()


async def seed(pool: asyncpg.Pool, program: TiersProgram, customers: int, zone: Any, history: int = 1) -> None:
    """COPY `customers` customers with one earlier purchase each (ledger entry with its fact, status row + document).

    ``history`` > 1: every customer instead has ``history`` earlier purchases of 10.00 EUR spread over the 300
    days before (a frequent shopper: ledger rows with their facts, the status document, and the rewarded
    table's keys when there are more than the document keeps)."""
    templates = []
    if history > 1:
        step = timedelta(days=300) / history
        line = domain.PurchaseLine("1", "tools", 1, 1000)
        shared = [domain.Purchase(f"seed-{k}", SEED_TIME - step * (history - 1 - k), f"seed-order-{k}", "EUR",
                                  (line,)) for k in range(history)]
        outcome = domain.process(program, "x", shared, None, SEED_TIME, zone)
        derivation = outcome.derivation
        assert derivation is not None
        spilled = store.rewarded_size(derivation) > store.REWARDED_INLINE
        bodies = [json.dumps(domain.fact_to_json(f), separators=(",", ":")) for f in shared]
    else:
        for share, points in SEED_MIX:
            fact = domain.Purchase("seed", SEED_TIME, "seed-order", "EUR",
                                   (domain.PurchaseLine("1", "tools", 1, points * 100),))
            templates += [(fact, domain.process(program, "x", [fact], None, SEED_TIME, zone))] * share
    chunk = max(100, 20_000 // history)  # small chunks keep the bench process RSS (which is measured) low
    async with pool.acquire() as conn:
        for start in range(0, customers, chunk):
            ledger, rows, rewarded = [], [], []
            for i in range(start, min(customers, start + chunk)):
                cid = customer_id(i)
                if history > 1:
                    for e, body in zip(outcome.entries, bodies, strict=True):
                        ledger.append((TENANT, cid, program.version, e.entry_id, 1, e.activity, e.points,
                                       e.counts_from, e.expires_at, e.rule, e.ref, body))
                    r = store.CustomerRow.of(cid, program, outcome.state, outcome.snapshot, outcome.derivation,
                                             spilled)
                    if spilled:
                        assert derivation is not None
                        rewarded += [(TENANT, cid, *k) for k in store.rewarded_rows(derivation)]
                else:
                    fact, one = seed_customer(i, *templates[i % len(templates)])
                    e = one.entries[0]
                    ledger.append((TENANT, cid, program.version, fact.event_id, 1, e.activity, e.points,
                                   e.counts_from, e.expires_at, e.rule, fact.order_id,
                                   json.dumps(domain.fact_to_json(fact), separators=(",", ":"))))
                    r = store.CustomerRow.of(cid, program, one.state, one.snapshot, one.derivation)
                rows.append((TENANT, cid, r.program_version, r.tier, r.since, r.reason, r.points, r.as_of,
                             None, None, None, list(r.milestones), None, None, r.doc_json()))
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "ledger", schema_name="tiers", records=ledger,
                    columns=["tenant", "customer_id", "program_version", "entry_id", "revision", "activity",
                             "points", "counts_from", "expires_at", "rule", "ref", "fact"])
                await conn.copy_records_to_table(
                    "customers", schema_name="tiers", records=rows,
                    columns=["tenant", "customer_id", "program_version", "tier", "since", "reason", "points",
                             "as_of", "pending_to", "pending_effective_at", "pending_notice_at", "milestones",
                             "notice_for", "next_check_at", "doc"])
                if rewarded:
                    await conn.copy_records_to_table(
                        "rewarded", schema_name="tiers", records=rewarded,
                        columns=["tenant", "customer_id", "kind", "key", "event_id"])
        # A steady-state table, not a freshly loaded one: set hint bits and the visibility map now, so the
        # timed run does not pay the one-off cost of first touching a million just-copied rows.
        await conn.execute("VACUUM (ANALYZE) tiers.ledger")
        await conn.execute("VACUUM (ANALYZE) tiers.customers")
        await conn.execute("VACUUM (ANALYZE) tiers.rewarded")
        # Flush the seed's WAL now rather than in a checkpoint during the timed run (needs a superuser DSN).
        await conn.execute("CHECKPOINT")


def seed_customer(i: int, fact: domain.Purchase, outcome: domain.Outcome) -> tuple[domain.Purchase, domain.Outcome]:
    """Customer i's earlier purchase and its outcome, from a template (own event and order ids)."""
    own = domain.Purchase(f"seed-{i}", fact.occurred_at, f"seed-order-{i}", fact.currency, fact.lines)
    assert outcome.derivation is not None
    derivation = replace(outcome.derivation, orders={own.order_id: own.event_id})
    entries = [replace(outcome.entries[0], entry_id=own.event_id, ref=own.order_id)]
    return own, replace(outcome, entries=entries, derivation=derivation)


async def run_tiers(
    bootstrap: str, admin_dsn: str, n: int, customers: int, batch: int, history: int = 1
) -> TiersResult:
    run = uuid.uuid4().hex[:8]
    prefix = f"bench-{run}."
    files = load_program_files(PROGRAMS, "tiers", TiersProgram)
    program = files[TENANT].section
    zone = program.zone(files[TENANT].header.timezone)
    print(f"[{customers} customers] preparing {n} input events ...", file=sys.stderr)
    await prepare_input(bootstrap, prefix + topic_for(PURCHASE), n, customers)
    async with fresh_database(admin_dsn, prefix="bench_tiers_") as dsn:
        pool = await create_pool(dsn, "tiers", min_size=1, max_size=2)
        try:
            await migrations.apply(pool, "tiers", MIGRATIONS_DIR)
            print(f"[{customers} customers] seeding with COPY ...", file=sys.stderr)
            seeded = time.perf_counter()
            await seed(pool, program, customers, zone, history)
            seed_seconds = time.perf_counter() - seeded
            print(f"[{customers} customers] seeded in {seed_seconds:.1f}s", file=sys.stderr)
        finally:
            await pool.close()
        settings = ServiceSettings(
            service="tiers", kafka_bootstrap=bootstrap, pg_dsn=dsn, programs_dir=PROGRAMS,
            consumer_group=f"bench-tiers-{run}", topic_prefix=prefix, batch_max_records=batch,
            batch_timeout_ms=50, outbox_poll_interval_s=0.5,
            # The input replays March 2026 (the samples' time): durable timers (a downgrade check when points
            # expire) follow that event time, as the main job's do, not this machine's clock.
            timer_clock="event",
        )
        app, _ = build_app(settings)
        started: list[float] = []
        cpu_started: list[float] = []
        meters: list[CpuMeter] = []
        applied = [0]
        peak = [rss_mb()]
        original_prepare, original_finish = BatchProcessor.prepare, BatchProcessor.finish

        # Patched on the class before start: the consumer may take its first batch inside app.start().
        # The kit decodes batch N+1 (prepare) while batch N is in its transaction (finish).
        def timed_prepare(self: BatchProcessor, records: Any) -> Any:
            if not started:
                started.append(time.perf_counter())
                cpu_started.append(time.process_time())
                meters.append(CpuMeter())
            return original_prepare(self, records)

        async def counted_finish(self: BatchProcessor, batch: Any) -> Any:
            outcome = await original_finish(self, batch)
            applied[0] += outcome.applied + outcome.duplicates + outcome.dead_lettered + outcome.ignored
            return outcome

        BatchProcessor.prepare = timed_prepare  # type: ignore[method-assign]
        BatchProcessor.finish = counted_finish  # type: ignore[method-assign]
        try:
            await app.start()
            assert app.pool is not None and app.relay is not None
            async with app.pool.acquire() as conn:
                while True:
                    peak[0] = max(peak[0], rss_mb())
                    child = getattr(app.relay, "_proc", None)  # the kit's relay child process, if any
                    if meters and meters[0].child_pid is None and child is not None and app.relay.is_leader:
                        meters[0].watch_child(child.pid)
                    if applied[0] >= n and await conn.fetchval("SELECT count(*) FROM outbox") == 0:
                        break
                    await asyncio.sleep(0.02)
                ended = time.perf_counter()
                cpu_ended = time.process_time()
                cpu = meters[0].stop() if meters else None
                # The relay child reports its published count after deleting the rows: let the last report
                # arrive (not timed) so "emitted" is the count, not a snapshot of it.
                emitted = -1
                for _ in range(50):
                    if app.relay.published_total == emitted:
                        break
                    emitted = app.relay.published_total
                    await asyncio.sleep(0.1)
        finally:
            BatchProcessor.prepare = original_prepare  # type: ignore[method-assign]
            BatchProcessor.finish = original_finish  # type: ignore[method-assign]
            await app.stop()
    return TiersResult(customers, n, ended - started[0], emitted, peak[0], seed_seconds, cpu_ended - cpu_started[0],
                       cpu, history)


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.tiers_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="PurchaseMade events per run")
    parser.add_argument("--customers", default="10000,1000000", help="comma-separated customer counts")
    parser.add_argument("--batch", type=int, default=1000, help="max records per consumed batch")
    parser.add_argument("--history", default="1",
                        help="comma-separated earlier purchases per customer, run for each customer count "
                             "(e.g. 1,100: also a frequent shopper's history; the status document is per customer)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the limit and every tiers run this many times, alternating; report medians")
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    args = parser.parse_args(argv)
    tune_gc()  # as ServiceApp.run() does in a service process
    counts = [int(c) for c in args.customers.split(",")]
    histories = [int(h) for h in args.history.split(",")]
    n = args.events
    limits: list[PipelineResult] = []
    runs: dict[tuple[int, int], list[TiersResult]] = {}
    async with endpoints() as (bootstrap, admin_dsn):
        for _ in range(args.repeat):  # each repeat: a fresh limit run, then fresh tiers runs (own input, own DB)
            async with fresh_database(admin_dsn, prefix="bench_limit_") as dsn:
                limits.append(await run_limit_pipeline(bootstrap, dsn, n, batch=args.batch))
            for c in counts:
                for h in histories:
                    runs.setdefault((c, h), []).append(await run_tiers(bootstrap, admin_dsn, n, c, args.batch, h))
    limit = _median(limits)
    results = [_median(rs) for rs in runs.values()]
    if args.repeat > 1:
        print(f"runs (events/s): limit {', '.join(f'{x.per_second:.0f}' for x in limits)}")
        for rs in runs.values():
            pairs = ", ".join(f"{r.per_second / x.per_second:.0%}" for r, x in zip(rs, limits, strict=True))
            print(f"  {rs[0].label}: {', '.join(f'{r.per_second:.0f}' for r in rs)} (vs that repeat's limit: {pairs})")
        print("(medians below)")
    print(f"{'pipeline':<16} {'events':>8} {'batch':>6} {'seconds':>8} {'events/s':>10} {'vs limit':>9} "
          f"{'emitted':>8} {'peak RSS MB':>12} {'seed s':>7} {'CPU us/event':>13}")
    print(f"{'limit':<16} {limit.events:>8} {limit.batch:>6} {limit.seconds:>8.2f} {limit.per_second:>10.0f}")
    for r in results:
        print(f"{r.label:<16} {r.events:>8} {args.batch:>6} {r.seconds:>8.2f} "
              f"{r.per_second:>10.0f} {r.per_second / limit.per_second:>9.0%} {r.emitted:>8} "
              f"{r.peak_rss_mb:>12.0f} {r.seed_seconds:>7.1f} {r.cpu_us_per_event:>13.0f}")
    for r in results:
        if r.cpu is not None:
            print(f"  {r.label}: {r.cpu.per_event_us(r.events)}")
    plain = [r for r in results if r.history == 1]
    if len(plain) >= 2:
        first, last = plain[0], plain[-1]
        print(f"tiers at {last.customers} customers vs {first.customers}: "
              f"{last.per_second / first.per_second:.0%} (target within 20 %)")
    for r in results:
        base = next((b for b in plain if b.customers == r.customers), None)
        if r.history > 1 and base is not None:
            print(f"tiers at {r.customers} customers, {r.history} earlier purchases each vs 1: "
                  f"{r.per_second / base.per_second:.0%}")
    print("targets: tiers >= 60 % of limit; RSS <= 300 MB")
    result = {
        "events": n, "batch": args.batch, "limit_per_s": round(limit.per_second),
        **{f"{r.label.replace(' ', '_')}_per_s": round(r.per_second) for r in results},
        **{f"{r.label.replace(' ', '_')}_vs_limit": round(r.per_second / limit.per_second, 3) for r in results},
        **{f"{r.label.replace(' ', '_')}_peak_rss_mb": round(r.peak_rss_mb) for r in results},
        **{f"{r.label.replace(' ', '_')}_cpu_us_per_event": round(r.cpu_us_per_event) for r in results},
    }
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    asyncio.run(main())
