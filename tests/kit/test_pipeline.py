"""Batch consumption end to end on real Kafka + Postgres with the tiny counter service."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
from kit_counter_service import MILESTONE, PURCHASE, build
from loyalty_contracts.catalogue import topic_for
from loyalty_contracts.envelope import Envelope, decode
from loyalty_contracts.samples import T0, sample, with_customer

from loyalty_kit.testing import TopicReader, isolated_settings, publish, running, wait_until
from loyalty_kit.topics import ensure_topics

TENANT = "acme-diy"


def purchases(customers: list[str], per_customer: int, *, order_prefix: str = "o") -> list[Envelope]:
    out: list[Envelope] = []
    base = sample(PURCHASE)
    for i in range(per_customer):
        for c in customers:
            data = with_customer(base, c, T0 + timedelta(minutes=i)).model_copy(
                update={"order_id": f"{order_prefix}-{c}-{i}"}
            )
            out.append(Envelope.new(data, tenant=TENANT, source="/test/retailer"))
    return out


async def counts(dsn: str, schema: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(f"SELECT customer_id, purchases FROM {schema}.purchase_counts")
    finally:
        await conn.close()
    return {r["customer_id"]: r["purchases"] for r in rows}


async def test_batches_apply_once_and_redelivery_changes_nothing(
    kafka_bootstrap: str, kit_db: str, service_name: str, suffix: str
) -> None:
    settings = isolated_settings(service_name, kafka_bootstrap, kit_db, suffix, pg_admin_dsn=kit_db)
    app = build(settings)
    prefix = settings.topic_prefix
    events = purchases([f"c{i}" for i in range(5)], 4)
    await ensure_topics(kafka_bootstrap, [prefix + topic_for(MILESTONE)], prefix=prefix)
    async with running(app), TopicReader(kafka_bootstrap, prefix + topic_for(MILESTONE)) as out:
        await publish(kafka_bootstrap, events, topic_prefix=prefix)
        await out.wait_for(20)
        assert await counts(kit_db, service_name) == {f"c{i}": 4 for i in range(5)}
        # Redeliver the very same envelopes (same ids): no new effects, no new events.
        await publish(kafka_bootstrap, events, topic_prefix=prefix)
        await wait_until(lambda: app.metrics.duplicates._value.get() >= 20, within_s=30)
        assert await counts(kit_db, service_name) == {f"c{i}": 4 for i in range(5)}
        assert len(out.records) == 20
        # Per customer, the emitted points count 1, 2, 3, 4 in order.
        per_customer: dict[str, list[int]] = {}
        for rec in out.records:
            env = decode(rec.key, rec.value, rec.headers)
            per_customer.setdefault(env.subject, []).append(env.data.points)  # type: ignore[attr-defined]
        assert per_customer == {f"c{i}": [1, 2, 3, 4] for i in range(5)}
