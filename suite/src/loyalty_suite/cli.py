"""The `loyalty` command: local stack, running the suite, and ops tools."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import typer

from .stack import LocalStack, StackError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="The loyalty event suite.")
stack_app = typer.Typer(no_args_is_help=True, help="The local Kafka + Postgres stack.")
app.add_typer(stack_app, name="stack")
dlq_app = typer.Typer(no_args_is_help=True, help="Dead letters: list, show and replay.")
app.add_typer(dlq_app, name="dlq")

SERVICE_NAMES = ("referrals", "tiers", "surveys", "notifier")


def _running_endpoints(stack_dir: Path | None) -> tuple[str, str]:
    """Kafka bootstrap and Postgres DSN: from LOYALTY_KAFKA_BOOTSTRAP/LOYALTY_PG_DSN, else the running local stack."""
    bootstrap, dsn = os.environ.get("LOYALTY_KAFKA_BOOTSTRAP"), os.environ.get("LOYALTY_PG_DSN")
    if bootstrap and dsn:
        return bootstrap, dsn
    state = LocalStack(stack_dir).read_state()
    if not state:
        raise StackError("no Kafka/Postgres to talk to: set LOYALTY_KAFKA_BOOTSTRAP and LOYALTY_PG_DSN, "
                         "or start the local stack (`loyalty stack up` or `loyalty run`)")
    return str(state["kafka_bootstrap"]), str(state["pg_dsn"])


def _check_service(service: str) -> str:
    if service not in SERVICE_NAMES:
        raise typer.BadParameter(f"unknown service {service!r}; one of {', '.join(SERVICE_NAMES)}")
    return service


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def wait_forever_then(cleanup: Any) -> None:
    """Block until Ctrl-C or SIGTERM, then run ``cleanup``: nothing is left behind either way."""
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        typer.echo("stopping…")
    finally:
        cleanup()


@stack_app.command("up")
def stack_up(
    foreground: bool = typer.Option(False, "--foreground", "-f", help="Stay attached; Ctrl-C/SIGTERM stops the stack."),
    stack_dir: Path | None = typer.Option(None, help="Where state, data and logs live (default ./.stack)."),
) -> None:
    """Start Kafka (KRaft, from Maven jars) and a throwaway Postgres, or check the external ones."""
    stack = LocalStack(stack_dir, tied_to_parent=foreground)
    started = time.monotonic()
    try:
        endpoints = stack.up()
    except StackError as exc:
        _fail(exc)
        return
    typer.echo(f"stack ready ({endpoints.backend}) in {time.monotonic() - started:.1f}s")
    for key, value in endpoints.as_env().items():
        typer.echo(f"{key}={value}")
    if endpoints.backend == "embedded":
        typer.echo(f"# source it: set -a; . {stack.env_file}; set +a")
    if foreground:
        wait_forever_then(stack.down)


@stack_app.command("down")
def stack_down(stack_dir: Path | None = typer.Option(None)) -> None:
    """Stop the local stack started from this directory (no orphans, no stale lock files)."""
    stopped = LocalStack(stack_dir).down()
    typer.echo("stack stopped" if stopped else "no local stack was running")


@stack_app.command("status")
def stack_status(stack_dir: Path | None = typer.Option(None)) -> None:
    """Show pids, endpoints, health and peak memory of the local stack."""
    typer.echo(json.dumps(LocalStack(stack_dir).status(), indent=2))


@stack_app.command("env")
def stack_env(stack_dir: Path | None = typer.Option(None)) -> None:
    """Print the environment variables that point clients at the running stack."""
    state = LocalStack(stack_dir).read_state()
    if not state:
        _fail(StackError("no local stack is running (start it with `loyalty stack up`)"))
        return
    typer.echo(f"LOYALTY_KAFKA_BOOTSTRAP={state['kafka_bootstrap']}\nLOYALTY_PG_DSN={state['pg_dsn']}")


@app.command("run")
def run(
    customers: int = typer.Option(300, help="Synthetic customers of the example retailer."),
    days: int = typer.Option(120, help="Simulated days the stream covers."),
    rate: float = typer.Option(150.0, help="Events published per second (0: as fast as possible)."),
    seed: int = typer.Option(20260601, help="Seed of the synthetic retailer (same seed, same stream)."),
    programs_dir: Path = typer.Option(Path("programs"), help="Retailer program files."),
    reports_dir: Path = typer.Option(Path("reports"), help="Where run-<time>/report.html is written."),
    keep_running: bool = typer.Option(False, help="After the report, keep the suite running until Ctrl-C."),
    simulate: bool = typer.Option(True, help="Simulated customers answer surveys and staff resolve cases."),
    stack_dir: Path | None = typer.Option(None, help="Where state, data and logs live (default ./.stack)."),
) -> None:
    """The main job: stack, four services, a synthetic retailer's stream, then the report."""
    from .main_job import RunOptions, run_main_job

    opts = RunOptions(customers=customers, days=days, rate=rate, seed=seed, programs_dir=programs_dir,
                      reports_dir=reports_dir, stack_dir=stack_dir, keep_running=keep_running, simulate=simulate)
    try:
        path = asyncio.run(run_main_job(opts))
    except KeyboardInterrupt:
        typer.echo("aborted")
        raise typer.Exit(130) from None
    except StackError as exc:
        _fail(exc)
        return
    if path is not None:
        typer.echo(f"open {path}")


@dlq_app.command("list")
def dlq_list(
    service: str = typer.Argument(..., help="referrals | tiers | surveys | notifier"),
    limit: int = typer.Option(100, help="At most this many (the most recent)."),
    stack_dir: Path | None = typer.Option(None),
) -> None:
    """List a service's dead letters: id, reason, error, original topic and event (never the body)."""
    from loyalty_kit.dlq import list_dead_letters

    bootstrap, _ = _running_endpoints(stack_dir)
    letters = asyncio.run(list_dead_letters(bootstrap, _check_service(service), limit))
    for dl in letters:
        s = dl.summary()
        typer.echo(f"{s['id']:>10}  {s['reason'] or '-':<18} {s['event_type'] or '-':<34} {s['topic'] or '-'}  "
                   f"{(s['error'] or '')[:100]}")
    typer.echo(f"{len(letters)} dead letter(s) for {service}")


@dlq_app.command("show")
def dlq_show(
    service: str = typer.Argument(...),
    dead_letter_id: str = typer.Argument(..., help="<partition>:<offset> as `list` prints it"),
    body: bool = typer.Option(False, help="Also print the body (may hold personal data)."),
    stack_dir: Path | None = typer.Option(None),
) -> None:
    """Show one dead letter's headers (and optionally its body)."""
    from loyalty_kit.dlq import get_dead_letter

    bootstrap, _ = _running_endpoints(stack_dir)
    dl = asyncio.run(get_dead_letter(bootstrap, _check_service(service), dead_letter_id))
    if dl is None:
        _fail(StackError(f"no dead letter {dead_letter_id} for {service}"))
        return
    out: dict[str, Any] = {"summary": dl.summary(),
                           "headers": {k: v.decode("utf-8", "replace") for k, v in dl.headers}}
    if body:
        out["body"] = (dl.value or b"").decode("utf-8", "replace")
    typer.echo(json.dumps(out, indent=2))


@dlq_app.command("replay")
def dlq_replay(
    service: str = typer.Argument(...),
    ids: list[str] = typer.Argument(None, help="Dead-letter ids; none with --all"),
    all_: bool = typer.Option(False, "--all", help="Replay every dead letter of the service."),
    stack_dir: Path | None = typer.Option(None),
) -> None:
    """Republish dead letters to their original topics with their original headers."""
    from loyalty_kit.dlq import replay_dead_letters

    if not ids and not all_:
        raise typer.BadParameter("name dead-letter ids or pass --all")
    bootstrap, _ = _running_endpoints(stack_dir)
    try:
        replayed = asyncio.run(replay_dead_letters(bootstrap, _check_service(service), "all" if all_ else ids))
    except KeyError as exc:
        _fail(StackError(str(exc.args[0])))
        return
    typer.echo(f"replayed {len(replayed)} dead letter(s) of {service}")


@app.command("lag")
def lag(stack_dir: Path | None = typer.Option(None)) -> None:
    """Consumer lag per service (its group loyalty-<service>; messages not yet processed)."""
    from .services import service_lag

    bootstrap, _ = _running_endpoints(stack_dir)
    for service, value in asyncio.run(service_lag(bootstrap, list(SERVICE_NAMES))).items():
        typer.echo(f"{service:<10} {value}")


@app.command("inspect")
def inspect(
    customer: str = typer.Argument(..., help="Customer id"),
    tenant: str = typer.Option("acme-diy", help="Tenant (retailer) id"),
    api_key: str = typer.Option(..., envvar="LOYALTY_API_KEY", help="The tenant's read-API key"),
    stack_dir: Path | None = typer.Option(None),
) -> None:
    """One customer across all services: tier and ledger, referrals, feedback and loyalty account, messages."""
    from .ops import inspect_customer, service_urls

    urls = service_urls(LocalStack(stack_dir).root)
    if not urls:
        _fail(StackError("no running services found: start `loyalty run --keep-running`, or set "
                         "LOYALTY_TIERS_URL, LOYALTY_REFERRALS_URL, LOYALTY_SURVEYS_URL, LOYALTY_NOTIFIER_URL"))
        return
    typer.echo(json.dumps(inspect_customer(urls, tenant, customer, api_key), indent=2, ensure_ascii=False,
                          default=str))


tiers_app = typer.Typer(no_args_is_help=True, help="Tiers operations.")
app.add_typer(tiers_app, name="tiers")
notifier_app = typer.Typer(no_args_is_help=True, help="Notifier operations.")
app.add_typer(notifier_app, name="notifier")


@tiers_app.command("recalc")
def tiers_recalc(
    tenant: str = typer.Option(..., help="Tenant whose customers are replayed"),
    version: int = typer.Option(..., help="The new tiers program version (tiers.version in the program file)"),
    programs_dir: Path = typer.Option(Path("programs")),
    force: bool = typer.Option(False, help="Also replay customers already evaluated under this version"),
    stack_dir: Path | None = typer.Option(None),
) -> None:
    """Replay every customer's ledger under a new program version; emit only the changes that result."""
    from loyalty_kit.settings import ServiceSettings
    from loyalty_tiers.recalc import RecalculationError, recalculate

    bootstrap, dsn = _running_endpoints(stack_dir)
    settings = ServiceSettings(service="tiers", kafka_bootstrap=bootstrap, pg_dsn=dsn, pg_admin_dsn=dsn,
                               programs_dir=programs_dir)
    try:
        report = asyncio.run(recalculate(tenant, version, settings=settings, force=force))
    except RecalculationError as exc:
        _fail(StackError(str(exc)))
        return
    typer.echo(str(report))


@notifier_app.command("preview")
def notifier_preview(
    event_type: str = typer.Option(..., "--event-type", help="Event name (TierChanged) or journey:<name>:<step>"),
    tenant: str = typer.Option("acme-diy"),
    locale: str = typer.Option("en"),
    programs_dir: Path = typer.Option(Path("programs")),
) -> None:
    """Render the message a sample event becomes, in the tenant's voice and the given locale."""
    from loyalty_notifier.config import preview

    try:
        message = preview(programs_dir, tenant, event_type, locale)
    except KeyError as exc:
        _fail(StackError(str(exc.args[0])))
        return
    typer.echo(_render_message(message))


@notifier_app.command("resend")
def notifier_resend(
    tenant: str = typer.Option("acme-diy"),
    ids: list[str] = typer.Option(None, "--id", help="Notification id (repeatable)"),
    all_failed: bool = typer.Option(False, "--all-failed", help="Every delivery that finally failed"),
    stack_dir: Path | None = typer.Option(None),
) -> None:
    """Resend deliveries that finally failed (a dead-letter replay cannot: the inbox already saw the event)."""
    from loyalty_kit import roles
    from loyalty_kit.db import create_pool
    from loyalty_notifier import store

    if not ids and not all_failed:
        raise typer.BadParameter("give --id (repeatable) or --all-failed")
    _, admin_dsn = _running_endpoints(stack_dir)

    async def resend() -> list[str]:
        dsn = await roles.provision(admin_dsn, "notifier")
        pool = await create_pool(dsn, "notifier", min_size=1, max_size=1)
        try:
            async with pool.acquire() as conn:
                return list(await store.resend_failed(conn, tenant, None if all_failed else ids))
        finally:
            await pool.close()

    resent = asyncio.run(resend())
    for notification_id in resent:
        typer.echo(notification_id)
    typer.echo(f"{len(resent)} failed deliveries set to resend")


def _render_message(message: Any) -> str:
    if hasattr(message, "model_dump"):
        data = message.model_dump()
    elif hasattr(message, "__dataclass_fields__"):
        from dataclasses import asdict

        data = asdict(message)
    else:
        data = {"message": str(message)}
    return "\n".join(f"--- {key} ---\n{value}" for key, value in data.items())


def main() -> None:
    try:
        app()
    except StackError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
