"""Dead letters: records that cannot be decoded or whose handler fails deterministically.

A dead letter keeps the original key, value and headers and adds ``dlq_reason``, ``dlq_error``,
``dlq_topic``, ``dlq_partition``, ``dlq_offset``, ``dlq_service`` and ``dlq_at``. ``list_dead_letters``,
``get_dead_letter`` and ``replay_dead_letters`` are the library API behind ``loyalty dlq``; replay
republishes to the original topic with the original headers (so the consumer's inbox decides again).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, TopicPartition
from loyalty_contracts.catalogue import dead_letter_topic

from loyalty_kit.outbox import make_producer

DLQ_HEADER_PREFIX = "dlq_"
MAX_ERROR_CHARS = 2000


def dlq_topic_name(service: str, prefix: str = "") -> str:
    """``loyalty.dlq.<service>.v1`` (plus the test prefix); services outside the catalogue (tests) too."""
    try:
        return prefix + dead_letter_topic(service)
    except KeyError:
        return f"{prefix}loyalty.dlq.{service}.v1"


def dead_letter_headers(
    original: Sequence[tuple[str, bytes]],
    *,
    reason: str,
    error: str,
    topic: str,
    partition: int,
    offset: int,
    service: str,
    at: datetime | None = None,
) -> list[tuple[str, bytes]]:
    kept = [(k, v) for k, v in original if not k.startswith(DLQ_HEADER_PREFIX)]
    return [
        *kept,
        ("dlq_reason", reason.encode()),
        ("dlq_error", error[:MAX_ERROR_CHARS].encode("utf-8", "replace")),
        ("dlq_topic", topic.encode()),
        ("dlq_partition", str(partition).encode()),
        ("dlq_offset", str(offset).encode()),
        ("dlq_service", service.encode()),
        ("dlq_at", (at or datetime.now(UTC)).isoformat().encode()),
    ]


@dataclass(frozen=True)
class DeadLetter:
    id: str  # "<partition>:<offset>" in the dead-letter topic
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v.decode("utf-8", "replace")
        return None

    @property
    def reason(self) -> str | None:
        return self.header("dlq_reason")

    @property
    def error(self) -> str | None:
        return self.header("dlq_error")

    @property
    def original_topic(self) -> str | None:
        return self.header("dlq_topic")

    @property
    def event_id(self) -> str | None:
        return self.header("ce_id")

    @property
    def event_type(self) -> str | None:
        return self.header("ce_type")

    @property
    def tenant(self) -> str | None:
        return self.header("ce_tenantid")

    @property
    def original_headers(self) -> list[tuple[str, bytes]]:
        return [(k, v) for k, v in self.headers if not k.startswith(DLQ_HEADER_PREFIX)]

    def summary(self) -> dict[str, Any]:
        """Metadata only (no body: bodies may hold personal data)."""
        return {
            "id": self.id,
            "reason": self.reason,
            "error": self.error,
            "topic": self.original_topic,
            "partition": self.header("dlq_partition"),
            "offset": self.header("dlq_offset"),
            "at": self.header("dlq_at"),
            "event_id": self.event_id,
            "event_type": self.event_type,
            "tenant": self.tenant,
            "value_bytes": len(self.value) if self.value is not None else 0,
        }


async def _read_all(
    bootstrap: str, topic: str, limit: int | None, kafka_options: Mapping[str, Any] | None = None
) -> list[DeadLetter]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None, **dict(kafka_options or {})
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            await consumer._client.force_metadata_update()  # topic created moments ago
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        found: deque[DeadLetter] = deque(maxlen=limit) if limit else deque()
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batch.items():
                for rec in records:
                    if rec.offset < ends[tp]:
                        found.append(
                            DeadLetter(
                                id=f"{rec.partition}:{rec.offset}",
                                partition=rec.partition,
                                offset=rec.offset,
                                key=rec.key,
                                value=rec.value,
                                headers=list(rec.headers),
                            )
                        )
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return sorted(found, key=lambda d: (d.partition, d.offset))
    finally:
        await consumer.stop()


async def list_dead_letters(
    bootstrap: str,
    service: str,
    limit: int | None = 100,
    *,
    topic_prefix: str = "",
    kafka_options: Mapping[str, Any] | None = None,
) -> list[DeadLetter]:
    """The most recent ``limit`` dead letters of a service per partition order (None: all).

    ``kafka_options``: connection security, ``settings.kafka_options()`` (the same for get and replay).
    """
    return await _read_all(bootstrap, dlq_topic_name(service, topic_prefix), limit, kafka_options)


async def get_dead_letter(
    bootstrap: str,
    service: str,
    dead_letter_id: str,
    *,
    topic_prefix: str = "",
    kafka_options: Mapping[str, Any] | None = None,
) -> DeadLetter | None:
    for dl in await _read_all(bootstrap, dlq_topic_name(service, topic_prefix), None, kafka_options):
        if dl.id == dead_letter_id:
            return dl
    return None


async def replay_dead_letters(
    bootstrap: str,
    service: str,
    ids: Iterable[str] | Literal["all"],
    *,
    topic_prefix: str = "",
    kafka_options: Mapping[str, Any] | None = None,
) -> list[DeadLetter]:
    """Republish dead letters to their original topics with their original key, value and headers.

    Returns the dead letters replayed. Unknown ids raise ``KeyError`` before anything is sent.
    """
    letters = await _read_all(bootstrap, dlq_topic_name(service, topic_prefix), None, kafka_options)
    if ids == "all":
        chosen = letters
    else:
        by_id = {dl.id: dl for dl in letters}
        wanted = list(ids)
        missing = [i for i in wanted if i not in by_id]
        if missing:
            raise KeyError(f"no dead letters with ids {missing} in {dlq_topic_name(service, topic_prefix)}")
        chosen = [by_id[i] for i in wanted]
    unroutable = [dl.id for dl in chosen if not dl.original_topic]
    if unroutable:
        raise KeyError(f"dead letters {unroutable} have no dlq_topic header; cannot replay")
    producer = make_producer(bootstrap, **dict(kafka_options or {}))
    await producer.start()
    try:
        futures = [
            await producer.send(dl.original_topic or "", key=dl.key, value=dl.value, headers=dl.original_headers)
            for dl in chosen
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return chosen
