"""Liveness, readiness (with reasons) and metrics routes of a running ServiceApp."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
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


async def test_isolated_runs_use_two_partitions_and_their_topics_are_deleted(
    kafka_bootstrap: str, kit_db: str, service_name: str, suffix: str, pytestconfig: pytest.Config
) -> None:
    from aiokafka.admin import AIOKafkaAdminClient
    from loyalty_kit.testing import _CLEANUP, delete_registered_topics

    settings = isolated_settings(service_name, kafka_bootstrap, kit_db, suffix, pg_admin_dsn=kit_db)
    assert settings.topic_partitions == 2
    assert (kafka_bootstrap, settings.topic_prefix) in _CLEANUP
    # The kit's pytest plugin (entry point) deletes every registered prefix when the session ends.
    assert pytestconfig.pluginmanager.has_plugin("loyalty_kit")
    app = build(settings)
    async with running(app):
        pass
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        created = sorted(t for t in await admin.list_topics() if t.startswith(settings.topic_prefix))
        assert created == sorted([*app.consumed_topics, app.dlq_topic])
        for described in await admin.describe_topics(created):
            assert len(described["partitions"]) == 2, described["topic"]
        assert sorted(await delete_registered_topics([settings.topic_prefix])) == created
        assert (kafka_bootstrap, settings.topic_prefix) not in _CLEANUP
        await wait_until_gone(admin, settings.topic_prefix)
    finally:
        await admin.close()


async def wait_until_gone(admin: object, prefix: str) -> None:
    from loyalty_kit.testing import wait_until

    async def gone() -> bool:
        return not [t for t in await admin.list_topics() if t.startswith(prefix)]  # type: ignore[attr-defined]

    await wait_until(gone, within_s=30, interval=0.2)
