"""Batch consumption end to end on real Kafka + Postgres with the tiny counter service."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import asyncpg
from kit_counter_service import MILESTONE, PURCHASE, build
from loyalty_contracts.catalogue import topic_for
from loyalty_contracts.envelope import Envelope, decode, encode
from loyalty_contracts.samples import T0, sample, with_customer
from loyalty_kit.dlq import get_dead_letter, list_dead_letters, replay_dead_letters
from loyalty_kit.testing import TopicReader, isolated_settings, publish, publish_raw, running, wait_until
from loyalty_kit.topics import ensure_topics
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

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
    await ensure_topics(kafka_bootstrap, [prefix + topic_for(MILESTONE)], prefix=prefix, partitions=2)
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


async def test_crash_between_db_commit_and_offset_commit_causes_no_double_effect(
    kafka_bootstrap: str, kit_db: str, service_name: str, suffix: str
) -> None:
    settings = isolated_settings(service_name, kafka_bootstrap, kit_db, suffix, pg_admin_dsn=kit_db)
    prefix = settings.topic_prefix
    events = purchases(["a", "b", "c"], 5)
    await ensure_topics(kafka_bootstrap, [prefix + topic_for(MILESTONE)], prefix=prefix, partitions=2)
    first = build(settings)

    async def crash_before_offset_commit(consumer: Any, records: Any) -> None:
        return None  # the DB transaction has committed; the process "dies" before committing offsets

    first._commit_offsets = crash_before_offset_commit  # type: ignore[method-assign]
    async with TopicReader(kafka_bootstrap, prefix + topic_for(MILESTONE)) as out:
        async with running(first):
            await publish(kafka_bootstrap, events, topic_prefix=prefix)
            await out.wait_for(15)
        assert await counts(kit_db, service_name) == {"a": 5, "b": 5, "c": 5}
        # Same consumer group, no committed offsets: the restarted service reads all 15 records again.
        second = build(settings)
        async with running(second):
            await wait_until(lambda: second.metrics.duplicates._value.get() >= 15, within_s=30)
            assert second.metrics.events_handled.labels(PURCHASE)._value.get() == 0
        assert await counts(kit_db, service_name) == {"a": 5, "b": 5, "c": 5}
        assert len(out.records) == 15


async def test_poison_and_undecodable_records_go_to_dead_letters_and_replay_works(
    kafka_bootstrap: str, kit_db: str, service_name: str, suffix: str
) -> None:
    settings = isolated_settings(service_name, kafka_bootstrap, kit_db, suffix, pg_admin_dsn=kit_db)
    prefix = settings.topic_prefix
    purchase_topic = prefix + topic_for(PURCHASE)
    before = purchases(["p", "q"], 3, order_prefix="before")
    poison = purchases(["p"], 1, order_prefix="POISON")
    after = purchases(["p", "q"], 2, order_prefix="after")
    garbage_headers = [(k, v) for k, v in encode(before[0]).headers if k != "ce_id"] + [("ce_id", b"garbage-1")]
    await ensure_topics(kafka_bootstrap, [prefix + topic_for(MILESTONE)], prefix=prefix, partitions=2)
    app = build(settings)
    async with running(app), TopicReader(kafka_bootstrap, app.dlq_topic) as dlq:
        await publish(kafka_bootstrap, before + poison, topic_prefix=prefix)
        await publish_raw(kafka_bootstrap, [(purchase_topic, b"p", b"{not json", garbage_headers)])
        await publish(kafka_bootstrap, after, topic_prefix=prefix)
        await dlq.wait_for(2)
        await wait_until(lambda: app.metrics.events_handled.labels(PURCHASE)._value.get() >= 10, within_s=30)
        assert await counts(kit_db, service_name) == {"p": 5, "q": 5}
        # after_commit callbacks ran for the committed events only, not for the bisected attempts that failed.
        assert app.state["committed_events"] == 10  # type: ignore[attr-defined]

        letters = await list_dead_letters(kafka_bootstrap, service_name, topic_prefix=prefix)
        by_reason = {dl.reason: dl for dl in letters}
        assert set(by_reason) == {"handler_failed", "malformed_json"}
        failed = by_reason["handler_failed"]
        assert failed.event_id == poison[0].id
        assert failed.original_topic == purchase_topic
        assert failed.error is not None and "Poisoned" in failed.error and "POISON-p-0" in failed.error
        assert failed.header("dlq_service") == service_name
        assert failed.header("dlq_offset") is not None and failed.header("dlq_at") is not None
        assert failed.original_headers == encode(poison[0]).headers
        assert by_reason["malformed_json"].value == b"{not json"
        shown = await get_dead_letter(kafka_bootstrap, service_name, failed.id, topic_prefix=prefix)
        assert shown is not None and shown.value == failed.value and shown.summary()["event_id"] == poison[0].id

        # The bug is fixed; replaying the dead letter applies the purchase once.
        app.state["healed"] = True  # type: ignore[attr-defined]
        replayed = await replay_dead_letters(kafka_bootstrap, service_name, [failed.id], topic_prefix=prefix)
        assert [r.id for r in replayed] == [failed.id]
        await wait_until(lambda: app.metrics.events_handled.labels(PURCHASE)._value.get() >= 11, within_s=30)
        assert await counts(kit_db, service_name) == {"p": 6, "q": 5}
        assert app.state["committed_events"] == 11  # type: ignore[attr-defined]


async def test_a_crash_after_dead_lettering_does_not_dead_letter_the_record_again(
    kafka_bootstrap: str, kit_db: str, service_name: str, suffix: str
) -> None:
    settings = isolated_settings(service_name, kafka_bootstrap, kit_db, suffix, pg_admin_dsn=kit_db)
    prefix = settings.topic_prefix
    purchase_topic = prefix + topic_for(PURCHASE)
    good = purchases(["r"], 2, order_prefix="good")
    headers = encode(good[0]).headers
    await ensure_topics(kafka_bootstrap, [prefix + topic_for(MILESTONE)], prefix=prefix, partitions=2)
    first = build(settings)

    async def crash_before_offset_commit(consumer: Any, offsets: Any) -> None:
        return None  # dead letters and effects are committed; the process "dies" before the offset commit

    first._commit_offsets = crash_before_offset_commit  # type: ignore[method-assign]
    await ensure_topics(kafka_bootstrap, [first.dlq_topic, purchase_topic], prefix=prefix, partitions=2)
    async with TopicReader(kafka_bootstrap, first.dlq_topic) as dlq:
        async with running(first):
            await publish_raw(kafka_bootstrap, [
                (purchase_topic, b"r", b"{not json", headers),
                (purchase_topic, b"r", None, headers),  # a tombstone: dead-lettered with its null value
            ])
            await publish(kafka_bootstrap, good, topic_prefix=prefix)
            await dlq.wait_for(2)
            await wait_until(lambda: first.metrics.events_handled.labels(PURCHASE)._value.get() >= 2)
        # Nothing was committed to Kafka: the restarted service reads all four records again.
        second = build(settings)
        async with running(second):
            await wait_until(lambda: second.metrics.duplicates._value.get() >= 2)
            await wait_until(lambda: second.processor is not None and second.relay is not None
                             and second.relay.is_leader)
            await asyncio.sleep(1.0)  # time for a second copy of the dead letters to show up, if one were sent
            assert second.metrics.dead_letters.labels("malformed_json")._value.get() == 0
        assert sorted((r.value is None, r.value) for r in dlq.records) == [(False, b"{not json"), (True, None)]
        assert await counts(kit_db, service_name) == {"r": 2}


async def test_consume_produce_hop_keeps_the_trace(
    kafka_bootstrap: str, kit_db: str, service_name: str, suffix: str
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = isolated_settings(service_name, kafka_bootstrap, kit_db, suffix, pg_admin_dsn=kit_db)
    prefix = settings.topic_prefix
    trace_id, parent_span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    incoming = purchases(["t"], 1)[0]
    incoming = Envelope.new(
        incoming.data, tenant=TENANT, source="/test/retailer", traceparent=f"00-{trace_id}-{parent_span_id}-01"
    )
    await ensure_topics(kafka_bootstrap, [prefix + topic_for(MILESTONE)], prefix=prefix, partitions=2)
    app = build(settings, tracer_provider=provider)
    async with running(app), TopicReader(kafka_bootstrap, prefix + topic_for(MILESTONE)) as out:
        await publish(kafka_bootstrap, [incoming], topic_prefix=prefix)
        (produced,) = await out.wait_for(1)
    emitted = decode(produced.key, produced.value, produced.headers)
    assert emitted.traceparent is not None
    _, out_trace, out_span, _ = emitted.traceparent.split("-")
    assert out_trace == trace_id
    consume_spans = [
        s for s in exporter.get_finished_spans()
        if s.attributes and s.attributes.get("messaging.message.id") == incoming.id
    ]
    assert len(consume_spans) == 1
    span = consume_spans[0]
    assert f"{span.context.span_id:016x}" == out_span
    assert span.parent is not None and f"{span.parent.span_id:016x}" == parent_span_id


async def test_transient_database_errors_are_retried_not_dead_lettered(
    kafka_bootstrap: str, kit_db: str, service_name: str, suffix: str
) -> None:
    settings = isolated_settings(service_name, kafka_bootstrap, kit_db, suffix, pg_admin_dsn=kit_db)
    prefix = settings.topic_prefix
    await ensure_topics(kafka_bootstrap, [prefix + topic_for(MILESTONE)], prefix=prefix, partitions=2)
    app = build(settings)
    app.state["connection_drops"] = 3  # type: ignore[attr-defined]
    async with running(app), TopicReader(kafka_bootstrap, prefix + topic_for(MILESTONE)) as out:
        await publish(kafka_bootstrap, purchases(["x", "y"], 3), topic_prefix=prefix)
        await out.wait_for(6)
        assert await counts(kit_db, service_name) == {"x": 3, "y": 3}
        assert app.metrics.retries.labels("batch")._value.get() >= 3
        assert sum(s.get() for s in _samples(app.metrics.dead_letters)) == 0
        assert app.state["connection_drops"] == 0  # type: ignore[attr-defined]
        assert app.state["committed_events"] == 6  # type: ignore[attr-defined]  # retried attempts not counted


def _samples(counter: Any) -> list[Any]:
    return [child._value for child in counter._metrics.values()]


async def test_event_clock_waits_for_a_partition_that_is_still_being_read(
    kafka_bootstrap: str, kit_db: str, service_name: str, suffix: str
) -> None:
    """A timer due at day 10 may fire only once every event up to day 10 is applied, even when another
    partition already delivered days 20-30 (the clock is a low watermark across partitions, not the newest time)."""
    from aiokafka.partitioner import DefaultPartitioner
    from loyalty_kit.effects import schedule_timer

    settings = isolated_settings(
        service_name, kafka_bootstrap, kit_db, suffix, pg_admin_dsn=kit_db, timer_clock="event", batch_max_records=5
    )
    app = build(settings)
    prefix = settings.topic_prefix
    await ensure_topics(kafka_bootstrap, [prefix + topic_for(PURCHASE)], prefix=prefix, partitions=2)

    def partition_of(customer: str) -> int:
        return int(DefaultPartitioner()(customer.encode(), [0, 1], [0, 1]))

    candidates = [f"c{i}" for i in range(20)]
    fast = next(c for c in candidates if partition_of(c) == 0)
    slow = next(c for c in candidates if partition_of(c) == 1)
    base = sample(PURCHASE)

    def purchase(customer: str, at: timedelta, n: int) -> Envelope:
        data = with_customer(base, customer, T0 + at).model_copy(update={"order_id": f"o-{customer}-{n}"})
        return Envelope.new(data, tenant=TENANT, source="/test/retailer")

    # The fast partition runs from day 20 to day 30, the slow one from day 0 to day 19.5; read 5 at a time.
    ahead = [purchase(fast, timedelta(days=20, hours=6 * i), i) for i in range(40)]
    behind = [purchase(slow, timedelta(hours=12 * i), i) for i in range(40)]
    due_events = sum(1 for env in behind if env.time <= T0 + timedelta(days=10))
    # A replay: the log is complete before the service starts (records produced after a partition was read
    # to its end are late under any clock), and the timer is already scheduled.
    async with running(build(settings)) as first:  # sets the schema up; consumes nothing (the log is empty)
        assert first.pool is not None
        async with first.pool.acquire() as conn:
            await schedule_timer(conn, kind="nudge", key="day-10", due_at=T0 + timedelta(days=10),
                                 payload={"customer_id": slow}, tenant=TENANT)
    await publish(kafka_bootstrap, ahead + behind, topic_prefix=prefix)
    async with running(app):
        await wait_until(lambda: len(app.state["applied_when_fired"]) == 1, within_s=30)  # type: ignore[attr-defined]
        [(key, applied)] = app.state["applied_when_fired"]  # type: ignore[attr-defined]
        assert key == "day-10"
        # Every slow-partition event up to day 10 was applied before the timer fired.
        assert applied >= due_events, f"fired after {applied} of the slow customer's {len(behind)} events"
        await wait_until(lambda: app.state["committed_events"] >= 80, within_s=30)  # type: ignore[attr-defined]
