"""Postgres access for the notifier (schema `notifier`). Multi-row statements: one round trip per table per
batch on the hot path. Rows ↔ domain objects conversion lives here too."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from loyalty_notifier.domain import (
    Category,
    Channel,
    Consent,
    ContactRecord,
    CustomerProfile,
    EndpointHealth,
    JourneyState,
)

CustomerKey = tuple[str, str]  # (tenant, customer_id)


# ------------------------------------------------------------------------------------------- customers


def _consents_json(consents: dict[Any, Consent], key: Any) -> str:
    return json.dumps({key(k): {"granted": v.granted, "at": v.at.isoformat()} for k, v in consents.items()})


def _consents_from(raw: str | dict[str, Any] | None) -> dict[str, Consent]:
    data = json.loads(raw) if isinstance(raw, str) else (raw or {})
    return {k: Consent(bool(v["granted"]), datetime.fromisoformat(v["at"])) for k, v in data.items()}


@dataclass
class CustomerRow:
    """Profile plus the personal context templates use (tier, last purchase)."""

    profile: CustomerProfile
    tier: str | None = None
    last_purchase: dict[str, Any] | None = None


def _customer_from(row: asyncpg.Record) -> CustomerRow:
    contacts = json.loads(row["contacts"]) if row["contacts"] else {}
    channel_consents: dict[tuple[Category, Channel], Consent] = {}
    for key, consent in _consents_from(row["channel_consents"]).items():
        category, channel = key.split("/", 1)
        channel_consents[(Category(category), Channel(channel))] = consent
    profile = CustomerProfile(
        customer_id=row["customer_id"],
        name=row["name"],
        locale=row["locale"],
        timezone=row["time_zone"],
        contacts={Channel(k): v for k, v in contacts.items()},
        consents={Category(k): v for k, v in _consents_from(row["consents"]).items()},
        channel_consents=channel_consents,
        registered_at=row["registered_at"],
    )
    last = json.loads(row["last_purchase"]) if row["last_purchase"] else None
    return CustomerRow(profile, row["tier"], last)


async def load_customers(conn: asyncpg.Connection, keys: Iterable[CustomerKey]) -> dict[CustomerKey, CustomerRow]:
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    rows = await conn.fetch(
        "SELECT c.* FROM customers c JOIN unnest($1::text[], $2::text[]) AS k(t, id) "
        "ON c.tenant = k.t AND c.customer_id = k.id",
        [k[0] for k in wanted],
        [k[1] for k in wanted],
    )
    return {(r["tenant"], r["customer_id"]): _customer_from(r) for r in rows}


async def save_customers(conn: asyncpg.Connection, rows: dict[CustomerKey, CustomerRow]) -> None:
    if not rows:
        return
    items = sorted(rows.items())
    await conn.execute(
        """
        INSERT INTO customers (tenant, customer_id, name, locale, time_zone, contacts, consents, channel_consents,
                               registered_at, tier, last_purchase, updated_at)
        SELECT t, id, n, l, z, c::jsonb, cs::jsonb, cc::jsonb, r, tr, lp::jsonb, now()
        FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
                    $9::timestamptz[], $10::text[], $11::text[]) AS u(t, id, n, l, z, c, cs, cc, r, tr, lp)
        ON CONFLICT (tenant, customer_id) DO UPDATE SET
            name = EXCLUDED.name, locale = EXCLUDED.locale, time_zone = EXCLUDED.time_zone,
            contacts = EXCLUDED.contacts, consents = EXCLUDED.consents,
            channel_consents = EXCLUDED.channel_consents, registered_at = EXCLUDED.registered_at,
            tier = EXCLUDED.tier, last_purchase = EXCLUDED.last_purchase, updated_at = now()
        """,
        [k[0] for k, _ in items],
        [k[1] for k, _ in items],
        [r.profile.name for _, r in items],
        [r.profile.locale for _, r in items],
        [r.profile.timezone for _, r in items],
        [json.dumps({ch.value: v for ch, v in r.profile.contacts.items()}) for _, r in items],
        [_consents_json(dict(r.profile.consents), lambda c: c.value) for _, r in items],
        [_consents_json(dict(r.profile.channel_consents), lambda k: f"{k[0].value}/{k[1].value}") for _, r in items],
        [r.profile.registered_at for _, r in items],
        [r.tier for _, r in items],
        [json.dumps(r.last_purchase) if r.last_purchase is not None else None for _, r in items],
    )


# ------------------------------------------------------------------------------------------- deliveries


@dataclass(frozen=True)
class NewDelivery:
    tenant: str
    customer_id: str
    notification_id: str
    source_event_id: str
    source_event_type: str
    channel: Channel
    recipient: str
    endpoint_id: str | None
    category: Category
    template: str
    locale: str
    time_zone: str
    content: dict[str, Any]
    fallbacks: tuple[tuple[Channel, str], ...]
    journey_step: str | None
    due_at: datetime
    source_time: datetime
    traceparent: str | None = None


async def insert_deliveries(conn: asyncpg.Connection, rows: Sequence[NewDelivery]) -> int:
    """Planned messages; a (source event, recipient, channel) already planned is left alone (never twice)."""
    if not rows:
        return 0
    inserted = await conn.fetch(
        """
        INSERT INTO deliveries (tenant, customer_id, notification_id, source_event_id, source_event_type, channel,
                                recipient, endpoint_id, category, template, locale, time_zone, content, fallbacks,
                                journey_step, due_at, source_time, traceparent)
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                             $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::jsonb[],
                             $14::jsonb[], $15::text[], $16::timestamptz[], $17::timestamptz[], $18::text[])
        ON CONFLICT (tenant, source_event_id, recipient, channel) DO NOTHING
        RETURNING id
        """,
        [r.tenant for r in rows],
        [r.customer_id for r in rows],
        [r.notification_id for r in rows],
        [r.source_event_id for r in rows],
        [r.source_event_type for r in rows],
        [r.channel.value for r in rows],
        [r.recipient for r in rows],
        [r.endpoint_id for r in rows],
        [r.category.value for r in rows],
        [r.template for r in rows],
        [r.locale for r in rows],
        [r.time_zone for r in rows],
        [json.dumps(r.content) for r in rows],
        [json.dumps([[c.value, rcpt] for c, rcpt in r.fallbacks]) for r in rows],
        [r.journey_step for r in rows],
        [r.due_at for r in rows],
        [r.source_time for r in rows],
        [r.traceparent for r in rows],
    )
    return len(inserted)


@dataclass(frozen=True)
class ClaimedDelivery:
    id: int
    tenant: str
    customer_id: str
    notification_id: str
    source_event_id: str
    source_event_type: str
    channel: Channel
    recipient: str
    endpoint_id: str | None
    category: Category
    template: str
    locale: str
    time_zone: str
    content: dict[str, Any]
    fallbacks: tuple[tuple[Channel, str], ...]
    journey_step: str | None
    due_at: datetime
    attempts: int  # including the attempt being made now
    source_time: datetime
    traceparent: str | None


def _claimed_from(row: asyncpg.Record) -> ClaimedDelivery:
    return ClaimedDelivery(
        id=row["id"],
        tenant=row["tenant"],
        customer_id=row["customer_id"],
        notification_id=row["notification_id"],
        source_event_id=row["source_event_id"],
        source_event_type=row["source_event_type"],
        channel=Channel(row["channel"]),
        recipient=row["recipient"],
        endpoint_id=row["endpoint_id"],
        category=Category(row["category"]),
        template=row["template"],
        locale=row["locale"],
        time_zone=row["time_zone"],
        content=json.loads(row["content"]),
        fallbacks=tuple((Channel(c), r) for c, r in json.loads(row["fallbacks"])),
        journey_step=row["journey_step"],
        due_at=row["due_at"],
        attempts=row["attempts"],
        source_time=row["source_time"],
        traceparent=row["traceparent"],
    )


_CLAIM_COLUMNS = (
    "id, tenant, customer_id, notification_id, source_event_id, source_event_type, channel, recipient, "
    "endpoint_id, category, template, locale, time_zone, content::text AS content, fallbacks::text AS fallbacks, "
    "journey_step, due_at, attempts, source_time, traceparent"
)

_DUE_WALL = (
    "SELECT id FROM deliveries WHERE status = 'pending' AND due_at <= now() "
    "ORDER BY due_at, id LIMIT $1 FOR UPDATE SKIP LOCKED"
)
_DUE_EVENT = (
    "SELECT d.id FROM deliveries d JOIN tenant_clocks c ON c.tenant = d.tenant "
    "WHERE d.status = 'pending' AND d.due_at <= c.watermark ORDER BY d.due_at, d.id LIMIT $1 "
    "FOR UPDATE OF d SKIP LOCKED"
)


async def claim_due(conn: asyncpg.Connection, *, limit: int, lease_s: float, clock: str) -> list[ClaimedDelivery]:
    """Lease due rows to this sender (status 'sending', attempts + 1). Call inside a transaction."""
    due = _DUE_EVENT if clock == "event" else _DUE_WALL
    rows = await conn.fetch(
        f"""
        WITH due AS ({due})
        UPDATE deliveries d SET status = 'sending', attempts = d.attempts + 1,
                                lease_until = now() + make_interval(secs => $2)
        FROM due WHERE d.id = due.id
        RETURNING {", ".join("d." + c.strip() for c in _CLAIM_COLUMNS.split(","))}
        """,
        limit,
        lease_s,
    )
    return sorted((_claimed_from(r) for r in rows), key=lambda d: (d.due_at, d.id))


async def claim_lost_leases(conn: asyncpg.Connection, limit: int) -> list[ClaimedDelivery]:
    """Rows a vanished sender was sending (its lease ran out). Call inside a transaction."""
    rows = await conn.fetch(
        f"SELECT {_CLAIM_COLUMNS} FROM deliveries WHERE status = 'sending' AND lease_until < now() "
        "ORDER BY lease_until LIMIT $1 FOR UPDATE SKIP LOCKED",
        limit,
    )
    return [_claimed_from(r) for r in rows]


@dataclass(frozen=True)
class Outcome:
    delivery_id: int
    status: str  # pending (retry) | delivered | failed | failed_over | suppressed
    due_at: datetime | None = None
    error: str | None = None


async def record_outcomes(conn: asyncpg.Connection, outcomes: Sequence[Outcome]) -> None:
    if not outcomes:
        return
    await conn.execute(
        """
        UPDATE deliveries d SET status = u.status, due_at = COALESCE(u.due, d.due_at), last_error = u.err,
               lease_until = NULL,
               finished_at = CASE WHEN u.status = 'pending' THEN NULL ELSE now() END
        FROM unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::text[]) AS u(id, status, due, err)
        WHERE d.id = u.id
        """,
        [o.delivery_id for o in outcomes],
        [o.status for o in outcomes],
        [o.due_at for o in outcomes],
        [o.error for o in outcomes],
    )


@dataclass(frozen=True)
class Attempt:
    delivery_id: int
    attempt: int
    ok: bool
    failure_kind: str | None
    status_code: int | None
    detail: str | None


async def log_attempts(conn: asyncpg.Connection, attempts: Sequence[Attempt]) -> None:
    if not attempts:
        return
    await conn.execute(
        "INSERT INTO delivery_attempts (delivery_id, attempt, ok, failure_kind, status_code, detail) "
        "SELECT * FROM unnest($1::bigint[], $2::int[], $3::bool[], $4::text[], $5::int[], $6::text[])",
        [a.delivery_id for a in attempts],
        [a.attempt for a in attempts],
        [a.ok for a in attempts],
        [a.failure_kind for a in attempts],
        [a.status_code for a in attempts],
        [a.detail[:1000] if a.detail else None for a in attempts],
    )


# ------------------------------------------------------------------------------------------- suppressions


@dataclass(frozen=True)
class SuppressionRow:
    tenant: str
    customer_id: str
    source_event_id: str
    source_event_type: str
    template: str | None
    category: Category | None
    channel: Channel | None
    reason: str
    detail: str


async def insert_suppressions(conn: asyncpg.Connection, rows: Sequence[SuppressionRow]) -> list[int]:
    """Returns the indexes of rows that were new (a redelivered event does not report twice)."""
    if not rows:
        return []
    inserted = await conn.fetch(
        """
        INSERT INTO suppressions (tenant, customer_id, source_event_id, source_event_type, template, category,
                                  channel, reason, detail)
        SELECT t, c, s, st, tp, cat, ch, r, d
        FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
                    $9::text[]) AS u(t, c, s, st, tp, cat, ch, r, d)
        ON CONFLICT (tenant, source_event_id, customer_id, reason) DO NOTHING
        RETURNING source_event_id, customer_id, reason
        """,
        [r.tenant for r in rows],
        [r.customer_id for r in rows],
        [r.source_event_id for r in rows],
        [r.source_event_type for r in rows],
        [r.template for r in rows],
        [r.category.value if r.category else None for r in rows],
        [r.channel.value if r.channel else None for r in rows],
        [r.reason for r in rows],
        [r.detail[:500] for r in rows],
    )
    new = {(r["source_event_id"], r["customer_id"], r["reason"]) for r in inserted}
    return [i for i, r in enumerate(rows) if (r.source_event_id, r.customer_id, r.reason) in new]


# ------------------------------------------------------------------------------------------- contact budget


async def contact_history(
    conn: asyncpg.Connection, keys: Iterable[CustomerKey], since: datetime
) -> dict[CustomerKey, list[tuple[str, ContactRecord]]]:
    """(source event id, record) per customer since a time: the sender skips the message's own slot."""
    wanted = sorted(set(keys))
    history: dict[CustomerKey, list[tuple[str, ContactRecord]]] = {k: [] for k in wanted}
    if not wanted:
        return history
    rows = await conn.fetch(
        "SELECT l.tenant, l.customer_id, l.source_event_id, l.category, l.sent_at FROM contact_log l "
        "JOIN unnest($1::text[], $2::text[]) AS k(t, id) ON l.tenant = k.t AND l.customer_id = k.id "
        "WHERE l.sent_at > $3",
        [k[0] for k in wanted],
        [k[1] for k in wanted],
        since,
    )
    for r in rows:
        history[(r["tenant"], r["customer_id"])].append(
            (r["source_event_id"], ContactRecord(r["sent_at"], Category(r["category"])))
        )
    return history


async def reserve_contacts(conn: asyncpg.Connection, rows: Sequence[tuple[str, str, str, Category, datetime]]) -> None:
    """(tenant, customer, source event, category, at): one budget slot per message, whatever the channel."""
    if not rows:
        return
    await conn.execute(
        "INSERT INTO contact_log (tenant, customer_id, source_event_id, category, sent_at) "
        "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[]) "
        "ON CONFLICT DO NOTHING",
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
        [r[3].value for r in rows],
        [r[4] for r in rows],
    )


async def release_contacts(conn: asyncpg.Connection, rows: Sequence[tuple[str, str, str]]) -> None:
    """A message that finally failed gives its budget slot back."""
    if not rows:
        return
    await conn.execute(
        "DELETE FROM contact_log l USING unnest($1::text[], $2::text[], $3::text[]) AS u(t, c, s) "
        "WHERE l.tenant = u.t AND l.customer_id = u.c AND l.source_event_id = u.s",
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
    )


# ------------------------------------------------------------------------------------------- webhook endpoints


async def endpoint_health(
    conn: asyncpg.Connection, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], EndpointHealth]:
    wanted = sorted(set(keys))
    found = {k: EndpointHealth(0, False) for k in wanted}
    if not wanted:
        return found
    rows = await conn.fetch(
        "SELECT e.tenant, e.endpoint_id, e.consecutive_failures, e.disabled FROM webhook_endpoints e "
        "JOIN unnest($1::text[], $2::text[]) AS k(t, id) ON e.tenant = k.t AND e.endpoint_id = k.id",
        [k[0] for k in wanted],
        [k[1] for k in wanted],
    )
    for r in rows:
        found[(r["tenant"], r["endpoint_id"])] = EndpointHealth(r["consecutive_failures"], r["disabled"])
    return found


async def save_endpoint_health(conn: asyncpg.Connection, health: dict[tuple[str, str], EndpointHealth]) -> None:
    if not health:
        return
    items = sorted(health.items())
    await conn.execute(
        "INSERT INTO webhook_endpoints (tenant, endpoint_id, consecutive_failures, disabled, changed_at) "
        "SELECT t, e, f, d, now() FROM unnest($1::text[], $2::text[], $3::int[], $4::bool[]) AS u(t, e, f, d) "
        "ON CONFLICT (tenant, endpoint_id) DO UPDATE SET consecutive_failures = EXCLUDED.consecutive_failures, "
        "disabled = EXCLUDED.disabled, changed_at = CASE WHEN webhook_endpoints.disabled <> EXCLUDED.disabled "
        "THEN now() ELSE webhook_endpoints.changed_at END",
        [k[0] for k, _ in items],
        [k[1] for k, _ in items],
        [h.consecutive_failures for _, h in items],
        [h.disabled for _, h in items],
    )


# ------------------------------------------------------------------------------------------- journeys

JourneyKey = tuple[str, str, str]  # (tenant, customer_id, journey)


async def load_journeys(conn: asyncpg.Connection, keys: Iterable[CustomerKey]) -> dict[JourneyKey, JourneyState]:
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    rows = await conn.fetch(
        "SELECT j.* FROM journeys j JOIN unnest($1::text[], $2::text[]) AS k(t, id) "
        "ON j.tenant = k.t AND j.customer_id = k.id",
        [k[0] for k in wanted],
        [k[1] for k in wanted],
    )
    return {
        (r["tenant"], r["customer_id"], r["journey"]): JourneyState(
            journey=r["journey"],
            customer_id=r["customer_id"],
            started_at=r["started_at"],
            path=r["path"],
            path_entered_at=r["path_entered_at"],
            exited_at=r["exited_at"],
            exit_reason=r["exit_reason"],
        )
        for r in rows
    }


async def save_journeys(conn: asyncpg.Connection, states: dict[JourneyKey, JourneyState]) -> None:
    if not states:
        return
    items = sorted(states.items())
    await conn.execute(
        """
        INSERT INTO journeys (tenant, customer_id, journey, started_at, path, path_entered_at, exited_at, exit_reason)
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::timestamptz[],
                             $7::timestamptz[], $8::text[])
        ON CONFLICT (tenant, customer_id, journey) DO UPDATE SET path = EXCLUDED.path,
            path_entered_at = EXCLUDED.path_entered_at, exited_at = EXCLUDED.exited_at,
            exit_reason = EXCLUDED.exit_reason
        """,
        [k[0] for k, _ in items],
        [k[1] for k, _ in items],
        [k[2] for k, _ in items],
        [s.started_at for _, s in items],
        [s.path for _, s in items],
        [s.path_entered_at for _, s in items],
        [s.exited_at for _, s in items],
        [s.exit_reason for _, s in items],
    )


async def decided_steps(conn: asyncpg.Connection, keys: Iterable[JourneyKey]) -> dict[JourneyKey, set[str]]:
    wanted = sorted(set(keys))
    found: dict[JourneyKey, set[str]] = {k: set() for k in wanted}
    if not wanted:
        return found
    rows = await conn.fetch(
        "SELECT s.tenant, s.customer_id, s.journey, s.step FROM journey_steps s "
        "JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(t, c, j) "
        "ON s.tenant = k.t AND s.customer_id = k.c AND s.journey = k.j",
        [k[0] for k in wanted],
        [k[1] for k in wanted],
        [k[2] for k in wanted],
    )
    for r in rows:
        found[(r["tenant"], r["customer_id"], r["journey"])].add(r["step"])
    return found


async def mark_steps(conn: asyncpg.Connection, rows: Sequence[tuple[str, str, str, str, datetime, str]]) -> None:
    if not rows:
        return
    await conn.execute(
        "INSERT INTO journey_steps (tenant, customer_id, journey, step, decided_at, outcome) "
        "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[]) "
        "ON CONFLICT DO NOTHING",
        *[[r[i] for r in rows] for i in range(6)],
    )


async def resend_failed(
    conn: asyncpg.Connection, tenant: str, notification_ids: Sequence[str] | None, *, since: datetime | None = None
) -> list[str]:
    """An operator's explicit resend of messages that finally failed (never of delivered ones): back to
    'pending', attempts from zero, due now. `notification_ids` None = every failed one (since a time)."""
    rows = await conn.fetch(
        """
        UPDATE deliveries SET status = 'pending', attempts = 0, due_at = now(), finished_at = NULL,
                              last_error = 'resend requested'
        WHERE tenant = $1 AND status = 'failed'
          AND ($2::text[] IS NULL OR notification_id = ANY($2::text[]))
          AND ($3::timestamptz IS NULL OR finished_at >= $3)
        RETURNING notification_id
        """,
        tenant,
        list(notification_ids) if notification_ids is not None else None,
        since,
    )
    if rows:
        await conn.execute("SELECT pg_notify('loyalty_notifier_deliveries', '')")
    return sorted(r["notification_id"] for r in rows)


async def prune(conn: asyncpg.Connection, older_than: timedelta, contacts_older_than: timedelta) -> dict[str, int]:
    """Forget finished deliveries (with their attempts) and suppressions older than the replay window (the
    input topics' retention: a replay cannot bring their source events back), and contact-log entries older
    than the longest budget or cap window."""
    removed = {}
    for table, column, extra, age in (
        ("deliveries", "finished_at", "AND status <> 'pending' AND status <> 'sending'", older_than),
        ("suppressions", "at", "", older_than),
        ("contact_log", "sent_at", "", contacts_older_than),
    ):
        status = await conn.execute(f"DELETE FROM {table} WHERE {column} < now() - $1::interval {extra}", age)
        removed[table] = int(status.split()[-1])
    return removed
