"""Postgres access for the tiers schema: multi-row reads and writes per batch, never one query per event."""

from __future__ import annotations

from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from itertools import chain
from typing import Any

import asyncpg
from loyalty_kit.bulk import insert_rows, typed_columns
from pydantic_core import from_json, to_json

from loyalty_tiers.domain import (
    Community,
    Derivation,
    Entry,
    Fact,
    PendingDowngrade,
    Purchase,
    ReferralGrant,
    Review,
    Snapshot,
    SurveyAnswer,
    TierState,
    fact_from_json,
    fact_to_json,
    from_micros,
    micros,
    tier_positions,
)
from loyalty_tiers.program import TiersProgram


class ProgramVersionConflict(Exception):
    """A program version's content changed after it was registered: the retailer must bump the version."""


@dataclass(slots=True)  # not frozen: built twice per event, see the note in domain.py
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
    # The document: what the in-order fast path continues from (None: not stored, e.g. a row written before
    # migration 0004; the next event then takes the full re-derivation, which stores one).
    derivation: Derivation | None = None
    future: tuple[tuple[int, int], ...] = ()  # balance changes ahead of as_of (epoch micros, delta)
    pending_since: datetime | None = None  # when the pending downgrade's balance shortfall began
    # The customer's rewarded keys are in the rewarded table, not in the document (more than
    # REWARDED_INLINE of them); the fast path then probes the table for the keys its facts ask about.
    spilled: bool = False

    def snapshot(self) -> Snapshot:
        return Snapshot(self.tier, frozenset(Decimal(m) for m in self.milestones), self.notice_for)

    def state(self, program: TiersProgram) -> TierState | None:
        """The evaluated state this row stores, for ``domain.advance`` (None if it cannot be rebuilt)."""
        if self.derivation is None or self.program_version != program.version:
            return None
        ids = tier_positions(program)
        if self.tier not in ids or (self.pending_to is not None and self.pending_to not in ids):
            return None
        pending = None
        if self.pending_to is not None:
            if self.pending_since is None or self.pending_effective_at is None or self.pending_notice_at is None:
                return None
            pending = PendingDowngrade(ids[self.pending_to], self.pending_since, self.pending_effective_at,
                                       self.pending_notice_at)
        return TierState(self.as_of, ids[self.tier], self.since, self.reason, self.points, pending,
                         self.next_check_at, self.future)

    @staticmethod
    def of(
        customer_id: str,
        program: TiersProgram,
        state: TierState,
        snapshot: Snapshot,
        derivation: Derivation | None,
        spilled: bool = False,
    ) -> CustomerRow:
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
            milestones=tuple(sorted(str(m) for m in snapshot.milestones)) if snapshot.milestones else (),
            notice_for=snapshot.notice_for,
            next_check_at=state.next_check_at,
            derivation=derivation,
            future=state.future,
            pending_since=pending.since if pending else None,
            spilled=spilled,
        )

    def doc_json(self) -> str:
        """The status document, format 2 (see ``_customer`` for how formats are told apart)."""
        if self.derivation is None:
            return "{}"
        doc: dict[str, Any] = {
            "v": self.program_version,
            "d2": derivation_to_json(self.derivation, inline=not self.spilled),
            # Flat [time, delta, time, delta, ...]: one list instead of one per change (parse 15.9 -> 7.6 us
            # at 100 changes ahead, a frequent shopper's count).
            "f": list(chain.from_iterable(self.future)),
            "ps": micros(self.pending_since) if self.pending_since is not None else None,
        }
        if self.spilled:
            doc["sp"] = 1
        return _json(doc)


def _json(value: Any) -> str:
    """Compact JSON text. pydantic_core's encoder: ~5x ``json`` for these small documents (which builds an
    encoder per call); same compact text, except that non-ASCII is written as UTF-8 rather than escaped."""
    return to_json(value).decode()

# (revision, points, counts_from, expires_at): the parts of an entry whose change makes a new revision;
# times in epoch microseconds (exact, offset-independent).
EntryKey = tuple[int, int, int, int]


def entry_key(revision: int, entry: Entry) -> EntryKey:
    return (revision, entry.points, micros(entry.counts_from), micros(entry.expires_at))


def derivation_to_json(d: Derivation, inline: bool = True) -> dict[str, Any]:
    """Compact keys, empty parts left out (most customers have a few orders and nothing else).

    ``inline``: with the rewarded sets (orders, products, survey requests, activities, referral rewards);
    a customer with more than ``REWARDED_INLINE`` of them keeps them in the rewarded table instead."""
    out: dict[str, Any] = {"m": micros(d.member_since) if d.member_since is not None else None}
    if inline:
        if d.orders:
            out["o"] = d.orders
        if d.reviewed:
            out["r"] = d.reviewed
        if d.answered:
            out["a"] = sorted(d.answered)
        if d.activities:
            out["c"] = sorted(d.activities)
        if d.grants:
            out["g"] = sorted(d.grants)
    if d.open_orders:
        out["oo"] = sorted(d.open_orders)
    if d.open_rewards:
        out["or"] = sorted(d.open_rewards)
    if d.cap_day:
        out["cd"] = d.cap_day
    if d.cap_month:
        out["cm"] = d.cap_month
    return out


def derivation_from_json(data: dict[str, Any]) -> Derivation:
    m = data["m"]
    if len(data) == 2 and "o" in data:  # the common case: orders only
        return Derivation(from_micros(m) if m is not None else None, data["o"], {}, set(), set(), set(), set(),
                          set(), {}, {})
    get = data.get
    return Derivation(
        member_since=from_micros(m) if m is not None else None,
        orders=get("o") or {},
        reviewed=get("r") or {},
        answered=set(get("a") or ()),
        activities=set(get("c") or ()),
        grants=set(get("g") or ()),
        open_orders=set(get("oo") or ()),
        open_rewards=set(get("or") or ()),
        cap_day={k: (v[0], v[1]) for k, v in (get("cd") or {}).items()},
        cap_month={k: (v[0], v[1]) for k, v in (get("cm") or {}).items()},
    )


# --- what was rewarded once (migration 0007) ------------------------------------------------------------
#
# The sets grow by one id per rewarded fact for the customer's whole life. Up to REWARDED_INLINE of them ride
# in the status document (no extra I/O: most customers have a handful); beyond that the customer "spills":
# the keys move to the rewarded table and a batch probes only the keys its own facts ask about, so the
# per-event cost stops growing with the customer's history.

REWARDED_INLINE = 32

# (kind, key): ("o", order id), ("r", sku), ("a", survey request), ("c", activity), ("g", referral reward)
RewardedKey = tuple[str, str]


def rewarded_key(fact: Fact) -> RewardedKey | None:
    """The key a fact's once-only rule looks up (None: the fact has none, e.g. a refund)."""
    kind = type(fact)
    if kind is Purchase:
        return ("o", fact.order_id)  # type: ignore[union-attr]
    if kind is Review:
        return ("r", fact.sku)  # type: ignore[union-attr]
    if kind is SurveyAnswer:
        return ("a", fact.request_id)  # type: ignore[union-attr]
    if kind is Community:
        return ("c", fact.activity_id)  # type: ignore[union-attr]
    if kind is ReferralGrant:
        return ("g", fact.reward_id)  # type: ignore[union-attr]
    return None


def add_rewarded(d: Derivation, kind: str, key: str, event_id: str | None) -> None:
    if kind == "o":
        d.orders[key] = event_id or ""
    elif kind == "r":
        d.reviewed[key] = event_id or ""
    elif kind == "a":
        d.answered.add(key)
    elif kind == "c":
        d.activities.add(key)
    elif kind == "g":
        d.grants.add(key)


def rewarded_rows(d: Derivation) -> list[tuple[str, str, str | None]]:
    """Every (kind, key, event id) the derivation holds."""
    rows: list[tuple[str, str, str | None]] = [("o", k, v) for k, v in d.orders.items()]
    rows += [("r", k, v) for k, v in d.reviewed.items()]
    rows += [("a", k, None) for k in d.answered]
    rows += [("c", k, None) for k in d.activities]
    rows += [("g", k, None) for k in d.grants]
    return rows


def rewarded_event(d: Derivation, kind: str, key: str) -> tuple[bool, str | None]:
    """Whether the derivation holds this key, and the event that booked it (orders and products)."""
    if kind == "o":
        event_id = d.orders.get(key)
        return event_id is not None, event_id
    if kind == "r":
        event_id = d.reviewed.get(key)
        return event_id is not None, event_id
    if kind == "a":
        return key in d.answered, None
    if kind == "c":
        return key in d.activities, None
    return key in d.grants, None


def rewarded_size(d: Derivation) -> int:
    return len(d.orders) + len(d.reviewed) + len(d.answered) + len(d.activities) + len(d.grants)


@dataclass(frozen=True, slots=True)
class RewardedWrite:
    """Where a customer's rewarded keys go after a batch: ``spilled`` (the table holds them, the document
    none), ``rows`` to insert, ``replace`` (delete the customer's table rows first)."""

    spilled: bool
    rows: list[tuple[str, str, str | None]]
    replace: bool


def rewarded_write(
    derivation: Derivation,
    partial: AbstractSet[RewardedKey] | None,
    was_spilled: bool,
    new_facts: Sequence[Fact],
) -> RewardedWrite:
    """Decide the storage of a customer's rewarded keys (pure; the handler and the tests share it).

    ``partial``: the keys the fast path probed from the table for a spilled customer (the derivation holds
    those plus what the new facts added); None: the derivation is complete (from the document, or a full
    re-derivation)."""
    if partial is not None:  # spilled: only the new facts' keys can be new
        rows: list[tuple[str, str, str | None]] = []
        written: set[RewardedKey] = set()
        for fact in new_facts:
            key = rewarded_key(fact)
            if key is not None and key not in partial and key not in written:
                held, event_id = rewarded_event(derivation, *key)
                if held:
                    written.add(key)
                    rows.append((key[0], key[1], event_id))
        return RewardedWrite(True, rows, False)
    if rewarded_size(derivation) > REWARDED_INLINE:  # spills now, or stays spilled after a full re-derivation
        return RewardedWrite(True, rewarded_rows(derivation), True)
    return RewardedWrite(False, [], was_spilled)  # inline (a spilled customer's table rows are dropped)


async def load_rewarded(
    conn: asyncpg.Connection, tenant: str, wanted: Sequence[tuple[str, str, str, None]]
) -> list[tuple[str, str, str, str | None]]:
    """The stored ``(customer, kind, key, event id)`` of these ``(customer, kind, key, None)``: one
    primary-key probe each, whatever the customers' history."""
    if not wanted:
        return []
    rows = await conn.fetch(
        "SELECT r.customer_id, r.kind, r.key, r.event_id FROM unnest($2::rewarded_row_in[]) AS w "
        "JOIN rewarded r ON r.tenant = $1 AND r.customer_id = w.customer_id AND r.kind = w.kind AND r.key = w.key",
        tenant, wanted,
    )
    return [tuple(r) for r in rows]  # type: ignore[misc]


async def write_rewarded(
    conn: asyncpg.Connection, tenant: str, rows: Sequence[tuple[str, str, str, str | None]],
    replace_for: Sequence[str] = (),
) -> None:
    """Insert rewarded ``(customer, kind, key, event id)``; ``replace_for``: customers whose keys are first
    deleted (a full re-derivation or recalculation writes the whole set again)."""
    if replace_for:
        await conn.execute("DELETE FROM rewarded WHERE tenant = $1 AND customer_id = ANY($2::text[])",
                           tenant, list(replace_for))
    if rows:
        await conn.execute(
            "INSERT INTO rewarded (tenant, customer_id, kind, key, event_id) "
            "SELECT $1, u.* FROM unnest($2::rewarded_row_in[]) AS u "
            "ON CONFLICT (tenant, customer_id, kind, key) DO UPDATE SET event_id = EXCLUDED.event_id",
            tenant, rows,
        )


_CUSTOMER_COLUMNS = (
    "customer_id, program_version, tier, since, reason, points, as_of, pending_to, pending_effective_at, "
    "pending_notice_at, milestones, notice_for, next_check_at"
)


def _customer(row: asyncpg.Record) -> CustomerRow:
    # Unpacked by position (the SELECT lists _CUSTOMER_COLUMNS, then doc): no per-row dict of the record.
    (customer_id, program_version, tier, since, reason, points, as_of, pending_to, pending_effective_at,
     pending_notice_at, milestones, notice_for, next_check_at, doc_text) = row
    doc = from_json(doc_text)
    # Formats are told apart by the derivation's key: "d2" (format 2, the flat "f" written now) or "d"
    # (format 1, "f" as [[time, delta], ...], still read). A document with neither (e.g. a newer format read
    # by an older replica during a rolling deploy) gives no derivation: that customer takes the full
    # re-derivation, which needs only the stored facts and the status columns, so it stays correct.
    stored = doc.get("d2")
    flat = stored is not None
    if not flat:
        stored = doc.get("d")
    derivation = None
    future: tuple[tuple[int, int], ...] = ()
    pending_since = None
    spilled = "sp" in doc
    if stored is not None and doc.get("v") == program_version:
        derivation = derivation_from_json(stored)
        if flat:
            changes = iter(doc["f"])
            future = tuple(zip(changes, changes, strict=True))
        else:
            future = tuple(map(tuple, doc["f"]))
        ps = doc.get("ps")
        pending_since = from_micros(ps) if ps is not None else None
    return CustomerRow(
        customer_id, program_version, tier, since, reason, points, as_of, pending_to, pending_effective_at,
        pending_notice_at, tuple(milestones) if milestones else (), notice_for, next_check_at,
        derivation, future, pending_since, spilled,
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
        f"SELECT {_CUSTOMER_COLUMNS}, doc FROM customers "
        "WHERE tenant = $1 AND customer_id = ANY($2::text[])",
        tenant, list(customers),
    )
    parsed = [_customer(r) for r in rows]
    return {c.customer_id: c for c in parsed}


async def load_customer(conn: asyncpg.Connection, tenant: str, customer_id: str) -> CustomerRow | None:
    return (await load_customers(conn, tenant, [customer_id])).get(customer_id)


def _customer_tuples(rows: Sequence[CustomerRow]) -> list[tuple[Any, ...]]:
    """One ``customer_row_in`` value per row (migration 0006): the whole batch is one composite array."""
    return [
        (r.customer_id, r.program_version, r.tier, r.since, r.reason, r.points, r.as_of, r.pending_to,
         r.pending_effective_at, r.pending_notice_at, list(r.milestones), r.notice_for, r.next_check_at,
         r.doc_json())
        for r in rows
    ]


async def upsert_customers(conn: asyncpg.Connection, tenant: str, rows: Sequence[CustomerRow]) -> None:
    """Insert status rows (a row that exists after all is updated)."""
    if not rows:
        return
    await conn.execute(
        f"""
        INSERT INTO customers (tenant, {_CUSTOMER_COLUMNS}, doc, updated_at)
        SELECT $1, u.*, now() FROM unnest($2::customer_row_in[]) AS u
        ON CONFLICT (tenant, customer_id) DO UPDATE SET
            program_version = EXCLUDED.program_version, tier = EXCLUDED.tier, since = EXCLUDED.since,
            reason = EXCLUDED.reason, points = EXCLUDED.points, as_of = EXCLUDED.as_of,
            pending_to = EXCLUDED.pending_to, pending_effective_at = EXCLUDED.pending_effective_at,
            pending_notice_at = EXCLUDED.pending_notice_at, milestones = EXCLUDED.milestones,
            notice_for = EXCLUDED.notice_for, next_check_at = EXCLUDED.next_check_at, doc = EXCLUDED.doc,
            updated_at = now()
        """,
        tenant, _customer_tuples(rows),
    )


async def update_customers(conn: asyncpg.Connection, tenant: str, rows: Sequence[CustomerRow]) -> None:
    """Update status rows read in this transaction (under the customers' locks): a plain UPDATE, which costs
    the server less than INSERT ... ON CONFLICT's speculative insertion into the primary key first."""
    if not rows:
        return
    await conn.execute(
        """
        UPDATE customers SET
            program_version = u.program_version, tier = u.tier, since = u.since, reason = u.reason,
            points = u.points, as_of = u.as_of, pending_to = u.pending_to,
            pending_effective_at = u.pending_effective_at, pending_notice_at = u.pending_notice_at,
            milestones = u.milestones, notice_for = u.notice_for, next_check_at = u.next_check_at, doc = u.doc,
            updated_at = now()
        FROM unnest($2::customer_row_in[]) AS u
        WHERE customers.tenant = $1 AND customers.customer_id = u.customer_id
        """,
        tenant, _customer_tuples(rows),
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


LedgerRow = tuple[str, int, Entry, Fact | None]  # customer_id, revision, entry, the new fact it records


async def append_ledger(conn: asyncpg.Connection, tenant: str, version: int, rows: Sequence[LedgerRow]) -> None:
    """Append ledger rows (one ``ledger_row_in`` array, migration 0006); a row that first records a fact
    carries the fact's body (what ``load_facts`` reads)."""
    if not rows:
        return
    await conn.execute(
        "INSERT INTO ledger (tenant, program_version, customer_id, revision, entry_id, activity, points, "
        "counts_from, expires_at, rule, ref, fact) SELECT $1, $2, u.* FROM unnest($3::ledger_row_in[]) AS u",
        tenant, version,
        [(c, rev, e.entry_id, e.activity, e.points, e.counts_from, e.expires_at, e.rule, e.ref,
          _json(fact_to_json(f)) if f is not None else None) for c, rev, e, f in rows],
    )


async def load_entry_keys(
    conn: asyncpg.Connection, tenant: str, version: int, customers: Sequence[str]
) -> dict[str, dict[str, EntryKey]]:
    """The current revision of every entry of these customers under ``version`` (full re-derivation only:
    a changed entry becomes a new revision, an unchanged one nothing)."""
    rows = await conn.fetch(
        "SELECT DISTINCT ON (customer_id, entry_id) customer_id, entry_id, revision, points, counts_from, "
        "expires_at FROM ledger WHERE tenant = $1 AND program_version = $2 AND customer_id = ANY($3::text[]) "
        "ORDER BY customer_id, entry_id, revision DESC",
        tenant, version, list(customers),
    )
    out: dict[str, dict[str, EntryKey]] = {}
    for customer_id, entry_id, revision, points, counts_from, expires_at in rows:
        out.setdefault(customer_id, {})[entry_id] = (revision, points, micros(counts_from), micros(expires_at))
    return out


async def load_facts(conn: asyncpg.Connection, tenant: str, customers: Sequence[str]) -> dict[str, list[Fact]]:
    """Every stored fact of these customers (the full re-derivation, the status API, recalculation): the
    bodies on their ledger rows, and those the facts table kept from before migration 0005."""
    rows = await conn.fetch(
        "SELECT customer_id, fact FROM ledger WHERE tenant = $1 AND customer_id = ANY($2::text[]) "
        "AND fact IS NOT NULL UNION ALL "
        "SELECT customer_id, body FROM facts WHERE tenant = $1 AND customer_id = ANY($2::text[])",
        tenant, list(customers),
    )
    out: dict[str, dict[str, Fact]] = {}
    for customer_id, body in rows:
        fact = fact_from_json(from_json(body))
        out.setdefault(customer_id, {}).setdefault(fact.event_id, fact)
    return {c: list(facts.values()) for c, facts in out.items()}


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


_HISTORY_COLUMNS = typed_columns(
    "customer_id text, from_tier text, to_tier text, direction text, reason text, effective_at timestamptz, "
    "points int, program_version int"
)


async def insert_history(conn: asyncpg.Connection, tenant: str, rows: Sequence[HistoryRow]) -> None:
    await insert_rows(
        conn, "tier_history", _HISTORY_COLUMNS,
        [(r.customer_id, r.from_tier, r.to_tier, r.direction, r.reason, r.effective_at, r.points,
          r.program_version) for r in rows],
        constants={"tenant": ("text", tenant)},
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
