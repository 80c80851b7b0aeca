"""The `loyalty_referrals_recommendation_gap{tenant}` gauge: says minus does, as the dashboard shows it.

The value is the says-vs-does report's `gap` (share of NPS respondents who are promoters minus share of
promoters whose friend converted) for the last `REPORT_PERIOD` up to the tenant's clock — the wall clock,
or the event-time watermark when timers run on the event clock (the demo's simulated time). It is the
same computation as `GET .../says-vs-does` (store.says_vs_does_report).

Refreshed by a periodic task on every replica (a few indexed reads per tenant and interval, whatever the
event rate), so each replica exports the same current value and `max by (tenant)` is right. A tenant with
no NPS respondents in the period has no series: a gap of 0 would claim that says equals does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import datetime, timedelta

import asyncpg
from loyalty_kit.effects import ClockMode, clock_now
from prometheus_client import Gauge

from loyalty_referrals import domain, store
from loyalty_referrals.program import ReferralsProgram

log = logging.getLogger(__name__)

GAP_METRIC = "loyalty_referrals_recommendation_gap"
GAP_HELP = (
    "Says minus does over the last 30 days: share of NPS respondents who are promoters (would recommend) "
    "minus share of those promoters whose referred friend converted"
)
DEFAULT_REFRESH_S = 30.0
# The period ends just after the clock so an answer stamped exactly at the watermark counts.
_INCLUSIVE = timedelta(microseconds=1)


class RecommendationGap:
    def __init__(
        self,
        gauge: Gauge,
        programs: Mapping[str, ReferralsProgram],
        clock: ClockMode,
        refresh_s: float = DEFAULT_REFRESH_S,
    ) -> None:
        if refresh_s <= 0:
            raise ValueError(f"refresh_s must be positive, got {refresh_s}")
        self.gauge = gauge
        self.programs = dict(programs)
        self.clock: ClockMode = clock
        self.refresh_s = refresh_s

    async def refresh(self, pool: asyncpg.Pool) -> dict[str, float | None]:
        """Recompute every tenant's gap and set (or drop) its series; returns what was exported."""
        exported: dict[str, float | None] = {}
        async with pool.acquire() as conn:
            for tenant, program in sorted(self.programs.items()):
                end: datetime = await clock_now(conn, tenant, self.clock) + _INCLUSIVE
                report = await store.says_vs_does_report(
                    conn, tenant, end - domain.REPORT_PERIOD, end, program.says_vs_does.referral_within_days
                )
                if report.respondents:
                    self.gauge.labels(tenant).set(report.gap)
                    exported[tenant] = report.gap
                else:
                    self._drop(tenant)
                    exported[tenant] = None
        return exported

    def _drop(self, tenant: str) -> None:
        try:
            self.gauge.remove(tenant)
        except KeyError:
            pass  # never exported

    async def run(self, pool: asyncpg.Pool) -> None:
        """Refresh now, then every `refresh_s`; a failed round is logged and retried on the next tick."""
        while True:
            try:
                await self.refresh(pool)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("recommendation gap refresh failed", extra={"error": f"{type(exc).__name__}: {exc}"})
            await asyncio.sleep(self.refresh_s)
