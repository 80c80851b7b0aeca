"""Wiring: programs + token secrets → handlers → the kit's ServiceApp (consumer, timers, outbox, HTTP)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from loyalty_kit.auth import TenantAuth
from loyalty_kit.programs import load_program_files
from loyalty_kit.service import ServiceApp
from loyalty_kit.settings import ServiceSettings

from loyalty_surveys.api import build_router
from loyalty_surveys.handlers import (
    CASE_DEADLINE,
    FOLLOW_UP_DUE,
    NPS_REFRESH,
    SURVEY_DUE,
    SurveysHandlers,
    consumed_event_types,
    tenant_configs,
)
from loyalty_surveys.program import SurveysProgram

SERVICE = "surveys"
MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def build_app(
    settings: ServiceSettings | None = None, environ: Mapping[str, str] = os.environ
) -> tuple[ServiceApp, SurveysHandlers]:
    """Validate every program file and token secret first; nothing starts on a bad file or a missing secret."""
    # The service name is also its schema and role; tests run isolated copies under other names.
    settings = settings or ServiceSettings(service=SERVICE)
    files = load_program_files(settings.programs_dir, SERVICE, SurveysProgram)
    configs = tenant_configs(
        {t: p.section for t, p in files.items()},
        {t: p.header.default_locale for t, p in files.items()},
        environ,
    )
    handlers = SurveysHandlers(configs)
    app = ServiceApp(
        settings.service, settings, MIGRATIONS_DIR, known_tenants=frozenset(configs), title="loyalty surveys"
    )
    app.batch_handler(*consumed_event_types())(handlers.on_batch)
    app.timer_handler(SURVEY_DUE)(handlers.on_survey_due)
    app.timer_handler(FOLLOW_UP_DUE)(handlers.on_follow_up_due)
    app.timer_handler(CASE_DEADLINE)(handlers.on_case_deadline)
    app.timer_handler(NPS_REFRESH)(handlers.on_nps_refresh)
    handlers.nps_gauge = app.gauge(
        "loyalty_surveys_nps", "NPS of the last 30 days (promoters % minus detractors %)", ["tenant"]
    )
    app.include_router(
        build_router(
            lambda: app.pool,  # type: ignore[arg-type,return-value]
            handlers,
            TenantAuth({t: p.header for t, p in files.items()}),
            service=settings.service,
            clock=settings.timer_clock,
            topic_prefix=settings.topic_prefix,
        )
    )
    return app, handlers
