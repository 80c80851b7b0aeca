"""Liveness, readiness (with reasons) and metrics routes of a running ServiceApp."""

from __future__ import annotations

import shutil
from pathlib import Path

from kit_counter_service import MIGRATIONS, build
from loyalty_kit.testing import http_client, isolated_settings, running


async def test_health_readiness_and_metrics(
    kafka_bootstrap: str, kit_db: str, service_name: str, suffix: str, tmp_path: Path
) -> None:
    migrations_dir = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, migrations_dir)
    settings = isolated_settings(service_name, kafka_bootstrap, kit_db, suffix, pg_admin_dsn=kit_db)
    app = build(settings)
    app.migrations_dir = migrations_dir
    async with http_client(app) as client:
        not_started = await client.get("/readyz")
        assert not_started.status_code == 503 and not_started.json()["reasons"] == ["service not started"]
        async with running(app):
            assert (await client.get("/healthz")).json()["status"] == "ok"
            ready = await client.get("/readyz")
            assert ready.status_code == 200, ready.text
            (migrations_dir / "0002_pending.sql").write_text("CREATE TABLE pending_thing (id int);")
            pending = await client.get("/readyz")
            assert pending.status_code == 503
            assert pending.json()["reasons"] == ["migrations not applied: service:0002_pending"]
            metrics = (await client.get("/metrics")).text
            for name in (
                "loyalty_batch_seconds", "loyalty_batch_size", "loyalty_events_handled", "loyalty_dead_letters",
                "loyalty_outbox_backlog", "loyalty_timers_due", "loyalty_consumer_lag",
            ):
                assert name in metrics
