"""The main job (`loyalty run`): the whole suite on the local stack against a synthetic retailer.

Stack up → local sinks (SMTP, SMS, Telegram, webhooks) → the example program pointed at them → the four
services as their own processes → the retailer's stream (with a customer simulator answering surveys and
resolving cases) under a progress bar with the services' lag → drain → an HTML report + terminal summary.
Ctrl-C once stops the stream early and still reports; everything started is stopped either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from loyalty_kit.kafka import group_for
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .demo.report import make_report
from .demo.retailer import RetailerConfig, build_plan, describe_plan, ensure_topics, run_stream
from .demo.sinks import Sinks, write_demo_programs
from .ops import SERVICES_FILE, write_service_urls
from .services import SERVICES, SuiteProcesses, service_lag, wait_drained
from .stack import LocalStack


@dataclass(frozen=True)
class RunOptions:
    customers: int = 300
    days: int = 120
    rate: float = 150.0  # events per second of wall time; the simulated clock follows the events
    seed: int = 20260601
    programs_dir: Path = Path("programs")
    reports_dir: Path = Path("reports")
    stack_dir: Path | None = None
    drain_timeout_s: float = 180.0
    keep_running: bool = False
    simulate: bool = True


async def _poll_lag(bootstrap: str, holder: dict[str, int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(Exception):
            holder.update(await service_lag(bootstrap))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 2.0)


def _lag_text(lag: dict[str, int]) -> str:
    return "lag " + " ".join(f"{name} {lag.get(name, 0)}" for name in SERVICES) if lag else "lag …"


async def run_main_job(opts: RunOptions, console: Console | None = None) -> Path | None:
    console = console or Console()
    run_id = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = (opts.reports_dir / f"run-{run_id}").resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    stack = LocalStack(opts.stack_dir, tied_to_parent=True)
    reused = bool(stack.read_state()) and stack.status().get("healthy") is True
    started = time.monotonic()
    endpoints = await asyncio.to_thread(stack.up)
    console.print(f"[green]stack ready[/] ({endpoints.backend}) in {time.monotonic() - started:.1f}s: "
                  f"kafka {endpoints.kafka_bootstrap}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    first_signal_at: list[float] = []

    def on_signal() -> None:
        now = time.monotonic()
        if stop.is_set():
            # One Ctrl-C can arrive twice (the terminal signals the process group and `uv run` forwards it):
            # only a second press, a moment later, aborts.
            if first_signal_at and now - first_signal_at[0] > 1.0:
                raise KeyboardInterrupt
            return
        first_signal_at.append(now)
        console.print("[yellow]stopping the stream; the report still follows (Ctrl-C again to abort)[/]")
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    procs: SuiteProcesses | None = None
    try:
        sinks = Sinks(run_dir)
        sink_endpoints = await sinks.start()
        try:
            programs = write_demo_programs(opts.programs_dir, run_dir / "programs", sink_endpoints)
            referral_secret = secrets.token_urlsafe(32)
            env = {**sink_endpoints.notifier_env(), "ACME_DIY_REFERRAL_SECRET": referral_secret,
                   "LOYALTY_TIMER_CLOCK": "event"}  # durable timers follow the simulated (event) clock
            await ensure_topics(endpoints.kafka_bootstrap)
            procs = SuiteProcesses(endpoints.kafka_bootstrap, endpoints.pg_dsn, programs, run_dir / "logs",
                                   extra_env=env)
            t0 = time.monotonic()
            await asyncio.to_thread(procs.start_all)
            write_service_urls(stack.root, {name: svc.url for name, svc in procs.running.items()})
            console.print(f"[green]services ready[/] in {time.monotonic() - t0:.1f}s: " + ", ".join(
                f"{name} {svc.url}" for name, svc in procs.running.items()))
            plan = build_plan(RetailerConfig(customers=opts.customers, days=opts.days, seed=opts.seed,
                                             referral_secret=referral_secret.encode(), id_prefix=f"c{run_id[-6:]}"))
            console.print(describe_plan(plan))
            since_ms = int(time.time() * 1000) - 1000
            lag: dict[str, int] = {}
            lag_stop = asyncio.Event()
            lag_task = asyncio.create_task(_poll_lag(endpoints.kafka_bootstrap, lag, lag_stop))
            with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=console) as bar:
                task = bar.add_task("stream", total=len(plan.envelopes), info="")

                def on_progress(count: int, env: object) -> None:
                    captured = ", ".join(f"{k} {v}" for k, v in sinks.counts().items() if v)
                    bar.update(task, completed=count, info=f"{_lag_text(lag)} | {captured or 'no messages yet'}")

                result = await run_stream(endpoints.kafka_bootstrap, plan, rate=opts.rate, progress_cb=on_progress,
                                          simulate=opts.simulate, stop=stop)
                drain = bar.add_task("drain", total=None, info="")
                deadline = time.monotonic() + opts.drain_timeout_s
                while not stop.is_set() and time.monotonic() < deadline:
                    bar.update(drain, info=_lag_text(lag))
                    remaining = await wait_drained(endpoints.kafka_bootstrap, [group_for(s) for s in SERVICES],
                                                   timeout_s=2.0)
                    if not any(remaining.values()):
                        break
                await asyncio.sleep(3.0)  # the notifier's sender loop delivers what the last batches planned
                bar.update(drain, info=_lag_text(await service_lag(endpoints.kafka_bootstrap)))
            lag_stop.set()
            await lag_task
            console.print(f"published {result.stats.published} events in {result.stats.seconds:.1f}s "
                          f"({result.stats.rate:.0f}/s); simulator answered {sum(result.simulated.values())}")
            path, summary = await make_report(endpoints.kafka_bootstrap, run_dir, since_ms=since_ms,
                                              programs_dir=programs, published=result.expected.counts)
            console.print(summary)
            if opts.keep_running and not stop.is_set():
                console.print("services keep running; Ctrl-C stops everything")
                await stop.wait()
            return path
        finally:
            await sinks.stop()
    finally:
        # Signal handlers stay installed until everything is stopped, so a late duplicate Ctrl-C cannot
        # interrupt the clean-up half way.
        try:
            if procs is not None:
                await asyncio.to_thread(procs.stop_all)
                (stack.root / SERVICES_FILE).unlink(missing_ok=True)
            if not reused:
                await asyncio.to_thread(stack.down)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
