"""BatchProcessor.prepare without an exporter: span ids without the SDK, same trace semantics."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from loyalty_contracts.envelope import Envelope, encode
from loyalty_contracts.samples import sample
from loyalty_kit.batch import BatchProcessor
from loyalty_kit.metrics import KitMetrics
from loyalty_kit.telemetry import make_tracer_provider

PURCHASE = "loyalty.PurchaseMade.v1"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@dataclass
class Rec:
    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def record(offset: int, traceparent: str | None) -> Rec:
    env = Envelope.new(sample(PURCHASE), tenant="acme-diy", source="/test", traceparent=traceparent)
    r = encode(env)
    return Rec(r.topic, 0, offset, r.key, r.value, r.headers)


async def noop(ctx: Any) -> None:
    return None


def test_unsampled_prepare_continues_valid_traces_and_starts_new_ones() -> None:
    tracer = make_tracer_provider("kt", None).get_tracer("t")  # no exporter: ALWAYS_OFF
    processor = BatchProcessor(
        service="kt", pool=None, handlers={PURCHASE: noop}, tracer=tracer,  # type: ignore[arg-type]
        metrics=KitMetrics("kt"), dlq_topic="dlq",
    )
    parents = [f"00-{TRACE}-00f067aa0ba902b7-01", None, "00-" + "0" * 32 + "-00f067aa0ba902b7-01", "garbage"]
    batch = processor.prepare([record(i, p) for i, p in enumerate(parents)])
    out = [item.traceparent for item in batch.items]
    assert all(t is not None and re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-00", t) for t in out), out
    assert out[0].split("-")[1] == TRACE and out[0].split("-")[2] != "00f067aa0ba902b7"  # type: ignore[union-attr]
    new_traces = {t.split("-")[1] for t in out[1:]}  # type: ignore[union-attr]
    assert len(new_traces) == 3 and TRACE not in new_traces and "0" * 32 not in new_traces
    assert len({t.split("-")[2] for t in out}) == 4  # type: ignore[union-attr]  # a span id per event


def test_emitted_event_ids_are_version_4_uuids_and_distinct() -> None:
    import uuid

    from loyalty_kit.effects import new_event_id

    ids = [new_event_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    for value in ids[:2000]:
        parsed = uuid.UUID(value)
        assert str(parsed) == value and parsed.version == 4 and parsed.variant == uuid.RFC_4122


async def test_prepare_in_slices_gives_the_same_batch_and_lets_other_tasks_run_between_slices() -> None:
    import asyncio

    tracer = make_tracer_provider("kt", None).get_tracer("t")
    processor = BatchProcessor(
        service="kt", pool=None, handlers={PURCHASE: noop}, tracer=tracer,  # type: ignore[arg-type]
        metrics=KitMetrics("kt"), dlq_topic="dlq",
    )
    records: list[Any] = [record(i, None) for i in range(250)]
    records[120] = Rec("t", 0, 120, b"k", b"{not json", records[120].headers)  # undecodable, mid-batch
    ticks = 0

    async def other_task() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(other_task())
    await asyncio.sleep(0)
    before = ticks
    sliced = await processor.prepare_in_slices(tuple(records), slice_size=100)
    ticker.cancel()
    whole = processor.prepare(tuple(records))
    assert ticks - before >= 2  # it yielded between its three slices
    assert sliced.records == tuple(records)
    assert [i.env.id for i in sliced.items] == [i.env.id for i in whole.items] and len(sliced.items) == 249
    assert [r.offset for r, _ in sliced.undecodable] == [120]
