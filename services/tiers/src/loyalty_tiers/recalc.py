"""Versioned ladders: replay every customer of a tenant under a new program version, emit only changes.

``await recalculate("acme-diy", 2)`` is what ``loyalty tiers recalc`` calls. It checks that the program file
now carries that version, registers it (refusing a silently edited version), then pages through the
tenant's customers still on another version; each page runs in one transaction that re-derives the ledger
(new revisions under the new version), updates statuses and writes TierChanged / TierDowngradeScheduled
rows to the outbox (reason ``program_changed``). The running service's relay publishes them. Idempotent:
customers already on the version are skipped, and a re-run under the same program emits nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from loyalty_kit import migrations, outbox, roles
from loyalty_kit.db import create_pool
from loyalty_kit.effects import EffectContext, clock_now
from loyalty_kit.programs import load_program_files
from loyalty_kit.settings import ServiceSettings

from loyalty_tiers import store
from loyalty_tiers.app import MIGRATIONS_DIR, SERVICE, tenant_rules
from loyalty_tiers.handlers import apply_customers
from loyalty_tiers.program import TiersProgram


class RecalculationError(Exception):
    pass


@dataclass
class RecalcReport:
    tenant: str
    program_version: int
    customers: int = 0
    tier_changes: int = 0
    downgrade_notices: int = 0
    milestones: int = 0

    def __str__(self) -> str:
        return (f"tenant {self.tenant}: {self.customers} customer(s) replayed under tiers program version "
                f"{self.program_version}; {self.tier_changes} tier change(s), {self.downgrade_notices} downgrade "
                f"notice(s), {self.milestones} milestone(s) emitted")


async def recalculate(
    tenant: str,
    new_program_version: int,
    *,
    settings: ServiceSettings | None = None,
    page_size: int = 500,
    force: bool = False,
) -> RecalcReport:
    """Replay ``tenant``'s customers under ``new_program_version`` (``force``: also those already on it)."""
    settings = settings or ServiceSettings(service=SERVICE)
    files = load_program_files(settings.programs_dir, SERVICE, TiersProgram)
    if tenant not in files:
        raise RecalculationError(f"no program file for tenant {tenant!r} in {settings.programs_dir}")
    rules = tenant_rules(files)[tenant]
    if rules.program.version != new_program_version:
        raise RecalculationError(
            f"{files[tenant].file}: tiers.version is {rules.program.version}, not {new_program_version}; "
            "edit the program file (new version) before recalculating"
        )
    dsn = settings.pg_dsn
    if settings.pg_admin_dsn:
        dsn = await roles.provision(settings.pg_admin_dsn, settings.service, settings.pg_password)
    pool = await create_pool(dsn, settings.service, min_size=1, max_size=2)
    report = RecalcReport(tenant, new_program_version)
    try:
        await migrations.apply(pool, settings.service, MIGRATIONS_DIR)
        async with pool.acquire() as conn:
            async with conn.transaction():
                await store.register_program(conn, tenant, rules.program)
            after = ""
            while True:
                async with conn.transaction():
                    page = await store.customers_to_recalculate(
                        conn, tenant, new_program_version, after, page_size, force
                    )
                    if not page:
                        break
                    now = await clock_now(conn, tenant, settings.timer_clock)
                    ctx = EffectContext(conn, service=settings.service, source=f"/loyalty/{SERVICE}",
                                        clock=settings.timer_clock, topic_prefix=settings.topic_prefix)
                    counts = await apply_customers(ctx, tenant, rules, {}, dict.fromkeys(page, now),
                                                   recalculating=True)
                    await outbox.insert(conn, ctx.outbox, settings.service)
                report.customers += counts.customers
                report.tier_changes += counts.tier_changes
                report.downgrade_notices += counts.notices
                report.milestones += counts.milestones
                after = page[-1]
    finally:
        await pool.close()
    return report
