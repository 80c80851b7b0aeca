"""Wiring: program files → handlers → the kit's ServiceApp (consumer, check timers, outbox, HTTP API)."""

from __future__ import annotations

from pathlib import Path

from loyalty_kit.auth import TenantAuth
from loyalty_kit.programs import TenantProgram, load_program_files
from loyalty_kit.service import ServiceApp
from loyalty_kit.settings import ServiceSettings

from loyalty_tiers import store
from loyalty_tiers.api import build_router
from loyalty_tiers.handlers import CHECK_TIMER, CONSUMED_TYPES, TenantRules, TiersHandlers
from loyalty_tiers.program import TiersProgram

SERVICE = "tiers"
MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def tenant_rules(files: dict[str, TenantProgram[TiersProgram]]) -> dict[str, TenantRules]:
    return {
        tenant: TenantRules(
            program=p.section,
            zone=p.section.zone(p.header.timezone),
            default_locale=p.header.default_locale,
            currency=p.header.currency,
        )
        for tenant, p in files.items()
    }


class TiersApp(ServiceApp):
    """ServiceApp that also registers each tenant's program version (and refuses silently edited ones)."""

    def __init__(self, settings: ServiceSettings, rules: dict[str, TenantRules], **kwargs: object) -> None:
        super().__init__(settings.service, settings, MIGRATIONS_DIR, **kwargs)  # type: ignore[arg-type]
        self.rules = rules

    async def start(self) -> None:
        await super().start()
        try:
            assert self.pool is not None
            async with self.pool.acquire() as conn, conn.transaction():
                for tenant, rules in self.rules.items():
                    await store.register_program(conn, tenant, rules.program)
        except BaseException:
            await self.stop()
            raise


def build_app(settings: ServiceSettings | None = None) -> tuple[TiersApp, TiersHandlers]:
    """Every program file is validated first; nothing starts on a bad file."""
    settings = settings or ServiceSettings(service=SERVICE)
    files = load_program_files(settings.programs_dir, "tiers", TiersProgram)
    rules = tenant_rules(files)
    app = TiersApp(settings, rules, known_tenants=frozenset(rules), title="loyalty tiers")
    tier_changes = app.counter(
        "loyalty_tier_changes_total", "Announced tier changes (TierChanged events) by the tier entered",
        ["tenant", "to_tier"],
    )
    handlers = TiersHandlers(rules, on_tier_change=lambda tenant, to_tier: tier_changes.labels(tenant, to_tier).inc())
    app.batch_handler(*CONSUMED_TYPES)(handlers.on_batch)
    app.timer_handler(CHECK_TIMER)(handlers.on_check)
    app.include_router(
        build_router(
            lambda: app.pool,
            rules,
            TenantAuth({t: p.header for t, p in files.items()}),
            clock=settings.timer_clock,
        )
    )
    return app, handlers
