"""store.py over real Postgres: what save_book writes, load_book reads back unchanged (customers with hash sets,
first orders and early refunds; referrals with rewards), and a second save updates in place."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from loyalty_kit import migrations
from loyalty_kit.db import create_pool
from loyalty_kit.testing import fresh_database
from loyalty_referrals import store
from loyalty_referrals.app import MIGRATIONS
from loyalty_referrals.domain import ReferralBook, ReferralStatus, RewardStatus
from referrals_factories import T0, TENANT, code_of, days, invite, make_rules, new_book, purchase, refund, register

SCHEMA = "referrals_store_test"


@pytest.fixture
async def pool(pg_admin_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    async with fresh_database(pg_admin_dsn, prefix="refstore_") as dsn:
        db = await create_pool(dsn, SCHEMA)
        try:
            await migrations.apply(db, SCHEMA, MIGRATIONS)
            yield db
        finally:
            await db.close()


async def _reload(pool: asyncpg.Pool, customers: set[str]) -> ReferralBook:
    needs = store.BatchNeeds(subjects=set(customers))
    needs.saw(T0)
    async with pool.acquire() as conn, conn.transaction():
        return await store.load_book(conn, TENANT, make_rules(), needs)


async def test_saved_book_loads_back_equal_and_updates_in_place(pool: asyncpg.Pool) -> None:
    book = new_book()
    register(book, "ann", T0, hashes={"h-ann-mail", "h-ann-phone"})
    purchase(book, "ann", T0 + days(0.5), payment="card-ann", address="addr-ann")
    invite(book, "ann", "h-bo", T0 + days(1))
    register(book, "bo", T0 + days(2), hashes={"h-bo"})
    refund(book, "cy", "o-cy-early", T0 + days(2), full=False, amount=700)  # before cy's purchase is known
    register(book, "cy", T0 + days(2), code=code_of("ann"))
    purchase(book, "bo", T0 + days(3), payment="card-bo", address="addr-bo")
    purchase(book, "cy", T0 + days(3), order_id="o-cy-early", total=9000)
    assert book.referrals["bo"].status == ReferralStatus.HELD and book.customers["cy"].early_refunds
    async with pool.acquire() as conn, conn.transaction():
        await store.save_book(conn, book)

    loaded = await _reload(pool, {"ann", "bo", "cy"})
    assert loaded.customers == {c: book.customers[c] for c in ("ann", "bo", "cy")}
    assert loaded.referrals == book.referrals
    assert loaded.customers["ann"].contact_hashes == {"h-ann-mail", "h-ann-phone"}
    assert loaded.customers["cy"].early_refunds == {"o-cy-early": (700, False)}

    # The hold passes: the grant is an update of the same rows, read back as granted.
    loaded.on_hold_expired("bo", T0 + days(40))
    async with pool.acquire() as conn, conn.transaction():
        await store.save_referrals(conn, TENANT, [loaded.referrals["bo"]])
    again = await _reload(pool, {"bo"})
    assert again.referrals["bo"] == loaded.referrals["bo"]
    assert {r.status for r in again.referrals["bo"].rewards.values()} == {RewardStatus.GRANTED}
    assert await pool.fetchval("SELECT count(*) FROM referrals") == len(book.referrals)


async def test_custom_plans_are_set_for_the_transaction_only(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        async with conn.transaction():
            await store.plan_each_call(conn)
            assert await conn.fetchval("SHOW plan_cache_mode") == "force_custom_plan"
        assert await conn.fetchval("SHOW plan_cache_mode") == "auto"  # the pooled connection is left as it was
