"""Fixtures for the kit's integration tests: a throwaway database and isolated service settings."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from loyalty_kit.testing import fresh_database
from loyalty_kit.topics import delete_topics_with_prefix


@pytest.fixture
async def kit_db(pg_admin_dsn: str) -> AsyncIterator[str]:
    """Superuser DSN of a database created for this test (dropped afterwards, with the roles made in it)."""
    async with fresh_database(pg_admin_dsn) as dsn:
        yield dsn
        conn = await asyncpg.connect(dsn)
        try:
            roles = await conn.fetch(
                "SELECT nspname FROM pg_namespace n JOIN pg_roles r ON r.rolname = n.nspname WHERE nspname LIKE 'kt_%'"
            )
        finally:
            await conn.close()
    if roles:
        conn = await asyncpg.connect(pg_admin_dsn)
        try:
            for r in roles:
                await conn.execute(f'DROP ROLE IF EXISTS "{r["nspname"]}"')
        finally:
            await conn.close()


@pytest.fixture
async def suffix(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """Random suffix of this test's names; its topics (prefix ``t<suffix>.``) are deleted afterwards so
    the shared broker does not accumulate partitions."""
    value = uuid.uuid4().hex[:8]
    yield value
    if "kafka_bootstrap" in request.fixturenames:
        await delete_topics_with_prefix(request.getfixturevalue("kafka_bootstrap"), f"t{value}.")


@pytest.fixture
def service_name(suffix: str) -> str:
    return f"kt_{suffix}"
