"""The handler over real Postgres: fast-path and full re-derivation batches interleaved give what re-deriving
every fact gives, and the stored facts (on ledger rows) and entry revisions are what the slow path needs."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from loyalty_kit import migrations
from loyalty_kit.db import create_pool
from loyalty_kit.effects import EffectContext
from loyalty_kit.testing import fresh_database
from loyalty_tiers import domain, store
from loyalty_tiers.app import MIGRATIONS_DIR
from loyalty_tiers.handlers import TenantRules, apply_customers
from tiers_factories import at, program, purchase, refund, review, survey

pytestmark = pytest.mark.integration

TENANT = "t-paths"


@pytest.mark.parametrize("inline", [store.REWARDED_INLINE, 2], ids=["keys-in-document", "keys-spill-to-table"])
async def test_fast_and_full_batches_interleaved_match_the_full_rederivation(
    pg_admin_dsn: str, inline: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With 2 rewarded keys at most in the document, the customer spills to the rewarded table after the
    second batch: later fast-path batches probe it (a repeated order and product book 0 points)."""
    monkeypatch.setattr(store, "REWARDED_INLINE", inline)
    p = program(milestones=[0.5])
    rules = TenantRules(p, p.zone(), "en", "EUR")
    batches: list[tuple[list[domain.Fact], int]] = [  # (facts, customers expected on the full path)
        ([purchase("p1", at(1), "o1"), purchase("p2", at(2), "o2")], 0),  # a first event: nothing stored
        ([purchase("p3", at(3), "o3"), review("v1", at(3, hours=1))], 0),  # in order: fast path
        ([survey("s1", at(0.5))], 1),  # older than what is known: full re-derivation
        ([refund("r2", at(4), "o2", full=True)], 1),  # a correction: full re-derivation
        ([purchase("p4", at(40), "o4"), purchase("p1", at(1), "o1")], 1),  # a redelivered fact among new ones
        ([purchase("p5", at(50), "o5")], 0),  # in order again, from what the full path stored
        # In order, but the order and the product were rewarded before: the fast path finds them in the
        # rewarded table (not in the status document) and books 0 points.
        ([purchase("p6", at(60), "o5"), review("v2", at(61))], 0),
        ([purchase("p7", at(70), "o3"), survey("s2", at(71), "rq-s1")], 0),
        # Two events for one new order in one batch: one booking, one duplicate, one rewarded key written.
        ([purchase("p8", at(80), "o8"), purchase("p9", at(81), "o8")], 0),
    ]
    seen: list[domain.Fact] = []
    async with fresh_database(pg_admin_dsn, prefix="tiers_paths_") as dsn:
        pool = await create_pool(dsn, "tiers", min_size=1, max_size=1)
        try:
            await migrations.apply(pool, "tiers", MIGRATIONS_DIR)
            async with pool.acquire() as conn:
                snapshot = None
                for facts, expected_full in batches:
                    async with conn.transaction():
                        ctx = EffectContext(conn, service="tiers", source="/test", clock="event")
                        counts = await apply_customers(ctx, TENANT, rules, {"c1": [(f, None) for f in facts]})
                    assert counts.full_rederivations == expected_full, facts
                    seen += [f for f in facts if f.event_id not in {s.event_id for s in seen}]
                    as_of: datetime = max(f.occurred_at for f in seen)
                    reference = domain.process(p, "c1", seen, snapshot, as_of)
                    snapshot = reference.snapshot
                    row = await store.load_customer(conn, TENANT, "c1")
                    assert row is not None
                    assert row.state(p) == reference.state
                    assert row.snapshot() == reference.snapshot
                    # The document (and, spilled, the rewarded table) hold the full derivation.
                    assert row.derivation is not None and reference.derivation is not None
                    table = await conn.fetch(
                        "SELECT kind, key, event_id FROM rewarded WHERE tenant = $1 AND customer_id = 'c1'", TENANT
                    )
                    assert row.spilled == (store.rewarded_size(reference.derivation) > inline)
                    assert row.spilled or not table
                    for kind, key, event_id in table:
                        store.add_rewarded(row.derivation, kind, key, event_id)
                    assert row.derivation == reference.derivation
                stored_facts = (await store.load_facts(conn, TENANT, ["c1"]))["c1"]
                keys = (await store.load_entry_keys(conn, TENANT, p.version, ["c1"]))["c1"]
        finally:
            await pool.close()
    assert sorted(f.event_id for f in stored_facts) == sorted(f.event_id for f in seen)  # each stored once
    assert {f.event_id: f for f in stored_facts} == {f.event_id: f for f in seen}
    final = domain.process(p, "c1", seen, None, max(f.occurred_at for f in seen))
    # Latest revision of every entry = the full re-derivation's entries; the refund's purchase was re-booked.
    assert {k: v[1:] for k, v in keys.items()} == {e.entry_id: store.entry_key(0, e)[1:] for e in final.entries}
    assert keys["r2"][1] < 0


async def test_status_documents_are_compressed_with_lz4(pg_admin_dsn: str) -> None:
    """Migration 0008: a frequent shopper's document (past Postgres' ~2 KB threshold) is compressed on every
    write; lz4 instead of pglz saved ~18 us of Postgres CPU per event at 100 earlier purchases (A/B in the
    tiers README). The local stack's Postgres is built with lz4, so the migration must have taken effect."""
    async with fresh_database(pg_admin_dsn, prefix="tiers_lz4_") as dsn:
        pool = await create_pool(dsn, "tiers", min_size=1, max_size=1)
        try:
            await migrations.apply(pool, "tiers", MIGRATIONS_DIR)
            async with pool.acquire() as conn:
                method = await conn.fetchval(
                    "SELECT attcompression FROM pg_attribute WHERE attrelid = 'customers'::regclass AND attname = 'doc'"
                )
                assert method == b"l", f"customers.doc compression is {method!r}, not lz4"
                await conn.execute(
                    "INSERT INTO customers (tenant, customer_id, program_version, tier, reason, points, as_of, doc) "
                    "VALUES ('t', 'c', 1, 'novice', 'start', 0, now(), $1)",
                    '{"f":[' + ",".join(f"[{1777458600000000 + i * 259200000000},-10]" for i in range(100)) + "]}",
                )
                assert await conn.fetchval("SELECT pg_column_compression(doc) FROM customers") == "lz4"
        finally:
            await pool.close()


async def test_one_batch_of_several_purchases_records_every_promotion(pg_admin_dsn: str) -> None:
    """The handler over real Postgres: a new customer (first-event path) gets six purchases in one batch and is
    promoted twice (novice -> maker -> expert); a known customer (fast path, already a maker) gets five and is
    promoted once. The tier history and the emitted events show every step, as one batch per purchase would."""
    p = program(milestones=[0.5])
    rules = TenantRules(p, p.zone(), "en", "EUR")
    facts = [purchase(f"p{i}", at(i), f"o{i}") for i in range(6)]
    known = [purchase(f"k{i}", at(i), f"ko{i}") for i in range(6)]
    async with fresh_database(pg_admin_dsn, prefix="tiers_steps_") as dsn:
        pool = await create_pool(dsn, "tiers", min_size=1, max_size=1)
        try:
            await migrations.apply(pool, "tiers", MIGRATIONS_DIR)
            async with pool.acquire() as conn:
                async with conn.transaction():  # the known customer's first purchase, alone: a maker
                    ctx = EffectContext(conn, service="tiers", source="/test", clock="event")
                    await apply_customers(ctx, TENANT, rules, {"known": [(known[0], None)]})
                async with conn.transaction():
                    ctx = EffectContext(conn, service="tiers", source="/test", clock="event")
                    counts = await apply_customers(
                        ctx, TENANT, rules, {"new": [(f, None) for f in facts], "known": [(f, None) for f in known[1:]]}
                    )
                assert counts.full_rederivations == 0
                assert sorted(counts.changed_to) == ["expert", "expert", "maker"]
                history = await conn.fetch(
                    "SELECT customer_id, from_tier, to_tier, effective_at FROM tier_history ORDER BY customer_id, id"
                )
                assert [(r["customer_id"], r["from_tier"], r["to_tier"]) for r in history] == [
                    ("known", "novice", "maker"), ("known", "maker", "expert"),
                    ("new", "novice", "maker"), ("new", "maker", "expert"),
                ]
                assert [r["effective_at"] for r in history if r["customer_id"] == "new"] == [at(0), at(2)]
                # What the batch emits (the kit writes ctx.outbox to the outbox table in the same transaction).
                emitted = [(r.topic, json.loads(r.value)) for r in ctx.outbox]
                changes = [(e["customer_id"], e["to_tier"]) for t, e in emitted if "tier-changed" in t]
                assert sorted(changes) == [("known", "expert"), ("new", "expert"), ("new", "maker")]
                assert [c for c in changes if c[0] == "new"] == [("new", "maker"), ("new", "expert")]  # in order
                milestones = [(e["customer_id"], e["next_tier"]) for t, e in emitted if "milestone" in t]
                assert ("new", "expert") in milestones and ("new", "guru") in milestones
                for customer in ("new", "known"):
                    row = await store.load_customer(conn, TENANT, customer)
                    assert row is not None and row.tier == "expert"
        finally:
            await pool.close()
