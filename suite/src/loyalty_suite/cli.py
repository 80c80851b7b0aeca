"""The `loyalty` command: local stack, running the suite, and ops tools."""

from __future__ import annotations

import json
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
    stack_dir: Path | None = typer.Option(None, help="Where state, data and logs live (default ./.stack)."),
) -> None:
    """The main job: bring the stack up and keep it running until Ctrl-C (services join as they land)."""
    stack = LocalStack(stack_dir, tied_to_parent=True)
    try:
        endpoints = stack.up()
    except StackError as exc:
        _fail(exc)
        return
    typer.echo(f"stack ready ({endpoints.backend}): kafka {endpoints.kafka_bootstrap}; Ctrl-C stops everything")
    wait_forever_then(stack.down)


def main() -> None:
    try:
        app()
    except StackError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
