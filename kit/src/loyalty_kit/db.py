"""asyncpg pools whose connections live in one service's schema."""

from __future__ import annotations

import re
from typing import Any

import asyncpg

IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def check_identifier(name: str) -> str:
    """Schema and role names are interpolated into DDL, so only plain lowercase identifiers pass."""
    if not IDENTIFIER.match(name):
        raise ValueError(f"{name!r} is not a valid schema/role name (lowercase letters, digits, underscore)")
    return name


def quote_ident(name: str) -> str:
    return '"' + check_identifier(name) + '"'


async def create_pool(
    dsn: str, schema: str, *, min_size: int = 1, max_size: int = 10, **kwargs: Any
) -> asyncpg.Pool:
    """A pool whose every connection has ``search_path = <schema>`` (set at connect, not per query)."""
    check_identifier(schema)
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        server_settings={"search_path": schema, "application_name": f"loyalty-{schema}"},
        **kwargs,
    )
    assert pool is not None
    return pool


TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ConnectionError,
    TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.QueryCanceledError,
    asyncpg.exceptions.LockNotAvailableError,
)


def is_transient_db_error(exc: BaseException) -> bool:
    """Errors that say nothing about the data (connection lost, server restarting, conflicts)."""
    return isinstance(exc, TRANSIENT_ERRORS)
