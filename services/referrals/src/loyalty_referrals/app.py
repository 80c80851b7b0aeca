"""Wiring: programs + secrets → Runtime → the kit's ServiceApp with one batch handler, one timer, the API and
the recommendation-gap gauge."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

from loyalty_kit import BatchContext, ServiceApp, ServiceSettings, Timer, TimerContext
from loyalty_kit.auth import TenantAuth
from loyalty_kit.programs import load_program_files

from loyalty_referrals.api import build_router
from loyalty_referrals.gap import DEFAULT_REFRESH_S, GAP_HELP, GAP_METRIC, RecommendationGap
from loyalty_referrals.handlers import CONSUMED, HOLD_TIMER, Runtime, handle_batch, handle_hold_timers
from loyalty_referrals.program import ReferralsProgram, resolve_code_secrets

SERVICE = "referrals"
MIGRATIONS = Path(__file__).parent / "migrations"


class ReferralsApp(ServiceApp):
    """The kit's app plus one background task: the recommendation-gap gauge's refresh loop."""

    def __init__(self, settings: ServiceSettings, programs: Mapping[str, ReferralsProgram], gap_refresh_s: float):
        super().__init__(
            settings.service, settings, MIGRATIONS, known_tenants=frozenset(programs), title="loyalty referrals"
        )
        self.recommendation_gap = RecommendationGap(
            self.gauge(GAP_METRIC, GAP_HELP, ["tenant"]), programs, settings.timer_clock, gap_refresh_s
        )

    async def start(self) -> None:
        was_started = self._started
        await super().start()
        if was_started:
            return
        assert self.pool is not None
        # Among the kit's background tasks: readiness reports it if it stops, stop() cancels it.
        self._tasks.append(
            asyncio.create_task(self.recommendation_gap.run(self.pool), name=f"{self.name}-recommendation-gap")
        )


def build(
    settings: ServiceSettings | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    gap_refresh_s: float = DEFAULT_REFRESH_S,
) -> ReferralsApp:
    """Validate every program file (ProgramFileInvalid lists file, path, reason) and each code secret
    (MissingCodeSecret) before anything connects, then wire the service."""
    settings = settings or ServiceSettings(service=SERVICE)
    files = load_program_files(settings.programs_dir, SERVICE, ReferralsProgram)
    programs = {tenant: p.section for tenant, p in files.items()}
    runtime = Runtime.build(programs, resolve_code_secrets(programs, environ))
    app = ReferralsApp(settings, programs, gap_refresh_s)

    @app.batch_handler(*CONSUMED)
    async def on_events(ctx: BatchContext) -> None:
        await handle_batch(ctx, runtime)

    @app.timer_handler(HOLD_TIMER)
    async def on_hold_expired(ctx: TimerContext, timers: list[Timer]) -> None:
        await handle_hold_timers(ctx, timers, runtime)

    app.include_router(build_router(app, runtime, TenantAuth({t: p.header for t, p in files.items()})))
    return app
