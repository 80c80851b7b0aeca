"""Postgres access for the tiers schema: multi-row reads and writes per batch, never one query per event."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg

from loyalty_tiers.domain import (
    Entry,
    Fact,
    PendingDowngrade,
    Snapshot,
    TierState,
    fact_from_json,
    fact_to_json,
)
from loyalty_tiers.program import TiersProgram


class ProgramVersionConflict(Exception):
    """A program version's content changed after it was registered: the retailer must bump the version."""


@dataclass(frozen=True, slots=True)
class CustomerRow:
    customer_id: str
    program_version: int
    tier: str
    since: datetime | None
    reason: str
    points: int
    as_of: datetime
    pending_to: str | None
    pending_effective_at: datetime | None
    pending_notice_at: datetime | None
    milestones: tuple[str, ...]
    notice_for: datetime | None
    next_check_at: datetime | None
    # The customer's document: every fact so far, and the current ledger entries under ``entries_version``.
    facts: tuple[Fact, ...] = ()
    entries: dict[str, EntryKey] = field(default_factory=dict)
    entries_version: int = 0
    # The stored JSON of the first ``len(facts_json)`` facts, as loaded: written back as it is instead of
    # serialising every old fact again on each event (facts are only ever appended).
    facts_json: tuple[dict[str, Any], ...] = field(default=(), compare=False, repr=False)

    def snapshot(self) -> Snapshot:
        return Snapshot(self.tier, frozenset(Decimal(m) for m in self.milestones), self.notice_for)

    @staticmethod
    def of(
        customer_id: str,
        program: TiersProgram,
        state: TierState,
        snapshot: Snapshot,
        facts: Sequence[Fact] = (),
        entries: dict[str, EntryKey] | None = None,
        facts_json: tuple[dict[str, Any], ...] = (),
    ) -> CustomerRow:
        """``facts_json``: the stored JSON of a prefix of ``facts`` (what ``load_customers`` read)."""
        pending: PendingDowngrade | None = state.pending
        return CustomerRow(
            customer_id=customer_id,
            program_version=program.version,
            tier=program.ladder[state.tier].id,
            since=state.since,
            reason=state.reason,
            points=state.points,
            as_of=state.as_of,
            pending_to=program.ladder[pending.to_tier].id if pending else None,
            pending_effective_at=pending.effective_at if pending else None,
            pending_notice_at=pending.notice_at if pending else None,
            milestones=tuple(sorted(str(m) for m in snapshot.milestones)),
            notice_for=snapshot.notice_for,
            next_check_at=state.next_check_at,
            facts=tuple(facts),
            entries=entries if entries is not None else {},
            entries_version=program.version,
            facts_json=facts_json[: len(facts)],
        )

    def doc_json(self) -> str:
        return _DOC_ENCODER.encode({
            "version": self.entries_version,
            "facts": [*self.facts_json, *(fact_to_json(f) for f in self.facts[len(self.facts_json):])],
            "entries": {k: list(v) for k, v in self.entries.items()},
        })


# One encoder for every document: ``json.dumps(..., separators=...)`` builds a new encoder per call.
_DOC_ENCODER = json.JSONEncoder(separators=(",", ":"))

# (revision, points, counts_from, expires_at): the parts of an entry whose change makes a new revision;
# times in epoch microseconds (exact, offset-independent).
EntryKey = tuple[int, int, int, int]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros(moment: datetime) -> int:
    # Same value as ``(moment - _EPOCH) // timedelta(microseconds=1)`` without a timedelta division.
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def entry_key(revision: int, entry: Entry) -> EntryKey:
    return (revision, entry.points, micros(entry.counts_from), micros(entry.expires_at))


_CUSTOMER_COLUMNS = (
    "customer_id, program_version, tier, since, reason, points, as_of, pending_to, pending_effective_at, "
    "pending_notice_at, milestones, notice_for, next_check_at"
)


def _customer(row: asyncpg.Record) -> CustomerRow:
    # Unpacked by position (the SELECT lists _CUSTOMER_COLUMNS, then doc): no per-row dict of the record.
    (customer_id, program_version, tier, since, reason, points, as_of, pending_to, pending_effective_at,
     pending_notice_at, milestones, notice_for, next_check_at, doc_text) = row
    doc = json.loads(doc_text)
    stored_facts = doc["facts"]
    return CustomerRow(
        customer_id=customer_id, program_version=program_version, tier=tier, since=since, reason=reason,
        points=points, as_of=as_of, pending_to=pending_to, pending_effective_at=pending_effective_at,
        pending_notice_at=pending_notice_at, milestones=tuple(milestones), notice_for=notice_for,
        next_check_at=next_check_at,
        facts=tuple([fact_from_json(f) for f in stored_facts]),
        entries={k: tuple(v) for k, v in doc["entries"].items()},
        entries_version=doc["version"],
        facts_json=tuple(stored_facts),
    )


async def lock_customers(conn: asyncpg.Connection, tenant: str, customers: Sequence[str]) -> None:
    """Transaction-scoped advisory locks, taken in sorted order: a check timer, a recalculation and batches
    from different topics (possibly on other replicas) that touch the same customer — even a brand-new one
    without a status row — run one after the other. Same order everywhere, so they cannot deadlock."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || c, 0)) "
        "FROM unnest($2::text[]) AS c ORDER BY c",
        tenant, sorted(customers),
    )


async def load_customers(conn: asyncpg.Connection, tenant: str, customers: Sequence[str]) -> dict[str, CustomerRow]:
    rows = await conn.fetch(
        f"SELECT {_CUSTOMER_COLUMNS}, doc::text AS doc FROM customers "
        "WHERE tenant = $1 AND customer_id = ANY($2::text[])",
        tenant, list(customers),
    )
    parsed = [_customer(r) for r in rows]
    return {c.customer_id: c for c in parsed}


async def load_customer(conn: asyncpg.Connection, tenant: str, customer_id: str) -> CustomerRow | None:
    return (await load_customers(conn, tenant, [customer_id])).get(customer_id)


async def upsert_customers(conn: asyncpg.Connection, tenant: str, rows: Sequence[CustomerRow]) -> None:
    if not rows:
        return
    await conn.execute(
        f"""
        INSERT INTO customers (tenant, {_CUSTOMER_COLUMNS}, doc, updated_at)
        SELECT $1, c, v, t, s, r, p, a, pt, pe, pn, m::text[], nf, nc, d::jsonb, now() FROM unnest(
            $2::text[], $3::int[], $4::text[], $5::timestamptz[], $6::text[], $7::int[], $8::timestamptz[],
            $9::text[], $10::timestamptz[], $11::timestamptz[], $12::text[], $13::timestamptz[], $14::timestamptz[],
            $15::text[]
        ) AS u(c, v, t, s, r, p, a, pt, pe, pn, m, nf, nc, d)
        ON CONFLICT (tenant, customer_id) DO UPDATE SET
            program_version = EXCLUDED.program_version, tier = EXCLUDED.tier, since = EXCLUDED.since,
            reason = EXCLUDED.reason, points = EXCLUDED.points, as_of = EXCLUDED.as_of,
            pending_to = EXCLUDED.pending_to, pending_effective_at = EXCLUDED.pending_effective_at,
            pending_notice_at = EXCLUDED.pending_notice_at, milestones = EXCLUDED.milestones,
            notice_for = EXCLUDED.notice_for, next_check_at = EXCLUDED.next_check_at, doc = EXCLUDED.doc,
            updated_at = now()
        """,
        tenant,
        [r.customer_id for r in rows], [r.program_version for r in rows], [r.tier for r in rows],
        [r.since for r in rows], [r.reason for r in rows], [r.points for r in rows], [r.as_of for r in rows],
        [r.pending_to for r in rows], [r.pending_effective_at for r in rows], [r.pending_notice_at for r in rows],
        # unnest flattens arrays of arrays, so milestones travel as a '{...}' literal per row.
        ["{" + ",".join(r.milestones) + "}" for r in rows],
        [r.notice_for for r in rows], [r.next_check_at for r in rows], [r.doc_json() for r in rows],
    )


_ENTRY_COLUMNS = "entry_id, activity, points, counts_from, expires_at, rule, ref"


def _entry(r: asyncpg.Record) -> Entry:
    return Entry(r["entry_id"], r["activity"], r["points"], r["counts_from"], r["expires_at"], r["rule"], r["ref"])


async def customer_ledger(
    conn: asyncpg.Connection, tenant: str, customer_id: str, version: int, limit: int
) -> list[tuple[int, Entry, datetime]]:
    """One customer's current entries (latest revision), newest first, with when they were recorded."""
    rows = await conn.fetch(
        f"SELECT * FROM (SELECT DISTINCT ON (entry_id) revision, recorded_at, {_ENTRY_COLUMNS} FROM ledger "
        "WHERE tenant = $1 AND customer_id = $2 AND program_version = $3 ORDER BY entry_id, revision DESC) x "
        "ORDER BY counts_from DESC, entry_id LIMIT $4",
        tenant, customer_id, version, limit,
    )
    return [(r["revision"], _entry(r), r["recorded_at"]) for r in rows]


async def append_ledger(
    conn: asyncpg.Connection, tenant: str, version: int, rows: Sequence[tuple[str, int, Entry]]
) -> None:
    """Append (customer_id, revision, entry) rows."""
    if not rows:
        return
    await conn.execute(
        "INSERT INTO ledger (tenant, program_version, customer_id, revision, entry_id, activity, points, "
        "counts_from, expires_at, rule, ref) SELECT $1, $2, u.* FROM unnest($3::text[], $4::int[], $5::text[], "
        "$6::text[], $7::int[], $8::timestamptz[], $9::timestamptz[], $10::text[], $11::text[]) AS u",
        tenant, version,
        [c for c, _, _ in rows], [rev for _, rev, _ in rows], [e.entry_id for _, _, e in rows],
        [e.activity for _, _, e in rows], [e.points for _, _, e in rows], [e.counts_from for _, _, e in rows],
        [e.expires_at for _, _, e in rows], [e.rule for _, _, e in rows], [e.ref for _, _, e in rows],
    )


@dataclass(frozen=True, slots=True)
class HistoryRow:
    customer_id: str
    from_tier: str
    to_tier: str
    direction: str
    reason: str
    effective_at: datetime
    points: int
    program_version: int


async def insert_history(conn: asyncpg.Connection, tenant: str, rows: Sequence[HistoryRow]) -> None:
    if not rows:
        return
    await conn.execute(
        "INSERT INTO tier_history (tenant, customer_id, from_tier, to_tier, direction, reason, effective_at, "
        "points, program_version) SELECT $1, u.* FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], "
        "$6::text[], $7::timestamptz[], $8::int[], $9::int[]) AS u",
        tenant,
        [r.customer_id for r in rows], [r.from_tier for r in rows], [r.to_tier for r in rows],
        [r.direction for r in rows], [r.reason for r in rows], [r.effective_at for r in rows],
        [r.points for r in rows], [r.program_version for r in rows],
    )


async def history(conn: asyncpg.Connection, tenant: str, customer_id: str, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT from_tier, to_tier, direction, reason, effective_at, points, program_version, recorded_at "
        "FROM tier_history WHERE tenant = $1 AND customer_id = $2 ORDER BY id DESC LIMIT $3",
        tenant, customer_id, limit,
    )


async def distribution(conn: asyncpg.Connection, tenant: str) -> dict[str, int]:
    rows = await conn.fetch("SELECT tier, count(*) AS n FROM customers WHERE tenant = $1 GROUP BY tier", tenant)
    return {r["tier"]: r["n"] for r in rows}


async def register_program(conn: asyncpg.Connection, tenant: str, program: TiersProgram) -> bool:
    """Record a program version; True when new. Raises ProgramVersionConflict if its content changed."""
    fingerprint = program.fingerprint()
    inserted = await conn.fetchval(
        "INSERT INTO program_versions (tenant, version, fingerprint, program) VALUES ($1, $2, $3, $4::jsonb) "
        "ON CONFLICT (tenant, version) DO NOTHING RETURNING true",
        tenant, program.version, fingerprint, program.model_dump_json(),
    )
    if inserted:
        return True
    known = await conn.fetchval(
        "SELECT fingerprint FROM program_versions WHERE tenant = $1 AND version = $2", tenant, program.version
    )
    if known != fingerprint:
        raise ProgramVersionConflict(
            f"tenant {tenant}: tiers.version {program.version} was already used for a different tiers section; "
            f"changing thresholds or rules needs a new version (e.g. {program.version + 1}), "
            "then `loyalty tiers recalc` replays ledgers under it"
        )
    return False


async def customers_to_recalculate(
    conn: asyncpg.Connection, tenant: str, version: int, after: str, limit: int, force: bool
) -> list[str]:
    rows = await conn.fetch(
        "SELECT customer_id FROM customers WHERE tenant = $1 AND customer_id > $2 "
        "AND ($5 OR program_version <> $3) ORDER BY customer_id LIMIT $4",
        tenant, after, version, limit, force,
    )
    return [r["customer_id"] for r in rows]
