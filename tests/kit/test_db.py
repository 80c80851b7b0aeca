"""Roles, schemas and migrations on a real Postgres."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest
from loyalty_kit import migrations, roles
from loyalty_kit.db import create_pool
from loyalty_kit.migrations import MigrationError


async def test_a_service_role_cannot_read_another_services_schema(kit_db: str, suffix: str) -> None:
    alpha, beta = f"kt_{suffix}_a", f"kt_{suffix}_b"
    alpha_dsn = await roles.provision(kit_db, alpha)
    beta_dsn = await roles.provision(kit_db, beta)
    assert await roles.provision(kit_db, alpha) == alpha_dsn  # idempotent, same derived password
    for dsn, schema in ((alpha_dsn, alpha), (beta_dsn, beta)):
        pool = await create_pool(dsn, schema)
        try:
            await migrations.apply(pool, schema, None)
        finally:
            await pool.close()
    conn = await asyncpg.connect(alpha_dsn)
    try:
        assert await conn.fetchval("SELECT current_user") == alpha
        assert await conn.fetchval("SELECT count(*) FROM inbox") == 0  # its own schema, via search_path
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch(f"SELECT * FROM {beta}.inbox")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CREATE TABLE public.sneaky (x int)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(f"CREATE TABLE {beta}.sneaky (x int)")
    finally:
        await conn.close()


async def test_migrations_are_idempotent_and_safe_to_run_concurrently(
    kit_db: str, service_name: str, tmp_path: Path
) -> None:
    (tmp_path / "0001_things.sql").write_text("CREATE TABLE things (id int PRIMARY KEY);")
    (tmp_path / "0002_more.sql").write_text("ALTER TABLE things ADD COLUMN name text;")
    pool = await create_pool(kit_db, service_name, max_size=6)
    try:
        results = await asyncio.gather(*(migrations.apply(pool, service_name, tmp_path) for _ in range(4)))
        applied = [r for r in results if r]
        assert len(applied) == 1  # one start applied everything; the others waited on the lock, found nothing
        assert applied[0] == [
            "kit:0001_kit_tables", "kit:0002_outbox_header_arrays", "kit:0003_outbox_header_blob",
            "kit:0004_outbox_null_value", "kit:0005_partition_clocks",
            "service:0001_things", "service:0002_more",
        ]
        assert await migrations.apply(pool, service_name, tmp_path) == []
        async with pool.acquire() as conn:
            assert await migrations.pending(conn, service_name, tmp_path) == []
            (tmp_path / "0003_later.sql").write_text("CREATE TABLE later (id int);")
            assert await migrations.pending(conn, service_name, tmp_path) == ["service:0003_later"]
        # An applied migration that was edited is refused, not silently skipped.
        (tmp_path / "0001_things.sql").write_text("CREATE TABLE things (id bigint PRIMARY KEY);")
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await migrations.apply(pool, service_name, tmp_path)
    finally:
        await pool.close()


def test_badly_named_migration_files_are_rejected(tmp_path: Path) -> None:
    (tmp_path / "1_oops.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"0001_create_things\.sql"):
        migrations.all_migrations(tmp_path)


async def test_inbox_returns_only_ids_never_seen_including_repeats_within_one_call(
    kit_db: str, service_name: str
) -> None:
    from loyalty_kit import inbox

    pool = await create_pool(kit_db, service_name)
    try:
        await migrations.apply(pool, service_name, None)
        async with pool.acquire() as conn:
            assert await inbox.record_new(conn, ["a", "b", "a"]) == {"a", "b"}
            assert await inbox.record_new(conn, ["b", "c"]) == {"c"}
            assert await conn.fetchval("SELECT count(*) FROM inbox") == 3
            assert await inbox.prune(conn, timedelta(days=1)) == 0
            assert await inbox.prune(conn, timedelta(0)) == 3
    finally:
        await pool.close()
