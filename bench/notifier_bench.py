"""Notifier benchmark: messages/s end to end into a real SMTP sink and a webhook sink, next to the kit's limit
pipeline, in one run; p50/p99 from the source event's time to the message's arrival at the sink.

    uv run python -m bench.notifier_bench [--messages N] [--batch B] [--paced-rate R]

Same broker and database for everything (``LOYALTY_KAFKA_BOOTSTRAP`` / ``LOYALTY_PG_DSN``, e.g. from
``.stack/dev.env``; without them an embedded stack is started):

1. limit: ``bench.kit_bench.run_limit_pipeline`` (raw getmany → one COPY → produce one record per event);
2. email: N TierChanged for N registered customers → the real notifier ServiceApp (decode, inbox, profile
   lookup, routing, sandboxed Jinja rendering, planned delivery rows) → sender loop (claim, budget, SMTP via
   aiosmtplib) → an aiosmtpd server in a separate process → NotificationDelivered through the outbox;
3. webhook: N DetractorCaseOpened → Standard Webhooks POSTs (HMAC-SHA256 signed) to a receiver in the same
   separate process that verifies every signature.
Burst runs publish all N events at once (throughput; their latency includes the queue). The paced run sends
events at a fixed rate to show the latency of an unloaded pipeline.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from loyalty_contracts.envelope import Envelope, encode
from loyalty_contracts.samples import sample, with_customer
from loyalty_kit.outbox import make_producer
from loyalty_kit.testing import fresh_database, isolated_settings, publish_raw, running
from loyalty_kit.topics import delete_topics_with_prefix

from bench.kit_bench import PipelineResult, endpoints, run_limit_pipeline

TENANT = "bench"
SECRET = "whsec_" + base64.b64encode(b"benchmark-webhook-secret-0123456789").decode()
TEMPLATES = Path(__file__).resolve().parents[1] / "programs" / "templates" / "acme-diy"


# --------------------------------------------------------------------------------------------- sinks process


def _sink_process(smtp_port: int, http_port: int, out_dir: str, ready: Any) -> None:
    """SMTP server + webhook receiver, in their own process so they do not share the notifier's GIL."""
    from email.parser import BytesHeaderParser

    import uvicorn
    from aiosmtpd.controller import Controller
    from loyalty_notifier.signing import verify
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    email_log = open(Path(out_dir) / "email.log", "a", buffering=1)
    hook_log = open(Path(out_dir) / "webhook.log", "a", buffering=1)

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            headers = BytesHeaderParser().parsebytes(envelope.original_content)  # headers only: cheap
            email_log.write(f"{headers['X-Loyalty-Notification']} {time.time()}\n")
            return "250 OK"

    controller = Controller(Handler(), hostname="127.0.0.1", port=smtp_port)
    controller.start()

    async def hook(request: Any) -> Response:
        raw = await request.body()
        verify(
            SECRET,
            msg_id=request.headers["webhook-id"],
            timestamp=request.headers["webhook-timestamp"],
            signature=request.headers["webhook-signature"],
            body=raw,
            now=int(time.time()),
        )
        occurred = json.loads(raw)["data"]["occurred_at"]
        hook_log.write(f"{occurred} {time.time()}\n")
        return Response(status_code=204)

    # Plain Starlette: the handler's annotations live in this function, where FastAPI could not resolve them.
    api = Starlette(routes=[Route("/hook", hook, methods=["POST"])])

    ready.set()
    uvicorn.run(api, host="127.0.0.1", port=http_port, log_level="warning", access_log=False)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    return path.read_text().splitlines()


# --------------------------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class SinkResult:
    name: str
    messages: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else float("inf")


def program(smtp_port: int, http_port: int) -> dict[str, Any]:
    return {
        "tenant": TENANT,
        "display_name": "Bench DIY",
        "default_locale": "en",
        "locales": ["en", "ru"],
        "timezone": "Europe/Berlin",
        "currency": "EUR",
        "api_keys": [],
        "notifier": {
            "templates_dir": str(TEMPLATES),
            "footer": {"en": "A robot sends this; people read replies."},
            "channels": {
                "email": {
                    "host": "127.0.0.1",
                    "port": smtp_port,
                    "from_address": "b@bench.example",
                    "rate_per_second": 100_000,
                    "connections": 8,
                }
            },
            "routes": {"TierChanged": {"template": "tier_changed", "category": "service", "channels": ["email"]}},
            "webhooks": [
                {
                    "id": "sink",
                    "url": f"http://127.0.0.1:{http_port}/hook",
                    "secret_envs": ["BENCH_HOOK"],
                    "event_types": ["DetractorCaseOpened"],
                    "rate_per_second": 100_000,
                }
            ],
        },
    }


async def seed_customers(app: Any, n: int) -> None:
    from loyalty_notifier import store
    from loyalty_notifier.domain import Category, Channel, Consent, CustomerProfile

    at = datetime(2026, 1, 1, tzinfo=UTC)
    consents = {c: Consent(True, at) for c in Category}
    rows = {
        (TENANT, f"b-{i:06d}"): store.CustomerRow(
            CustomerProfile(
                f"b-{i:06d}",
                f"Customer {i}",
                "en",
                "Europe/Berlin",
                {Channel.EMAIL: f"b{i}@bench.test"},
                consents,
                {},
                at,
            ),
            "novice",
            None,
        )
        for i in range(n)
    }
    async with app.pool.acquire() as conn:
        for start in range(0, n, 5000):
            chunk = dict(list(rows.items())[start : start + 5000])
            await store.save_customers(conn, chunk)


async def drive(
    bootstrap: str,
    prefix: str,
    ce_type: str,
    n: int,
    log: Path,
    *,
    kind: str,
    rate: float | None,
    offset: int,
    pool: Any,
    sender: Any = None,
) -> SinkResult:
    """Publish n events (all at once, or at `rate` per second) and wait until the sink has all of them."""
    from loyalty_notifier.domain import Channel, notification_id

    base = sample(ce_type)
    before = len(_lines(log))
    sent_at: dict[str, float] = {}

    def record(i: int) -> tuple[str, bytes, bytes, list[tuple[str, bytes]]]:
        """One event for customer offset+i, stamped with the time it is created (= its source time)."""
        customer = f"b-{(offset + i) % 10**6:06d}"
        data = with_customer(base, customer, datetime.now(UTC))
        env = Envelope.new(data, tenant=TENANT, source="/bench/retailer")
        rec = encode(env)
        if kind == "email":
            recipient = f"b{(offset + i) % 10**6}@bench.test"
            sent_at[notification_id(TENANT, env.id, Channel.EMAIL, recipient)] = data.occurred_at.timestamp()
        return prefix + rec.topic, rec.key, rec.value, rec.headers

    producer = make_producer(bootstrap, linger_ms=2)
    await producer.start()
    started = time.time()
    try:
        if rate is None:
            await publish_raw(bootstrap, [record(i) for i in range(n)], producer=producer)
        else:
            acks = []
            for i in range(n):
                delay = started + i / rate - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                topic, key, value, headers = record(i)
                acks.append(await producer.send(topic, key=key, value=value, headers=headers))
            await asyncio.gather(*acks)
    finally:
        await producer.stop()
    deadline = time.monotonic() + max(120.0, n / 50)
    while len(_lines(log)) - before < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{kind}: sink got {len(_lines(log)) - before} of {n}")
        await asyncio.sleep(0.05)
    arrivals = _lines(log)[before:]
    latencies: list[float] = []
    last = 0.0
    for line in arrivals:
        ref, arrived = line.split(" ")
        last = max(last, float(arrived))
        # webhook bodies carry the event time; emails are matched by their X-Loyalty-Notification id
        source_time = datetime.fromisoformat(ref).timestamp() if kind == "webhook" else sent_at[ref]
        latencies.append(float(arrived) - source_time)
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    name = f"{kind}{'-paced' if rate else ''}"
    # Where the time went: when the last delivery of this run was planned (consumed) vs when it arrived.
    planned = await pool.fetchval(
        "SELECT extract(epoch FROM max(created_at)) FROM deliveries WHERE source_event_type = $1", ce_type
    )
    if sender is not None:
        phases = ", ".join(f"{k} {v:.2f}s" for k, v in sender.phase_s.items())
        print(f"  sender so far: {sender.rounds} rounds, {phases}", file=sys.stderr)
    print(
        f"  {name}: last planned at {float(planned) - started:.2f}s, last arrival at {last - started:.2f}s",
        file=sys.stderr,
    )
    return SinkResult(name, n, last - started, quantiles[49] * 1000, quantiles[98] * 1000)


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.notifier_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000, help="events per burst run (email and webhook)")
    parser.add_argument("--batch", type=int, default=500, help="max records per consumed batch")
    parser.add_argument("--paced-rate", type=float, default=100.0, help="events/s for the paced latency run")
    parser.add_argument("--paced-seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32, help="sends in flight (LOYALTY_SENDER_CONCURRENCY)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    n = args.messages
    smtp_port, http_port = _free_port(), _free_port()
    out_dir = tempfile.mkdtemp(prefix="notifier-bench-")
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    sinks = ctx.Process(target=_sink_process, args=(smtp_port, http_port, out_dir, ready), daemon=True)
    sinks.start()
    if not await asyncio.to_thread(ready.wait, 30):
        raise RuntimeError("sink process did not start")
    await asyncio.sleep(1.0)  # uvicorn binds right after ready
    results: list[SinkResult] = []
    cleanup: list[str] = []
    try:
        async with endpoints() as (bootstrap, admin_dsn), fresh_database(admin_dsn, prefix="bench_") as dsn:
            print(f"limit pipeline over {n} events ...", file=sys.stderr)
            limit: PipelineResult = await run_limit_pipeline(bootstrap, dsn, n, batch=args.batch)
            from loyalty_notifier.app import NotifierSettings, build_app

            with tempfile.TemporaryDirectory() as programs:
                (Path(programs) / "bench.yaml").write_text(yaml.safe_dump(program(smtp_port, http_port)))
                suffix = uuid.uuid4().hex[:8]
                base = isolated_settings("notifier", bootstrap, dsn, suffix, batch_max_records=args.batch)
                settings = NotifierSettings(
                    **base.model_dump(exclude={"programs_dir", "outbox_poll_interval_s", "timer_poll_interval_s"}),
                    programs_dir=Path(programs),
                    sender_claim_limit=500,
                    sender_concurrency=args.concurrency,
                )
                app = build_app(settings, environ={**os.environ, "BENCH_HOOK": SECRET})
                cleanup.append(settings.topic_prefix)
                async with running(app):
                    paced_n = int(args.paced_rate * args.paced_seconds)
                    await seed_customers(app, 2 * n + 2 * paced_n)
                    email_log, hook_log = Path(out_dir) / "email.log", Path(out_dir) / "webhook.log"
                    prefix = settings.topic_prefix
                    runs = [
                        ("loyalty.TierChanged.v1", n, email_log, "email", None, 0),
                        ("loyalty.DetractorCaseOpened.v1", n, hook_log, "webhook", None, n),
                        ("loyalty.TierChanged.v1", paced_n, email_log, "email", args.paced_rate, 2 * n),
                        (
                            "loyalty.DetractorCaseOpened.v1",
                            paced_n,
                            hook_log,
                            "webhook",
                            args.paced_rate,
                            2 * n + paced_n,
                        ),
                    ]
                    for ce_type, count, log, kind, rate, offset in runs:
                        print(
                            f"{kind}: {count} events {f'at {rate:.0f}/s' if rate else 'at once'} ...", file=sys.stderr
                        )
                        results.append(
                            await drive(
                                bootstrap,
                                prefix,
                                ce_type,
                                count,
                                log,
                                kind=kind,
                                rate=rate,
                                offset=offset,
                                pool=app.pool,
                                sender=app.sender,
                            )
                        )
            for prefix in cleanup:  # the app's ~23 prefixed topics (and the limit run's) must not pile up
                await delete_topics_with_prefix(bootstrap, prefix)
    finally:
        sinks.terminate()
        with contextlib.suppress(Exception):
            sinks.join(5)
    print(f"{'pipeline':<14} {'messages':>8} {'seconds':>8} {'msg/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    print(f"{'kit limit':<14} {limit.events:>8} {limit.seconds:>8.2f} {limit.per_second:>8.0f} {'':>8} {'':>8}")
    for r in results:
        print(f"{r.name:<14} {r.messages:>8} {r.seconds:>8.2f} {r.per_second:>8.0f} {r.p50_ms:>8.0f} {r.p99_ms:>8.0f}")
    out: dict[str, Any] = {"messages": n, "batch": args.batch, "limit_per_s": round(limit.per_second)}
    for r in results[:2]:
        ratio = r.per_second / limit.per_second
        print(f"{r.name} / limit = {ratio:.1%}")
        out[f"{r.name}_per_s"] = round(r.per_second)
        out[f"{r.name}_vs_limit"] = round(ratio, 3)
    for r in results:
        out[f"{r.name}_p50_ms"], out[f"{r.name}_p99_ms"] = round(r.p50_ms), round(r.p99_ms)
    if args.json:
        print(json.dumps(out))
    return out


if __name__ == "__main__":
    asyncio.run(main())
