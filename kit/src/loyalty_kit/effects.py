"""What handlers can do inside their transaction: emit events (outbox), schedule/cancel timers, read clocks."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
from loyalty_contracts.base import Event
from loyalty_contracts.envelope import Envelope, KafkaRecord, encode

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_VARIANT = "89ab"

log = logging.getLogger(__name__)


def new_event_id() -> str:
    """A random (version 4) UUID string for an emitted event, ~3x cheaper than ``str(uuid.uuid4())``.

    ``uuid4`` makes a ``getrandom`` system call per id. Ids only need to be unique (the inbox key), not
    unpredictable, so the random module's generator (seeded from the OS, reseeded in forked children) will do.
    """
    h = f"{random.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"
ClockMode = Literal["wall", "event"]


Partition = tuple[str, int]  # (topic, partition) of a consumed record


def tenant_watermark(newest: Mapping[Partition, datetime], behind: Iterable[Partition]) -> datetime | None:
    """A tenant's event-time clock (a low watermark) from the newest event time applied per partition and the
    partitions that still have unread records; None: hold the clock where it is.

    An unread record in a partition may be an earlier event of the tenant, so while any partition is behind the
    clock is the slowest such partition's newest time for the tenant; a partition behind that has never shown
    the tenant (typically one not read yet when a replay starts) holds the clock altogether, since nothing says
    when its events are. Once every partition is read to its end, nothing earlier is waiting: the clock is the
    newest time seen anywhere. (An event produced later with an older time is late, as under any clock; the
    rules handle late events.)
    """
    waiting: list[datetime] = []
    for partition in behind:
        seen = newest.get(partition)
        if seen is None:
            return None
        waiting.append(seen)
    if waiting:
        return min(waiting)
    return max(newest.values(), default=None)


async def record_event_times(conn: asyncpg.Connection, events: Iterable[tuple[Partition, Envelope]]) -> None:
    """Remember, per tenant and partition, the newest event time applied (never back); in the batch's
    transaction. ``settle_watermarks`` turns these into the tenants' clocks."""
    newest: dict[tuple[str, str, int], datetime] = {}
    for (topic, partition), env in events:
        key = (env.tenant, topic, partition)
        seen = newest.get(key)
        if seen is None or env.time > seen:
            newest[key] = env.time
    if not newest:
        return
    await conn.execute(
        "INSERT INTO partition_clocks (tenant, topic, partition, newest) "
        "SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::timestamptz[]) "
        "ON CONFLICT (tenant, topic, partition) DO UPDATE "
        "SET newest = GREATEST(partition_clocks.newest, EXCLUDED.newest)",
        [k[0] for k in newest], [k[1] for k in newest], [k[2] for k in newest], list(newest.values()),
    )


async def settle_watermarks(
    conn: asyncpg.Connection, behind: Mapping[Partition, bool], consumed: Sequence[str] | None = None
) -> None:
    """Record which partitions still have unread records (the service passes every partition assigned to it,
    after each batch), then move every tenant's clock to ``tenant_watermark`` (never back: a timer that fired
    stays fired). Other replicas' partitions count with the flags they last recorded.

    ``consumed``: the topics the service consumes now; rows of other topics (one it no longer consumes) are
    left out, so a partition nobody reads any more cannot hold a tenant's clock back for ever."""
    if not behind:
        return
    topics = None if consumed is None else list(consumed)
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO partition_progress (topic, partition, behind) "
            "SELECT * FROM unnest($1::text[], $2::int[], $3::bool[]) "
            "ON CONFLICT (topic, partition) DO UPDATE SET behind = EXCLUDED.behind",
            [p[0] for p in behind], [p[1] for p in behind], list(behind.values()),
        )
        waiting = [
            (r["topic"], r["partition"])
            for r in await conn.fetch(
                "SELECT topic, partition FROM partition_progress "
                "WHERE behind AND ($1::text[] IS NULL OR topic = ANY($1::text[]))",
                topics,
            )
        ]
        per_tenant: dict[str, dict[Partition, datetime]] = {}
        for r in await conn.fetch(
            "SELECT tenant, topic, partition, newest FROM partition_clocks "
            "WHERE $1::text[] IS NULL OR topic = ANY($1::text[])",
            topics,
        ):
            per_tenant.setdefault(r["tenant"], {})[(r["topic"], r["partition"])] = r["newest"]
        clocks = {tenant: tenant_watermark(newest, waiting) for tenant, newest in per_tenant.items()}
        settled = {tenant: clock for tenant, clock in clocks.items() if clock is not None}
        if settled:
            await conn.execute(
                "INSERT INTO tenant_clocks (tenant, watermark) "
                "SELECT * FROM unnest($1::text[], $2::timestamptz[]) "
                "ON CONFLICT (tenant) DO UPDATE SET watermark = GREATEST(tenant_clocks.watermark, EXCLUDED.watermark)",
                list(settled), list(settled.values()),
            )


async def clock_now(conn: asyncpg.Connection, tenant: str, mode: ClockMode) -> datetime:
    """The time rules see for a tenant: the wall clock, or its event-time watermark (epoch before any event)."""
    if mode == "wall":
        return datetime.now(UTC)
    value = await conn.fetchval("SELECT watermark FROM tenant_clocks WHERE tenant = $1", tenant)
    return value if value is not None else EPOCH


async def schedule_timer(
    conn: asyncpg.Connection,
    *,
    kind: str,
    key: str,
    due_at: datetime,
    payload: Mapping[str, Any] | None,
    tenant: str,
    replace: bool = True,
) -> None:
    """Create the timer ``(kind, key)``; an existing one is replaced (``replace``) or left as it is."""
    if due_at.tzinfo is None:
        raise ValueError("due_at must be timezone-aware")
    conflict = (
        "DO UPDATE SET due_at = EXCLUDED.due_at, payload = EXCLUDED.payload, tenant = EXCLUDED.tenant, "
        "attempts = 0, retry_at = NULL, last_error = NULL"
        if replace
        else "DO NOTHING"
    )
    await conn.execute(
        "INSERT INTO timers (tenant, kind, key, due_at, payload) VALUES ($1, $2, $3, $4, $5::jsonb) "
        f"ON CONFLICT (kind, key) {conflict}",
        tenant, kind, key, due_at, json.dumps(dict(payload or {})),
    )


async def schedule_timers(
    conn: asyncpg.Connection,
    timers: Sequence[tuple[str, str, datetime, Mapping[str, Any] | None, str]],
    *,
    replace: bool = True,
) -> None:
    """Create many timers ``(kind, key, due_at, payload, tenant)`` in one statement (batch handlers).

    Same semantics as ``schedule_timer`` per row; within one call a repeated (kind, key) keeps the last row.
    """
    latest: dict[tuple[str, str], tuple[str, str, datetime, Mapping[str, Any] | None, str]] = {}
    for timer in timers:
        if timer[2].tzinfo is None:
            raise ValueError("due_at must be timezone-aware")
        latest[(timer[0], timer[1])] = timer
    if not latest:
        return
    rows = list(latest.values())
    conflict = (
        "DO UPDATE SET due_at = EXCLUDED.due_at, payload = EXCLUDED.payload, tenant = EXCLUDED.tenant, "
        "attempts = 0, retry_at = NULL, last_error = NULL"
        if replace
        else "DO NOTHING"
    )
    await conn.execute(
        "INSERT INTO timers (tenant, kind, key, due_at, payload) "
        "SELECT t, k, y, d, p::jsonb FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[]) "
        f"AS u(t, k, y, d, p) ON CONFLICT (kind, key) {conflict}",
        [r[4] for r in rows],
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
        [json.dumps(dict(r[3] or {})) for r in rows],
    )


async def cancel_timer(conn: asyncpg.Connection, kind: str, key: str) -> bool:
    status = await conn.execute("DELETE FROM timers WHERE kind = $1 AND key = $2", kind, key)
    return status != "DELETE 0"


async def cancel_timers(conn: asyncpg.Connection, kind: str, keys: Sequence[str]) -> int:
    """Cancel many timers of one kind in one statement; returns how many existed."""
    if not keys:
        return 0
    status = await conn.execute("DELETE FROM timers WHERE kind = $1 AND key = ANY($2::text[])", kind, list(keys))
    return int(status.split()[-1])


class EffectContext:
    """Shared by BatchContext and TimerContext: one open transaction and the outbox rows it will write."""

    def __init__(
        self,
        conn: asyncpg.Connection,
        *,
        service: str,
        source: str,
        clock: ClockMode,
        topic_prefix: str = "",
        default_traceparent: str | None = None,
    ) -> None:
        self.conn = conn
        self.service = service
        self.source = source
        self.clock = clock
        self.topic_prefix = topic_prefix
        self.default_traceparent = default_traceparent
        self.outbox: list[KafkaRecord] = []
        self.emitted: list[Envelope] = []
        self.committed_callbacks: list[Callable[[], None]] = []

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once this context's transaction has committed (never if it rolls back or is
        retried): for counters and other side effects that must not count a batch twice."""
        self.committed_callbacks.append(callback)

    def _traceparent_for(self, cause: Envelope | None) -> str | None:
        return self.default_traceparent

    def emit(self, data: Event, *, cause: Envelope | None = None, tenant: str | None = None) -> Envelope:
        """Queue an event; it is written to the outbox in this transaction and published after commit."""
        owner = cause.tenant if cause is not None else tenant
        if not owner:
            raise ValueError("emit needs a cause or a tenant")
        env = Envelope.new(
            data, tenant=owner, source=self.source, traceparent=self._traceparent_for(cause), id=new_event_id()
        )
        self.outbox.append(encode(env, self.topic_prefix))
        self.emitted.append(env)
        return env

    async def schedule(
        self,
        kind: str,
        key: str,
        due_at: datetime,
        payload: Mapping[str, Any] | None,
        tenant: str,
        *,
        replace: bool = True,
    ) -> None:
        await schedule_timer(
            self.conn, kind=kind, key=key, due_at=due_at, payload=payload, tenant=tenant, replace=replace
        )

    async def schedule_many(
        self,
        timers: Sequence[tuple[str, str, datetime, Mapping[str, Any] | None, str]],
        *,
        replace: bool = True,
    ) -> None:
        """Many ``(kind, key, due_at, payload, tenant)`` timers in one round trip (no per-event statements)."""
        await schedule_timers(self.conn, timers, replace=replace)

    async def cancel_many(self, kind: str, keys: Sequence[str]) -> int:
        """Cancel many timers of one kind in one round trip."""
        return await cancel_timers(self.conn, kind, keys)

    async def cancel(self, kind: str, key: str) -> bool:
        return await cancel_timer(self.conn, kind, key)

    async def now_for(self, tenant: str) -> datetime:
        return await clock_now(self.conn, tenant, self.clock)


def run_committed_callbacks(callbacks: list[Callable[[], None]]) -> None:
    """Run ``after_commit`` callbacks; one that raises is logged and does not stop the others."""
    for callback in callbacks:
        try:
            callback()
        except Exception:
            log.exception("after-commit callback failed")
