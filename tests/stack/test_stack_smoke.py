"""The stack is real: a Kafka broker that keeps keyed order across partitions, and a Postgres that stores rows."""

from __future__ import annotations

import asyncio

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic


async def test_topic_with_three_partitions_and_keyed_round_trip(kafka_bootstrap: str, unique_suffix: str) -> None:
    topic = f"smoke.{unique_suffix}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    assert described[0]["error_code"] == 0
    assert sorted(p["partition"] for p in described[0]["partitions"]) == [0, 1, 2]

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    sent: dict[str, list[int]] = {}
    try:
        for i in range(60):
            key = f"customer-{i % 7}"
            await producer.send(topic, value=str(i).encode(), key=key.encode())
            sent.setdefault(key, []).append(i)
        await producer.flush()
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, group_id=f"smoke-{unique_suffix}",
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    received: dict[str, list[int]] = {}
    partition_of_key: dict[str, set[int]] = {}
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while sum(map(len, received.values())) < 60 and asyncio.get_running_loop().time() < deadline:
            batches = await consumer.getmany(timeout_ms=1000)
            for tp, records in batches.items():
                for rec in records:
                    key = rec.key.decode()
                    received.setdefault(key, []).append(int(rec.value))
                    partition_of_key.setdefault(key, set()).add(tp.partition)
    finally:
        await consumer.stop()
    assert received == sent  # every message, and per key in the order sent
    assert all(len(parts) == 1 for parts in partition_of_key.values())  # a key sticks to one partition
    assert len({p for parts in partition_of_key.values() for p in parts}) > 1  # and keys spread over partitions


async def test_postgres_round_trips_rows(pg_admin_dsn: str, unique_suffix: str) -> None:
    conn = await asyncpg.connect(pg_admin_dsn)
    table = f"smoke_{unique_suffix}"
    try:
        await conn.execute(f"create table {table} (id int primary key, name text not null)")
        await conn.executemany(f"insert into {table} values ($1, $2)", [(i, f"n{i}") for i in range(100)])
        rows = await conn.fetch(f"select id, name from {table} where id % 10 = 3 order by id")
        assert [(r["id"], r["name"]) for r in rows] == [(i, f"n{i}") for i in range(3, 100, 10)]
        assert "PostgreSQL" in await conn.fetchval("select version()")
    finally:
        await conn.execute(f"drop table if exists {table}")
        await conn.close()


async def test_health_check_works_from_inside_a_running_event_loop(kafka_bootstrap: str, pg_admin_dsn: str) -> None:
    # `loyalty run` asks LocalStack.status() from its async main job. check_external used asyncio.run, which
    # fails inside a running loop: a healthy stack looked dead and the main job tore down a reused stack.
    from loyalty_suite.stack.stack import Endpoints, check_external

    check_external(Endpoints(kafka_bootstrap, pg_admin_dsn, "external"), timeout_s=10)  # raises StackError if broken
