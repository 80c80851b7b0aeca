"""Inbox: ids of consumed events, recorded in the same transaction as their effects."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import asyncpg


async def record_new(conn: asyncpg.Connection, event_ids: Sequence[str]) -> set[str]:
    """Insert the ids in one statement; returns those not seen before (the ones to apply)."""
    if not event_ids:
        return set()
    # A repeated id inside the same statement is skipped by DO NOTHING too (only DO UPDATE would fail).
    rows = await conn.fetch(
        "INSERT INTO inbox (id) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING RETURNING id", list(event_ids)
    )
    return {r["id"] for r in rows}


async def prune(conn: asyncpg.Connection, older_than: timedelta) -> int:
    """Forget ids older than the longest redelivery window (topic retention); returns rows removed."""
    status = await conn.execute("DELETE FROM inbox WHERE received_at < now() - $1::interval", older_than)
    return int(status.split()[-1])
