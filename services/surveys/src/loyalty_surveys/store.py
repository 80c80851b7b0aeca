"""Persistence of the surveys service: set-based SQL over its own schema (one statement per batch step).

Every write takes whole lists (``unnest`` of arrays), so a batch of N events costs a fixed number of round
trips, never N. Functions take an open connection: the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from loyalty_kit.bulk import column_arrays, insert_rows, typed_columns

from loyalty_surveys.domain import AccountEntry, CaseState, CaseStatus, ThemedFeedback

MIGRATIONS_DIR_NAME = "migrations"


# --- customers and orders ----------------------------------------------------------------------


async def upsert_customer_facts(
    conn: asyncpg.Connection,
    rows: Sequence[tuple[str, str, datetime | None, str | None, str | None]],
) -> None:
    """(tenant, customer, first_purchase_at, tier, locale): first purchase keeps the earliest; others overwrite."""
    await insert_rows(
        conn,
        "customers",
        typed_columns("tenant text, customer_id text, first_purchase_at timestamptz, tier text, locale text"),
        rows,
        on_conflict="""(tenant, customer_id) DO UPDATE SET
            first_purchase_at = LEAST(customers.first_purchase_at, EXCLUDED.first_purchase_at),
            tier = COALESCE(EXCLUDED.tier, customers.tier),
            locale = COALESCE(EXCLUDED.locale, customers.locale)""",
    )


async def first_purchases(conn: asyncpg.Connection, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], datetime]:
    """(tenant, customer) → earliest purchase seen so far (before this batch is applied)."""
    if not keys:
        return {}
    rows = await conn.fetch(
        """
        SELECT c.tenant, c.customer_id, c.first_purchase_at
        FROM customers c JOIN unnest($1::text[], $2::text[]) AS k(tenant, customer_id) USING (tenant, customer_id)
        WHERE c.first_purchase_at IS NOT NULL
        """,
        *column_arrays(keys, 2),
    )
    return {(r["tenant"], r["customer_id"]): r["first_purchase_at"] for r in rows}


async def insert_orders(
    conn: asyncpg.Connection, rows: Sequence[tuple[str, str, str, str | None, str | None, str | None]]
) -> None:
    await insert_rows(
        conn,
        "orders",
        typed_columns("tenant text, order_id text, customer_id text, store_id text, sales_channel text, category text"),
        rows,
        on_conflict="(tenant, order_id) DO NOTHING",
    )


@dataclass(frozen=True, slots=True)
class Segment:
    store_id: str | None = None
    sales_channel: str | None = None
    category: str | None = None
    tier: str | None = None


async def order_segments(conn: asyncpg.Connection, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Segment]:
    """(tenant, order id) → store, channel, category of the order."""
    if not keys:
        return {}
    rows = await conn.fetch(
        """
        SELECT o.tenant, o.order_id, o.store_id, o.sales_channel, o.category
        FROM orders o JOIN unnest($1::text[], $2::text[]) AS k(tenant, order_id) USING (tenant, order_id)
        """,
        *column_arrays(keys, 2),
    )
    return {(r["tenant"], r["order_id"]): Segment(r["store_id"], r["sales_channel"], r["category"]) for r in rows}


async def customer_tiers_and_locales(
    conn: asyncpg.Connection, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], tuple[str | None, str | None]]:
    if not keys:
        return {}
    rows = await conn.fetch(
        """
        SELECT c.tenant, c.customer_id, c.tier, c.locale
        FROM customers c JOIN unnest($1::text[], $2::text[]) AS k(tenant, customer_id) USING (tenant, customer_id)
        """,
        *column_arrays(list(set(keys)), 2),
    )
    return {(r["tenant"], r["customer_id"]): (r["tier"], r["locale"]) for r in rows}


# --- survey requests ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestRow:
    tenant: str
    request_id: str
    customer_id: str
    survey_id: str
    kind: str
    trigger: str
    trigger_event_id: str
    due_at: datetime
    status: str
    parent_feedback_id: str | None
    segment: Segment
    expires_at: datetime | None = None


_REQUEST_COLUMNS = typed_columns(
    "tenant text, request_id text, customer_id text, survey_id text, kind text, trigger text, trigger_event_id text, "
    "due_at timestamptz, status text, parent_feedback_id text, store_id text, sales_channel text, category text, "
    "tier text"
)


async def insert_pending_requests(conn: asyncpg.Connection, rows: Sequence[RequestRow]) -> set[tuple[str, str]]:
    """Insert planned surveys; returns the (tenant, request id) pairs that are new."""
    inserted = await insert_rows(
        conn,
        "survey_requests",
        _REQUEST_COLUMNS,
        [
            (
                r.tenant,
                r.request_id,
                r.customer_id,
                r.survey_id,
                r.kind,
                r.trigger,
                r.trigger_event_id,
                r.due_at,
                r.status,
                r.parent_feedback_id,
                r.segment.store_id,
                r.segment.sales_channel,
                r.segment.category,
                r.segment.tier,
            )
            for r in rows
        ],
        on_conflict="(tenant, request_id) DO NOTHING",
        returning=["tenant", "request_id"],
    )
    return {(r["tenant"], r["request_id"]) for r in inserted}


def _request_row(r: asyncpg.Record) -> RequestRow:
    return RequestRow(
        tenant=r["tenant"],
        request_id=r["request_id"],
        customer_id=r["customer_id"],
        survey_id=r["survey_id"],
        kind=r["kind"],
        trigger=r["trigger"],
        trigger_event_id=r["trigger_event_id"],
        due_at=r["due_at"],
        status=r["status"],
        parent_feedback_id=r["parent_feedback_id"],
        segment=Segment(r["store_id"], r["sales_channel"], r["category"], r["tier"]),
        expires_at=r["expires_at"],
    )


async def requests_by_id(
    conn: asyncpg.Connection, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], RequestRow]:
    if not keys:
        return {}
    rows = await conn.fetch(
        """
        SELECT r.* FROM survey_requests r
        JOIN unnest($1::text[], $2::text[]) AS k(tenant, request_id) USING (tenant, request_id)
        """,
        *column_arrays(list(set(keys)), 2),
    )
    return {(r["tenant"], r["request_id"]): _request_row(r) for r in rows}


async def last_requested(conn: asyncpg.Connection, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], datetime]:
    """(tenant, customer) → last survey sent, locking those customers' rows for the decision."""
    if not keys:
        return {}
    unique = sorted(set(keys))
    await insert_rows(
        conn, "customers", typed_columns("tenant text, customer_id text"), unique, on_conflict="DO NOTHING"
    )
    rows = await conn.fetch(
        """
        SELECT c.tenant, c.customer_id, c.last_requested_at
        FROM customers c JOIN unnest($1::text[], $2::text[]) AS k(tenant, customer_id) USING (tenant, customer_id)
        ORDER BY c.tenant, c.customer_id
        FOR UPDATE OF c
        """,
        *column_arrays(unique, 2),
    )
    return {(r["tenant"], r["customer_id"]): r["last_requested_at"] for r in rows if r["last_requested_at"]}


async def mark_requested(conn: asyncpg.Connection, rows: Sequence[tuple[str, str, datetime, datetime, str]]) -> None:
    """(tenant, request id, requested_at, expires_at, source event id); moves the customers' last-request time."""
    if not rows:
        return
    await conn.execute(
        """
        WITH sent AS (
            UPDATE survey_requests r SET status = 'requested', requested_at = u.requested_at,
                   expires_at = u.expires_at, source_event_id = u.source_event_id
            FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::text[])
                 AS u(tenant, request_id, requested_at, expires_at, source_event_id)
            WHERE r.tenant = u.tenant AND r.request_id = u.request_id
            RETURNING r.tenant, r.customer_id, u.requested_at
        ), latest AS (
            SELECT tenant, customer_id, max(requested_at) AS at FROM sent GROUP BY tenant, customer_id
        )
        INSERT INTO customers (tenant, customer_id, last_requested_at)
        SELECT tenant, customer_id, at FROM latest
        ON CONFLICT (tenant, customer_id) DO UPDATE
            SET last_requested_at = GREATEST(customers.last_requested_at, EXCLUDED.last_requested_at)
        """,
        *column_arrays(rows, 5),
    )


async def set_request_status(
    conn: asyncpg.Connection, keys: Sequence[tuple[str, str]], status: str, reason: str | None = None
) -> None:
    if not keys:
        return
    await conn.execute(
        """
        UPDATE survey_requests r SET status = $3, suppressed_reason = COALESCE($4, r.suppressed_reason)
        FROM unnest($1::text[], $2::text[]) AS k(tenant, request_id)
        WHERE r.tenant = k.tenant AND r.request_id = k.request_id
        """,
        *column_arrays(keys, 2),
        status,
        reason,
    )


async def mark_not_delivered(
    conn: asyncpg.Connection, rows: Sequence[tuple[str, str, str, str]]
) -> list[tuple[str, str]]:
    """(tenant, source event id, status, reason) from the notifier's reports about our requests.

    status is 'suppressed' (decided against on purpose: the contact budget, consent, frequency cap) or
    'undelivered' (tried and failed). An answer that already came in wins (the link reached them after all).
    """
    if not rows:
        return []
    updated = await conn.fetch(
        """
        UPDATE survey_requests r SET status = u.status, suppressed_reason = u.reason
        FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS u(tenant, source_event_id, status, reason)
        WHERE r.tenant = u.tenant AND r.source_event_id = u.source_event_id AND r.status = 'requested'
        RETURNING r.tenant, r.request_id
        """,
        *column_arrays(rows, 4),
    )
    return [(r["tenant"], r["request_id"]) for r in updated]


# --- answers, feedback, follow-ups -------------------------------------------------------------


async def claim_tokens(
    conn: asyncpg.Connection, rows: Sequence[tuple[str, str, datetime, str]]
) -> set[tuple[str, str]]:
    """(tenant, request id, used_at, via) → the pairs used for the first time now (single use).

    The claimed requests are marked answered in the same statement."""
    if not rows:
        return set()
    claimed = await conn.fetch(
        """
        WITH claimed AS (
            INSERT INTO used_tokens (tenant, request_id, used_at, via)
            SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[])
            ON CONFLICT DO NOTHING
            RETURNING tenant, request_id
        ), answered AS (
            UPDATE survey_requests r SET status = 'answered'
            FROM claimed c WHERE r.tenant = c.tenant AND r.request_id = c.request_id
        )
        SELECT tenant, request_id FROM claimed
        """,
        *column_arrays(rows, 4),
    )
    return {(r["tenant"], r["request_id"]) for r in claimed}


@dataclass(frozen=True, slots=True)
class FeedbackRow:
    tenant: str
    feedback_id: str
    request_id: str
    customer_id: str
    survey_id: str
    kind: str
    score: int
    comment: str | None
    themes: tuple[str, ...]
    sentiment: str | None
    answered_at: datetime
    channel: str
    segment: Segment


async def insert_feedback(conn: asyncpg.Connection, rows: Sequence[FeedbackRow]) -> None:
    if not rows:
        return
    data = [
        (
            f.tenant,
            f.feedback_id,
            f.request_id,
            f.customer_id,
            f.survey_id,
            f.kind,
            f.score,
            f.comment,
            # arrays of arrays cannot be unnested into text[] cells; themes travel as one delimited string
            "\x1f".join(f.themes),
            f.sentiment,
            f.answered_at,
            f.channel,
            f.segment.store_id,
            f.segment.sales_channel,
            f.segment.category,
            f.segment.tier,
        )
        for f in rows
    ]
    await conn.execute(
        """
        INSERT INTO feedback (tenant, feedback_id, request_id, customer_id, survey_id, kind, score, comment, themes,
                              sentiment, answered_at, channel, store_id, sales_channel, category, tier)
        SELECT tenant, feedback_id, request_id, customer_id, survey_id, kind, score, comment,
               CASE WHEN themes = '' THEN '{}'::text[] ELSE string_to_array(themes, E'\\x1f') END,
               sentiment, answered_at, channel, store_id, sales_channel, category, tier
        FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int[], $8::text[],
                    $9::text[], $10::text[], $11::timestamptz[], $12::text[], $13::text[], $14::text[], $15::text[],
                    $16::text[])
             AS f(tenant, feedback_id, request_id, customer_id, survey_id, kind, score, comment, themes, sentiment,
                  answered_at, channel, store_id, sales_channel, category, tier)
        ON CONFLICT DO NOTHING
        """,
        *column_arrays(data, 16),
    )


async def feedback_by_id(
    conn: asyncpg.Connection, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], asyncpg.Record]:
    if not keys:
        return {}
    rows = await conn.fetch(
        """
        SELECT f.* FROM feedback f
        JOIN unnest($1::text[], $2::text[]) AS k(tenant, feedback_id) USING (tenant, feedback_id)
        """,
        *column_arrays(list(set(keys)), 2),
    )
    return {(r["tenant"], r["feedback_id"]): r for r in rows}


async def claim_follow_ups(
    conn: asyncpg.Connection, rows: Sequence[tuple[str, str, str, datetime]]
) -> set[tuple[str, str]]:
    """(tenant, feedback id, follow-up request id, at) → feedback ids whose follow-up is claimed now (once)."""
    claimed = await insert_rows(
        conn,
        "follow_ups",
        typed_columns("tenant text, feedback_id text, request_id text, requested_at timestamptz"),
        rows,
        on_conflict="DO NOTHING",
        returning=["tenant", "feedback_id"],
    )
    return {(r["tenant"], r["feedback_id"]) for r in claimed}


# --- cases -------------------------------------------------------------------------------------


async def insert_cases(
    conn: asyncpg.Connection, rows: Sequence[tuple[str, str, str, str, str, int, datetime, datetime]]
) -> set[tuple[str, str]]:
    """(tenant, case, feedback, customer, queue, score, opened_at, deadline_at) → newly opened cases."""
    opened = await insert_rows(
        conn,
        "cases",
        typed_columns(
            "tenant text, case_id text, feedback_id text, customer_id text, queue text, score int, "
            "opened_at timestamptz, deadline_at timestamptz"
        ),
        rows,
        constants={"status": ("text", "open")},
        on_conflict="DO NOTHING",
        returning=["tenant", "case_id"],
    )
    return {(r["tenant"], r["case_id"]) for r in opened}


async def cases_by_id(conn: asyncpg.Connection, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], CaseState]:
    if not keys:
        return {}
    rows = await conn.fetch(
        """
        SELECT c.* FROM cases c
        JOIN unnest($1::text[], $2::text[]) AS k(tenant, case_id) USING (tenant, case_id)
        ORDER BY c.tenant, c.case_id
        FOR UPDATE OF c
        """,
        *column_arrays(list(set(keys)), 2),
    )
    return {
        (r["tenant"], r["case_id"]): CaseState(
            case_id=r["case_id"],
            customer_id=r["customer_id"],
            status=CaseStatus(r["status"]),
            opened_at=r["opened_at"],
            deadline_at=r["deadline_at"],
            breached=r["breached"],
            queue=r["queue"],
        )
        for r in rows
    }


async def mark_breached(conn: asyncpg.Connection, keys: Sequence[tuple[str, str]]) -> None:
    if not keys:
        return
    await conn.execute(
        """
        UPDATE cases c SET breached = true
        FROM unnest($1::text[], $2::text[]) AS k(tenant, case_id)
        WHERE c.tenant = k.tenant AND c.case_id = k.case_id
        """,
        *column_arrays(keys, 2),
    )


async def resolve_cases(
    conn: asyncpg.Connection, rows: Sequence[tuple[str, str, datetime, str, int, int, bool]]
) -> None:
    """(tenant, case, resolved_at, resolved_by, seconds, business seconds, within deadline)."""
    if not rows:
        return
    await conn.execute(
        """
        UPDATE cases c SET status = 'resolved', resolved_at = u.resolved_at, resolved_by = u.resolved_by,
               seconds_to_resolve = u.seconds, business_seconds_to_resolve = u.business_seconds,
               within_deadline = u.within_deadline
        FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::bigint[], $6::bigint[], $7::bool[])
             AS u(tenant, case_id, resolved_at, resolved_by, seconds, business_seconds, within_deadline)
        WHERE c.tenant = u.tenant AND c.case_id = u.case_id
        """,
        *column_arrays(rows, 7),
    )


async def nps_counts(conn: asyncpg.Connection, tenant: str, start: datetime, end: datetime) -> tuple[int, int, int]:
    """(promoters, passives, detractors) of NPS answers in (start, end]."""
    row = await conn.fetchrow(
        """
        SELECT count(*) FILTER (WHERE sentiment = 'promoter') AS promoters,
               count(*) FILTER (WHERE sentiment = 'passive') AS passives,
               count(*) FILTER (WHERE sentiment = 'detractor') AS detractors
        FROM feedback WHERE tenant = $1 AND kind = 'nps' AND answered_at > $2 AND answered_at <= $3
        """,
        tenant,
        start,
        end,
    )
    assert row is not None
    return row["promoters"], row["passives"], row["detractors"]


# --- you said, we did --------------------------------------------------------------------------


async def themed_feedback(
    conn: asyncpg.Connection, tenant: str, theme: str, start: datetime, end: datetime
) -> list[ThemedFeedback]:
    """Feedback on a theme in a window (the candidates; the domain picks the recipients)."""
    rows = await conn.fetch(
        """
        SELECT customer_id, themes, answered_at FROM feedback
        WHERE tenant = $1 AND themes @> ARRAY[$2::text] AND answered_at BETWEEN $3 AND $4
        """,
        tenant,
        theme,
        start,
        end,
    )
    return [ThemedFeedback(r["customer_id"], tuple(r["themes"]), r["answered_at"]) for r in rows]


async def already_told(conn: asyncpg.Connection, tenant: str, improvement_id: str) -> set[str]:
    rows = await conn.fetch(
        "SELECT customer_id FROM improvement_notices WHERE tenant = $1 AND improvement_id = $2", tenant, improvement_id
    )
    return {r["customer_id"] for r in rows}


async def record_notices(
    conn: asyncpg.Connection, tenant: str, improvement_id: str, theme: str, customers: Sequence[str], at: datetime
) -> set[str]:
    inserted = await insert_rows(
        conn,
        "improvement_notices",
        [("customer_id", "text")],
        [(c,) for c in customers],
        constants={
            "tenant": ("text", tenant),
            "improvement_id": ("text", improvement_id),
            "theme": ("text", theme),
            "told_at": ("timestamptz", at),
        },
        on_conflict="DO NOTHING",
        returning=["customer_id"],
    )
    return {r["customer_id"] for r in inserted}


# --- loyalty account ---------------------------------------------------------------------------


async def lock_balances(
    conn: asyncpg.Connection, keys: Iterable[tuple[str, str]], opening: dict[str, int]
) -> dict[tuple[str, str], int]:
    """Current balances of these customers (new customers get their tenant's opening balance), row-locked.

    One statement: the no-op DO UPDATE takes the row lock and returns the existing balance; rows go in
    (tenant, customer) order so concurrent transactions lock in the same order."""
    unique = sorted(set(keys))
    if not unique:
        return {}
    rows = await insert_rows(
        conn,
        "customers",
        typed_columns("tenant text, customer_id text, balance int"),
        [(t, c, opening.get(t, 0)) for t, c in unique],
        on_conflict="(tenant, customer_id) DO UPDATE SET balance = customers.balance",
        returning=["tenant", "customer_id", "balance"],
    )
    return {(r["tenant"], r["customer_id"]): r["balance"] for r in rows}


async def book_entries(
    conn: asyncpg.Connection, rows: Sequence[tuple[str, str, str, AccountEntry, datetime]]
) -> set[tuple[str, str]]:
    """(tenant, entry id, customer, entry, at) → the entry ids booked now (replays book nothing twice)."""
    booked = await insert_rows(
        conn,
        "account_entries",
        typed_columns("tenant text, entry_id text, customer_id text, fact text, amount int, booked_at timestamptz"),
        [(t, e_id, c, e.fact, e.amount, at) for t, e_id, c, e, at in rows],
        on_conflict="DO NOTHING",
        returning=["tenant", "entry_id"],
    )
    return {(r["tenant"], r["entry_id"]) for r in booked}


async def set_balances(conn: asyncpg.Connection, rows: Sequence[tuple[str, str, int, bool]]) -> None:
    if not rows:
        return
    await conn.execute(
        """
        UPDATE customers c SET balance = u.balance, at_risk = u.at_risk
        FROM unnest($1::text[], $2::text[], $3::int[], $4::bool[]) AS u(tenant, customer_id, balance, at_risk)
        WHERE c.tenant = u.tenant AND c.customer_id = u.customer_id
        """,
        *column_arrays(rows, 4),
    )
