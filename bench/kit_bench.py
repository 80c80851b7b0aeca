"""Kit benchmark: events/s of the raw limit pipeline, the kit pipeline and a naive FastStream handler.

    uv run python -m bench.kit_bench [--events N] [--batch B] [--naive-events M]

All three run in one process against the same broker and database (``LOYALTY_KAFKA_BOOTSTRAP`` /
``LOYALTY_PG_DSN``, e.g. from ``.stack/dev.env``; without them an embedded stack is started):

1. limit: aiokafka ``getmany`` → one ``COPY`` of the batch → produce one record per event → commit offsets;
2. kit:   ServiceApp batch handler → decode + inbox dedup → one effect row per event (multi-row insert) →
          one emitted event per input (outbox) → relay publish (idempotent, acks=all);
3. naive: FastStream per-message handler, one transaction (inbox + effect) and one awaited publish per event.

Each pipeline reads the same pre-filled input topic with its own consumer group; the clock runs from the
first record consumed to the last output acknowledged (group joins and start-up are excluded for all).
``run_limit_pipeline(bootstrap, dsn, n)`` is reused by every service's benchmark for its ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

import asyncpg
from aiokafka import AIOKafkaConsumer
from loyalty_contracts.catalogue import topic_for
from loyalty_contracts.envelope import Envelope, decode, encode
from loyalty_contracts.events.tiers import TierProgressMilestone
from loyalty_contracts.samples import T0, sample, with_customer
from loyalty_kit import BatchContext, ServiceApp, ServiceSettings
from loyalty_kit.outbox import make_producer
from loyalty_kit.runtime import tune_gc
from loyalty_kit.testing import fresh_database, publish_raw
from loyalty_kit.topics import delete_topics_with_prefix, ensure_topics

PURCHASE = "loyalty.PurchaseMade.v1"
MILESTONE = "loyalty.TierProgressMilestone.v1"
TENANT = "acme-diy"


@dataclass(frozen=True)
class PipelineResult:
    name: str
    events: int
    seconds: float
    batch: int
    cpu: CpuUse | None = None

    @property
    def per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")


def purchase_records(n: int, customers: int = 1000) -> list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]]:
    """n encoded PurchaseMade records (sample body, distinct ids, ``customers`` distinct keys)."""
    base = sample(PURCHASE)
    out = []
    for i in range(n):
        data = with_customer(base, f"cust-{i % customers:05d}", T0 + timedelta(seconds=i))
        rec = encode(Envelope.new(data, tenant=TENANT, source="/bench/retailer"))
        out.append((rec.topic, rec.key, rec.value, rec.headers))
    return out


async def prepare_input(bootstrap: str, n: int, topic: str) -> None:
    await ensure_topics(bootstrap, [topic])
    records = [(topic, k, v, h) for _, k, v, h in purchase_records(n)]
    producer = make_producer(bootstrap, linger_ms=20)
    await producer.start()
    try:
        for start in range(0, len(records), 10_000):
            await publish_raw(bootstrap, records[start:start + 10_000], producer=producer)
    finally:
        await producer.stop()


# --- CPU per event --------------------------------------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_seconds_of(marker: bytes) -> float | None:
    """CPU seconds of every local process whose command line contains ``marker``, with the CPU of children
    they reaped (Postgres backends that exited during the run are counted through the postmaster)."""
    total, found = 0.0, False
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker not in f.read():
                    continue
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / _TICK
        found = True
    return total if found else None


def _cpu_seconds_of_pid(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


@dataclass(frozen=True)
class CpuUse:
    """CPU seconds used between a pipeline's first consumed record and its last acknowledged output: this
    process, a relay child, and — when they run on this machine — the Kafka broker and Postgres (whole
    processes: anything else using them at the time counts too)."""

    own: float
    relay_child: float
    broker: float | None
    postgres: float | None

    def per_event_us(self, events: int) -> str:
        def us(v: float | None) -> str:
            return "-" if v is None else f"{1e6 * v / events:.0f}"
        return (f"cpu us/event: python {us(self.own)} + relay child {us(self.relay_child)}, "
                f"broker {us(self.broker)}, postgres {us(self.postgres)}")


class CpuMeter:
    """Started at the first consumed record, stopped before shutdown (start-up excluded). A relay child is
    measured from when it reports leadership (its imports and connections done; it publishes nothing before)."""

    def __init__(self) -> None:
        self.child_pid: int | None = None
        self._child_start = 0.0
        self._start = self._read()

    def watch_child(self, pid: int) -> None:
        self.child_pid = pid
        self._child_start = _cpu_seconds_of_pid(pid)

    def _read(self) -> tuple[float, float | None, float | None]:
        t = os.times()
        return (t.user + t.system, _cpu_seconds_of(b"kafka.Kafka"), _cpu_seconds_of(b"postgres"))

    def stop(self) -> CpuUse:
        end = self._read()
        s = self._start
        child = _cpu_seconds_of_pid(self.child_pid) - self._child_start if self.child_pid else 0.0

        def diff(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else max(0.0, b - a)

        return CpuUse(end[0] - s[0], child, diff(s[1], end[1]), diff(s[2], end[2]))


# --- 1. the limit ----------------------------------------------------------------------------------------
async def run_limit_pipeline(
    bootstrap: str, dsn: str, n: int, *, batch: int = 500, input_topic: str | None = None
) -> PipelineResult:
    """Raw aiokafka getmany → one COPY per batch → one produced record per event → offset commit.

    Without ``input_topic`` it first fills a fresh topic with ``n`` PurchaseMade records (not timed).
    ``dsn`` may be any DSN allowed to create a table in its default schema.
    """
    run = uuid.uuid4().hex[:8]
    own_prefix = f"bench-{run}."
    if input_topic is None:
        input_topic = own_prefix + "input"
        await prepare_input(bootstrap, n, input_topic)
    output_topic = own_prefix + "limit-out"
    await ensure_topics(bootstrap, [output_topic])
    table = f"bench_limit_{run}"
    conn = await asyncpg.connect(dsn)
    await conn.execute(f"CREATE TABLE {table} (event_id text, customer_id bytea, body bytea)")
    consumer = AIOKafkaConsumer(
        input_topic, bootstrap_servers=bootstrap, group_id=f"bench-limit-{run}", enable_auto_commit=False,
        auto_offset_reset="earliest", max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    producer = make_producer(bootstrap)
    await producer.start()
    await consumer.start()
    done = 0
    started: float | None = None
    meter: CpuMeter | None = None
    try:
        while done < n:
            polled = await consumer.getmany(timeout_ms=200, max_records=batch)
            records = [r for recs in polled.values() for r in recs]
            if not records:
                continue
            if started is None:
                started = time.perf_counter()
                meter = CpuMeter()
            rows = [(_header(r.headers, "ce_id"), r.key, r.value) for r in records]
            async with conn.transaction():
                await conn.copy_records_to_table(table, records=rows, columns=["event_id", "customer_id", "body"])
            futures = [
                await producer.send(output_topic, key=r.key, value=r.value, headers=list(r.headers)) for r in records
            ]
            await asyncio.gather(*futures)
            await consumer.commit()
            done += len(records)
        assert started is not None and meter is not None
        return PipelineResult("limit", done, time.perf_counter() - started, batch, meter.stop())
    finally:
        await consumer.stop()
        await producer.stop()
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.close()
        await delete_topics_with_prefix(bootstrap, own_prefix)


def _header(headers: Any, name: str) -> str | None:
    for k, v in headers:
        if k == name:
            return v.decode()
    return None


# --- 2. the kit ------------------------------------------------------------------------------------------
EFFECTS_SQL = "CREATE TABLE effects (event_id text PRIMARY KEY, customer_id text NOT NULL, total_minor bigint);"


def bench_app(settings: ServiceSettings, migrations_dir: Any) -> ServiceApp:
    app = ServiceApp(settings.service, settings, migrations_dir)

    @app.batch_handler(PURCHASE)
    async def on_purchases(ctx: BatchContext) -> None:
        await ctx.conn.execute(
            "INSERT INTO effects SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])",
            [e.id for e in ctx.events],
            [e.subject for e in ctx.events],
            [e.data.total.amount_minor for e in ctx.events],  # type: ignore[attr-defined]
        )
        for env in ctx.events:
            ctx.emit(
                TierProgressMilestone(
                    customer_id=env.subject, occurred_at=env.time, tier="base", next_tier="silver",
                    fraction=0.5, points=1, points_needed=1,
                ),
                cause=env,
            )

    return app


async def run_kit_pipeline(
    bootstrap: str, dsn: str, n: int, *, batch: int, input_topic: str, workdir: Any,
    relay: Literal["process", "inline"] = "process",
) -> PipelineResult:
    run = uuid.uuid4().hex[:8]
    migrations_dir = workdir / f"kit-bench-{run}"
    migrations_dir.mkdir()
    (migrations_dir / "0001_effects.sql").write_text(EFFECTS_SQL)
    prefix = input_topic.removesuffix(topic_for(PURCHASE))
    settings = ServiceSettings(
        service=f"kb_{run}", kafka_bootstrap=bootstrap, pg_dsn=dsn, consumer_group=f"bench-kit-{run}",
        topic_prefix=prefix, batch_max_records=batch, batch_timeout_ms=50, outbox_poll_interval_s=0.5,
        outbox_relay=relay,
    )
    await ensure_topics(bootstrap, [prefix + topic_for(MILESTONE)])
    app = bench_app(settings, migrations_dir)
    started: list[float] = []
    meters: list[CpuMeter] = []
    await app.start()
    assert app.processor is not None and app.relay is not None
    original = app.processor.prepare

    def timed(records: Any) -> Any:
        if not started:
            started.append(time.perf_counter())
            meters.append(CpuMeter())
        return original(records)

    app.processor.prepare = timed  # type: ignore[method-assign]
    try:
        handled_at: float | None = None
        while app.relay.published_total < n:  # a 5 ms poll is the stopwatch here
            await asyncio.sleep(0.005)
            child = getattr(app.relay, "_proc", None)
            if meters and meters[0].child_pid is None and child is not None and app.relay.is_leader:
                meters[0].watch_child(child.pid)
            if handled_at is None and app.metrics.events_handled.labels(PURCHASE)._value.get() >= n:
                handled_at = time.perf_counter()
        ended = time.perf_counter()
        if started and handled_at:
            print(
                f"  kit: all {n} handled after {handled_at - started[0]:.2f}s, published after "
                f"{ended - started[0]:.2f}s", file=sys.stderr,
            )
        published = app.relay.published_total
        cpu = meters[0].stop()
    finally:
        await app.stop()
    return PipelineResult(f"kit-{relay}", published, ended - started[0], batch, cpu)


# --- 3. naive FastStream ---------------------------------------------------------------------------------
async def run_naive_pipeline(bootstrap: str, dsn: str, n: int, *, input_topic: str) -> PipelineResult:
    from faststream import AckPolicy
    from faststream.kafka import KafkaBroker
    from faststream.kafka.annotations import KafkaMessage

    run = uuid.uuid4().hex[:8]
    schema = f"naive_{run}"
    output_topic = f"bench-{run}.naive-out"
    await ensure_topics(bootstrap, [output_topic])
    admin = await asyncpg.connect(dsn)
    await admin.execute(
        f"CREATE SCHEMA {schema}; CREATE TABLE {schema}.inbox (id text PRIMARY KEY);"
        f"CREATE TABLE {schema}.effects (event_id text PRIMARY KEY, customer_id text, total_minor bigint);"
    )
    await admin.close()
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2, server_settings={"search_path": schema})
    assert pool is not None
    broker = KafkaBroker(bootstrap, enable_idempotence=True, acks="all", logger=None)
    done = 0
    started: list[float] = []
    finished = asyncio.Event()

    @broker.subscriber(
        input_topic, group_id=f"bench-naive-{run}", auto_offset_reset="earliest", ack_policy=AckPolicy.ACK,
        decoder=_raw_decoder,
    )
    async def handle(msg: KafkaMessage) -> None:
        nonlocal done
        if not started:
            started.append(time.perf_counter())
        rec: Any = msg.raw_message  # one ConsumerRecord (not a batch subscriber)
        env = decode(rec.key, rec.value, rec.headers)
        async with pool.acquire() as conn, conn.transaction():
            fresh = await conn.fetchval("INSERT INTO inbox VALUES ($1) ON CONFLICT DO NOTHING RETURNING id", env.id)
            if fresh:
                await conn.execute(
                    "INSERT INTO effects VALUES ($1, $2, $3)", env.id, env.subject, env.data.total.amount_minor,  # type: ignore[attr-defined]
                )
                out = encode(Envelope.new(
                    TierProgressMilestone(
                        customer_id=env.subject, occurred_at=env.time, tier="base", next_tier="silver",
                        fraction=0.5, points=1, points_needed=1,
                    ),
                    tenant=env.tenant, source="/bench/naive", traceparent=env.traceparent,
                ))
                await broker.publish(out.value, output_topic, key=out.key, headers=dict(
                    (k, v.decode()) for k, v in out.headers
                ))
        done += 1
        if done >= n:
            finished.set()

    await broker.start()
    try:
        await finished.wait()
        return PipelineResult("naive", done, time.perf_counter() - started[0], 1)
    finally:
        await broker.stop()
        await pool.close()
        await delete_topics_with_prefix(bootstrap, f"bench-{run}.")


async def _raw_decoder(_: Any) -> None:
    return None


def _median(results: list[PipelineResult]) -> PipelineResult:
    return sorted(results, key=lambda r: r.per_second)[len(results) // 2]


# --- command ---------------------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def endpoints() -> AsyncIterator[tuple[str, str]]:
    bootstrap, dsn = os.environ.get("LOYALTY_KAFKA_BOOTSTRAP"), os.environ.get("LOYALTY_PG_DSN")
    if bootstrap and dsn:
        yield bootstrap, dsn
        return
    import tempfile
    from pathlib import Path

    from loyalty_suite.stack import LocalStack

    def start() -> tuple[LocalStack, Any]:
        root = Path(tempfile.mkdtemp(prefix="loyalty-bench-stack-"))
        root.chmod(0o755)  # Postgres may run as another (unprivileged) user
        stack = LocalStack(root, tied_to_parent=True, fast_postgres=True)
        return stack, stack.up()

    stack, ep = await asyncio.to_thread(start)
    try:
        yield ep.kafka_bootstrap, ep.pg_dsn
    finally:
        await asyncio.to_thread(stack.down)


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.kit_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000, help="events for the limit and kit pipelines")
    parser.add_argument("--batch", type=int, default=1000, help="max records per consumed batch")
    parser.add_argument("--naive-events", type=int, default=3000, help="events for the naive pipeline")
    parser.add_argument("--repeat", type=int, default=1, help="alternate limit and kit runs; report medians")
    parser.add_argument("--relay", choices=["process", "inline", "both"], default="both",
                        help="outbox relay mode(s) of the kit pipeline (the service default is process)")
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    args = parser.parse_args(argv)
    import tempfile

    tune_gc()  # as ServiceApp.run() does in a service process; applies to all three pipelines alike
    from pathlib import Path

    async with endpoints() as (bootstrap, admin_dsn), fresh_database(admin_dsn, prefix="bench_") as dsn:
        run = uuid.uuid4().hex[:8]
        prefix = f"bench-{run}."
        input_topic = prefix + topic_for(PURCHASE)
        n = args.events
        print(f"preparing {max(n, args.naive_events)} input events on {input_topic} ...", file=sys.stderr)
        limits: list[PipelineResult] = []
        modes: list[Literal["process", "inline"]] = ["process", "inline"] if args.relay == "both" else [args.relay]
        kits: dict[str, list[PipelineResult]] = {mode: [] for mode in modes}
        try:
            await prepare_input(bootstrap, max(n, args.naive_events), input_topic)
            with tempfile.TemporaryDirectory() as workdir:
                # Alternating runs spread a noisy neighbour over both pipelines instead of one of them.
                for _ in range(args.repeat):
                    limits.append(
                        await run_limit_pipeline(bootstrap, dsn, n, batch=args.batch, input_topic=input_topic)
                    )
                    for mode in modes:
                        kits[mode].append(await run_kit_pipeline(
                            bootstrap, dsn, n, batch=args.batch, input_topic=input_topic, workdir=Path(workdir),
                            relay=mode,
                        ))
            naive = await run_naive_pipeline(bootstrap, dsn, args.naive_events, input_topic=input_topic)
        finally:
            # The kit runs used this prefix too (input and emitted topics): leave nothing on the broker.
            await delete_topics_with_prefix(bootstrap, prefix)
    limit = _median(limits)
    kit_rows = [_median(kits[mode]) for mode in modes]
    if args.repeat > 1:
        print("runs (events/s): limit " + ", ".join(f"{r.per_second:.0f}" for r in limits) + "".join(
            f" | kit-{mode} " + ", ".join(f"{r.per_second:.0f}" for r in kits[mode]) for mode in modes))
        for mode in modes:
            pairs = [k.per_second / lim.per_second for k, lim in zip(kits[mode], limits, strict=True)]
            print(f"kit-{mode} / limit per repeat: " + ", ".join(f"{p:.0%}" for p in pairs))
    rows = [limit, *kit_rows, naive]
    print(f"{'pipeline':<12} {'events':>8} {'batch':>6} {'seconds':>8} {'events/s':>10}  (medians)")
    for r in rows:
        cpu = f"  {r.cpu.per_event_us(r.events)}" if r.cpu else ""
        print(f"{r.name:<12} {r.events:>8} {r.batch:>6} {r.seconds:>8.2f} {r.per_second:>10.0f}{cpu}")
    result: dict[str, Any] = {
        "events": n, "batch": args.batch, "naive_events": args.naive_events,
        **{f"{r.name}_per_s": round(r.per_second) for r in rows},
    }
    for kit in kit_rows:
        kit_vs_limit = kit.per_second / limit.per_second
        kit_vs_naive = kit.per_second / naive.per_second
        print(f"{kit.name} / limit = {kit_vs_limit:.0%} (target >= 60%); {kit.name} / naive = {kit_vs_naive:.1f}x "
              "(target >= 10x)")
        result[f"{kit.name}_vs_limit"] = round(kit_vs_limit, 3)
        result[f"{kit.name}_vs_naive"] = round(kit_vs_naive, 1)
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    asyncio.run(main())
