"""Versioned, idempotent migrations per service schema.

Files are ``NNNN_name.sql`` in a directory. The kit's own tables (inbox, outbox, timers, tenant clocks)
come from the kit's migrations, applied first into the same schema under source ``kit``; the service's
files are source ``service``. ``<schema>.schema_migrations`` records (source, version, name, checksum).
Everything runs in one transaction holding a transaction-level advisory lock keyed by the schema, so
concurrent starts of several replicas serialise and the second finds nothing to do.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from loyalty_kit.db import quote_ident

log = logging.getLogger(__name__)

KIT_MIGRATIONS_DIR = Path(__file__).parent / "sql"
FILE_PATTERN = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(Exception):
    pass


@dataclass(frozen=True)
class Migration:
    source: str
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(source: str, directory: Path | None) -> list[Migration]:
    if directory is None:
        return []
    directory = Path(directory)
    if not directory.is_dir():
        raise MigrationError(f"migrations directory {directory} does not exist")
    found: list[Migration] = []
    seen: dict[int, str] = {}
    for path in sorted(directory.glob("*.sql")):
        match = FILE_PATTERN.match(path.name)
        if not match:
            raise MigrationError(f"{path}: migration file names must look like 0001_create_things.sql")
        version = int(match.group(1))
        if version in seen:
            raise MigrationError(f"{path}: version {version} also used by {seen[version]}")
        seen[version] = path.name
        found.append(Migration(source, version, match.group(2), path.read_text(encoding="utf-8")))
    return found


def all_migrations(migrations_dir: Path | None) -> list[Migration]:
    return discover("kit", KIT_MIGRATIONS_DIR) + discover("service", migrations_dir)


LEDGER_DDL = """
CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
    source     text NOT NULL,
    version    integer NOT NULL,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, version)
)
"""


async def apply(
    pool_or_conn: asyncpg.Pool | asyncpg.Connection, schema: str, migrations_dir: Path | None
) -> list[str]:
    """Apply pending kit + service migrations; returns the names applied (empty when up to date)."""
    wanted = all_migrations(migrations_dir)
    q_schema = quote_ident(schema)
    if isinstance(pool_or_conn, asyncpg.Pool):
        async with pool_or_conn.acquire() as conn:
            return await _apply(conn, schema, q_schema, wanted)
    return await _apply(pool_or_conn, schema, q_schema, wanted)


async def _apply(conn: asyncpg.Connection, schema: str, q_schema: str, wanted: list[Migration]) -> list[str]:
    applied_now: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"loyalty-migrations:{schema}")
        exists = await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema)
        if not exists:
            await conn.execute(f"CREATE SCHEMA {q_schema}")
        await conn.execute(LEDGER_DDL.format(schema=q_schema))
        rows = await conn.fetch(f"SELECT source, version, name, checksum FROM {q_schema}.schema_migrations")
        done = {(r["source"], r["version"]): r for r in rows}
        await conn.execute(f"SET LOCAL search_path TO {q_schema}")
        for m in wanted:
            prior = done.get((m.source, m.version))
            if prior is not None:
                if prior["checksum"] != m.checksum:
                    raise MigrationError(
                        f"{m.source} migration {m.version:04d}_{m.name} was changed after it was applied "
                        f"to schema {schema}; add a new migration instead"
                    )
                continue
            await conn.execute(m.sql)
            await conn.execute(
                f"INSERT INTO {q_schema}.schema_migrations (source, version, name, checksum) "
                "VALUES ($1, $2, $3, $4)",
                m.source, m.version, m.name, m.checksum,
            )
            applied_now.append(f"{m.source}:{m.version:04d}_{m.name}")
            log.info("applied migration", extra={"migration": applied_now[-1], "schema": schema})
    return applied_now


async def pending(conn: asyncpg.Connection, schema: str, migrations_dir: Path | None) -> list[str]:
    """Names of migrations not yet applied (for readiness)."""
    wanted = all_migrations(migrations_dir)
    q_schema = quote_ident(schema)
    has_ledger = await conn.fetchval(
        "SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = 'schema_migrations'", schema
    )
    done: set[tuple[str, int]] = set()
    if has_ledger:
        rows = await conn.fetch(f"SELECT source, version FROM {q_schema}.schema_migrations")
        done = {(r["source"], r["version"]) for r in rows}
    return [f"{m.source}:{m.version:04d}_{m.name}" for m in wanted if (m.source, m.version) not in done]
