"""Postgres access for the notifier (schema `notifier`). Multi-row statements: one round trip per table per
batch on the hot path. Rows ↔ domain objects conversion lives here too."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from loyalty_kit.bulk import insert_rows, typed_columns

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


_CUSTOMER_COLUMNS = typed_columns(
    "tenant text, customer_id text, name text, locale text, time_zone text, contacts jsonb, consents jsonb, "
    "channel_consents jsonb, registered_at timestamptz, tier text, last_purchase jsonb"
)


async def save_customers(conn: asyncpg.Connection, rows: dict[CustomerKey, CustomerRow]) -> None:
    # A new row's updated_at is the column default, now().
    await insert_rows(
        conn,
        "customers",
        _CUSTOMER_COLUMNS,
        [
            (
                tenant,
                customer_id,
                r.profile.name,
                r.profile.locale,
                r.profile.timezone,
                json.dumps({ch.value: v for ch, v in r.profile.contacts.items()}),
                _consents_json(dict(r.profile.consents), lambda c: c.value),
                _consents_json(dict(r.profile.channel_consents), lambda k: f"{k[0].value}/{k[1].value}"),
                r.profile.registered_at,
                r.tier,
                json.dumps(r.last_purchase) if r.last_purchase is not None else None,
            )
            for (tenant, customer_id), r in sorted(rows.items())
        ],
        on_conflict="(tenant, customer_id) DO UPDATE SET "
        "name = EXCLUDED.name, locale = EXCLUDED.locale, time_zone = EXCLUDED.time_zone, "
        "contacts = EXCLUDED.contacts, consents = EXCLUDED.consents, "
        "channel_consents = EXCLUDED.channel_consents, registered_at = EXCLUDED.registered_at, "
        "tier = EXCLUDED.tier, last_purchase = EXCLUDED.last_purchase, updated_at = now()",
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


_DELIVERY_COLUMNS = typed_columns(
    "tenant text, customer_id text, notification_id text, source_event_id text, source_event_type text, "
    "channel text, recipient text, endpoint_id text, category text, template text, locale text, time_zone text, "
    "content jsonb, fallbacks jsonb, journey_step text, due_at timestamptz, source_time timestamptz, "
    "traceparent text"
)


async def insert_deliveries(conn: asyncpg.Connection, rows: Sequence[NewDelivery]) -> int:
    """Planned messages; a (source event, recipient, channel) already planned is left alone (never twice)."""
    inserted = await insert_rows(
        conn,
        "deliveries",
        _DELIVERY_COLUMNS,
        [
            (
                r.tenant,
                r.customer_id,
                r.notification_id,
                r.source_event_id,
                r.source_event_type,
                r.channel.value,
                r.recipient,
                r.endpoint_id,
                r.category.value,
                r.template,
                r.locale,
                r.time_zone,
                json.dumps(r.content),
                json.dumps([[c.value, rcpt] for c, rcpt in r.fallbacks]),
                r.journey_step,
                r.due_at,
                r.source_time,
                r.traceparent,
            )
            for r in rows
        ],
        on_conflict="(tenant, source_event_id, recipient, channel) DO NOTHING",
        returning=["id"],
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
    await insert_rows(
        conn,
        "delivery_attempts",
        typed_columns("delivery_id bigint, attempt int, ok bool, failure_kind text, status_code int, detail text"),
        [
            (a.delivery_id, a.attempt, a.ok, a.failure_kind, a.status_code, a.detail[:1000] if a.detail else None)
            for a in attempts
        ],
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
    inserted = await insert_rows(
        conn,
        "suppressions",
        typed_columns(
            "tenant text, customer_id text, source_event_id text, source_event_type text, template text, "
            "category text, channel text, reason text, detail text"
        ),
        [
            (
                r.tenant,
                r.customer_id,
                r.source_event_id,
                r.source_event_type,
                r.template,
                r.category.value if r.category else None,
                r.channel.value if r.channel else None,
                r.reason,
                r.detail[:500],
            )
            for r in rows
        ],
        on_conflict="(tenant, source_event_id, customer_id, reason) DO NOTHING",
        returning=["source_event_id", "customer_id", "reason"],
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
    await insert_rows(
        conn,
        "contact_log",
        typed_columns("tenant text, customer_id text, source_event_id text, category text, sent_at timestamptz"),
        [(tenant, customer, event, category.value, at) for tenant, customer, event, category, at in rows],
        on_conflict="DO NOTHING",
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
    # A new row's changed_at is the column default, now().
    await insert_rows(
        conn,
        "webhook_endpoints",
        typed_columns("tenant text, endpoint_id text, consecutive_failures int, disabled bool"),
        [(tenant, endpoint, h.consecutive_failures, h.disabled) for (tenant, endpoint), h in sorted(health.items())],
        on_conflict="(tenant, endpoint_id) DO UPDATE SET consecutive_failures = EXCLUDED.consecutive_failures, "
        "disabled = EXCLUDED.disabled, changed_at = CASE WHEN webhook_endpoints.disabled <> EXCLUDED.disabled "
        "THEN now() ELSE webhook_endpoints.changed_at END",
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
    await insert_rows(
        conn,
        "journeys",
        typed_columns(
            "tenant text, customer_id text, journey text, started_at timestamptz, path text, "
            "path_entered_at timestamptz, exited_at timestamptz, exit_reason text"
        ),
        [
            (*key, s.started_at, s.path, s.path_entered_at, s.exited_at, s.exit_reason)
            for key, s in sorted(states.items())
        ],
        on_conflict="(tenant, customer_id, journey) DO UPDATE SET path = EXCLUDED.path, "
        "path_entered_at = EXCLUDED.path_entered_at, exited_at = EXCLUDED.exited_at, "
        "exit_reason = EXCLUDED.exit_reason",
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
    await insert_rows(
        conn,
        "journey_steps",
        typed_columns("tenant text, customer_id text, journey text, step text, decided_at timestamptz, outcome text"),
        rows,
        on_conflict="DO NOTHING",
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
