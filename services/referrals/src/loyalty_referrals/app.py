"""Wiring: programs + secrets → Runtime → the kit's ServiceApp with one batch handler, one timer, the API."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from loyalty_kit import BatchContext, ServiceApp, ServiceSettings, Timer, TimerContext
from loyalty_kit.auth import TenantAuth
from loyalty_kit.programs import load_program_files

from loyalty_referrals.api import build_router
from loyalty_referrals.handlers import CONSUMED, HOLD_TIMER, Runtime, handle_batch, handle_hold_timers
from loyalty_referrals.program import ReferralsProgram, resolve_code_secrets

SERVICE = "referrals"
MIGRATIONS = Path(__file__).parent / "migrations"


def build(settings: ServiceSettings | None = None, *, environ: Mapping[str, str] | None = None) -> ServiceApp:
    """Validate every program file (ProgramFileInvalid lists file, path, reason) and each code secret
    (MissingCodeSecret) before anything connects, then wire the service."""
    settings = settings or ServiceSettings(service=SERVICE)
    files = load_program_files(settings.programs_dir, SERVICE, ReferralsProgram)
    programs = {tenant: p.section for tenant, p in files.items()}
    runtime = Runtime.build(programs, resolve_code_secrets(programs, environ))
    app = ServiceApp(
        settings.service, settings, MIGRATIONS, known_tenants=frozenset(programs), title="loyalty referrals"
    )

    @app.batch_handler(*CONSUMED)
    async def on_events(ctx: BatchContext) -> None:
        await handle_batch(ctx, runtime)

    @app.timer_handler(HOLD_TIMER)
    async def on_hold_expired(ctx: TimerContext, timers: list[Timer]) -> None:
        await handle_hold_timers(ctx, timers, runtime)

    app.include_router(build_router(app, runtime, TenantAuth({t: p.header for t, p in files.items()})))
    return app
