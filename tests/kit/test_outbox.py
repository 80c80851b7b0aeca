"""The outbox relay: exactly once per row across restarts, including rows committed out of id order."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import pytest
from loyalty_contracts.envelope import KafkaRecord
from loyalty_kit import migrations, outbox
from loyalty_kit.db import create_pool
from loyalty_kit.outbox import OutboxRelay, make_producer
from loyalty_kit.testing import TopicReader, wait_until
from loyalty_kit.topics import ensure_topics


@pytest.fixture
async def outbox_pool(kit_db: str, service_name: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(kit_db, service_name, min_size=1, max_size=6)
    await migrations.apply(pool, service_name, None)
    yield pool
    await pool.close()


def rows(topic: str, key: str, start: int, n: int) -> list[KafkaRecord]:
    return [
        KafkaRecord(topic=topic, key=key.encode(), value=f"{key}-{i}".encode(), headers=[("h", b"\xff\x00x")])
        for i in range(start, start + n)
    ]


@contextlib.asynccontextmanager
async def relay_running(pool: asyncpg.Pool, schema: str, bootstrap: str) -> AsyncIterator[OutboxRelay]:
    producer = make_producer(bootstrap)
    await producer.start()
    relay = OutboxRelay(pool, schema, producer, poll_interval_s=0.2)
    task = asyncio.create_task(relay.run())
    try:
        yield relay
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await producer.stop()


def values_by_key(records: list) -> dict[str, list[str]]:  # type: ignore[type-arg]
    out: dict[str, list[str]] = {}
    for r in records:
        out.setdefault(r.key.decode(), []).append(r.value.decode())
    return out


async def test_relay_publishes_rows_committed_out_of_id_order_and_survives_restart(
    kafka_bootstrap: str, outbox_pool: asyncpg.Pool, service_name: str, suffix: str
) -> None:
    topic = f"t{suffix}.kit.outbox-test"
    await ensure_topics(kafka_bootstrap, [topic], partitions=2)
    async with TopicReader(kafka_bootstrap, topic) as out:
        async with relay_running(outbox_pool, service_name, kafka_bootstrap):
            early = await outbox_pool.acquire()
            late = await outbox_pool.acquire()
            try:
                tx_early = early.transaction()
                await tx_early.start()
                await outbox.insert(early, rows(topic, "k1", 0, 3), service_name)  # takes ids 1..3
                async with late.transaction():
                    await outbox.insert(late, rows(topic, "k2", 0, 3), service_name)  # ids 4..6, commits first
                await out.wait_for(3)
                assert values_by_key(out.records) == {"k2": ["k2-0", "k2-1", "k2-2"]}
                await tx_early.commit()  # smaller ids become visible after bigger ones were published
            finally:
                await outbox_pool.release(early)
                await outbox_pool.release(late)
            await out.wait_for(6)
        # Relay stopped; more rows commit while it is down, then a new relay starts.
        async with outbox_pool.acquire() as conn, conn.transaction():
            await outbox.insert(conn, rows(topic, "k1", 3, 5) + rows(topic, "k2", 3, 5), service_name)
        await asyncio.sleep(0.5)
        assert len(out.records) == 6
        async with relay_running(outbox_pool, service_name, kafka_bootstrap):
            await out.wait_for(16)
            await asyncio.sleep(0.5)  # anything extra (a duplicate) would arrive now
        assert len(out.records) == 16
        assert values_by_key(out.records) == {
            "k1": [f"k1-{i}" for i in range(8)],
            "k2": [f"k2-{i}" for i in range(8)],
        }
        assert all(list(r.headers) == [("h", b"\xff\x00x")] for r in out.records)
    async with outbox_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 0


async def test_only_one_relay_leads_per_schema(
    kafka_bootstrap: str, outbox_pool: asyncpg.Pool, service_name: str, suffix: str
) -> None:
    topic = f"t{suffix}.kit.outbox-leader"
    await ensure_topics(kafka_bootstrap, [topic], partitions=2)
    async with TopicReader(kafka_bootstrap, topic) as out:
        async with (
            relay_running(outbox_pool, service_name, kafka_bootstrap) as one,
            relay_running(outbox_pool, service_name, kafka_bootstrap) as two,
        ):
            await wait_until(lambda: one.is_leader or two.is_leader, within_s=10)
            await asyncio.sleep(0.5)
            assert one.is_leader != two.is_leader
            async with outbox_pool.acquire() as conn, conn.transaction():
                await outbox.insert(conn, rows(topic, "k", 0, 50), service_name)
            await out.wait_for(50)
            await asyncio.sleep(0.5)
            assert one.published_total + two.published_total == 50
            assert 0 in (one.published_total, two.published_total)
        assert [r.value.decode() for r in out.records] == [f"k-{i}" for i in range(50)]


async def test_rows_written_before_the_header_blob_are_still_published(
    kafka_bootstrap: str, outbox_pool: asyncpg.Pool, service_name: str, suffix: str
) -> None:
    topic = f"t{suffix}.kit.outbox-old-rows"
    await ensure_topics(kafka_bootstrap, [topic], partitions=2)
    async with outbox_pool.acquire() as conn:
        await conn.execute(  # migration 0002's two arrays
            "INSERT INTO outbox (topic, key, header_names, header_values, value) VALUES ($1, $2, $3, $4, $5)",
            topic, b"k", ["h", "ce_id"], [b"\xff\x00x", b"id-1"], b"arrays",
        )
        await conn.execute(  # migration 0001's JSON (latin-1 text values)
            "INSERT INTO outbox (topic, key, headers, value) VALUES ($1, $2, $3, $4)",
            topic, b"k", b'[["h", "\\u00ff\\u0000x"]]', b"json",
        )
    async with outbox_pool.acquire() as conn, conn.transaction():
        await outbox.insert(conn, rows(topic, "k", 0, 1), service_name)
    async with TopicReader(kafka_bootstrap, topic) as out, relay_running(outbox_pool, service_name, kafka_bootstrap):
        await out.wait_for(3)
    assert [(r.value, list(r.headers)) for r in out.records] == [
        (b"arrays", [("h", b"\xff\x00x"), ("ce_id", b"id-1")]),
        (b"json", [("h", b"\xff\x00x")]),
        (b"k-0", [("h", b"\xff\x00x")]),
    ]


async def test_many_rows_span_several_record_batches_and_keep_per_key_order(
    kafka_bootstrap: str, outbox_pool: asyncpg.Pool, service_name: str, suffix: str
) -> None:
    topic = f"t{suffix}.kit.outbox-many"
    await ensure_topics(kafka_bootstrap, [topic], partitions=2)
    keys = [f"c{i}" for i in range(7)]
    padding = b"x" * 900  # 3000 rows of ~1 kB: several 256 kB batches per partition
    records = [
        KafkaRecord(
            topic, keys[i % 7].encode(), f"{keys[i % 7]}-{i // 7}-".encode() + padding, [("n", str(i).encode())]
        )
        for i in range(3000)
    ]
    async with outbox_pool.acquire() as conn, conn.transaction():
        await outbox.insert(conn, records, service_name)
    async with TopicReader(kafka_bootstrap, topic) as out, relay_running(outbox_pool, service_name, kafka_bootstrap):
        await out.wait_for(3000, within_s=60)
        await asyncio.sleep(0.5)
    assert len(out.records) == 3000
    seen = {k: [int(r.value.split(b"-")[1]) for r in out.records if r.key == k.encode()] for k in keys}
    assert all(seen[k] == list(range(len(seen[k]))) for k in keys)
    assert sorted(int(dict(r.headers)["n"]) for r in out.records) == list(range(3000))
    assert len({r.partition for r in out.records}) == 2
