"""Outbox: events emitted by a handler are rows written in the handler's transaction; a relay publishes them.

Relay rules (each one avoids a known failure):
- one leader per service schema (session advisory lock on a held connection); others stand by;
- every pass reads ALL unpublished rows ordered by id, never "id > last published id": with a sequence, a
  transaction that took a smaller id can commit after one with a bigger id, and a cursor would skip it;
- rows are deleted only after Kafka acknowledged them (idempotent producer, acks=all, per-partition order);
  a crash between ack and delete republishes those rows, and consumers' inboxes absorb the duplicates;
- wake-ups come from NOTIFY (sent by the inserting transaction, delivered at its commit) plus a poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import marshal
from collections.abc import Callable, Sequence

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner
from loyalty_contracts.envelope import KafkaRecord

from loyalty_kit.db import is_transient_db_error
from loyalty_kit.metrics import KitMetrics

log = logging.getLogger(__name__)

_PARTITIONER = DefaultPartitioner()


def notify_channel(schema: str) -> str:
    return f"loyalty_outbox_{schema}"


def _headers_from_row(row: asyncpg.Record) -> list[tuple[str, bytes]]:
    blob = row["header_blob"]
    if blob is not None:
        # Written by ``insert`` below into the service's own schema (only the service's role can write it).
        headers: list[tuple[str, bytes]] = marshal.loads(blob)
        return headers
    # Rows written before migration 0003 kept two arrays, and before 0002 JSON.
    if row["header_names"] or row["headers"] is None:
        return list(zip(row["header_names"], row["header_values"], strict=True))
    return [(name, value.encode("latin-1")) for name, value in json.loads(row["headers"])]


OUTBOX_COLUMNS = ["topic", "key", "header_blob", "value"]


async def insert(conn: asyncpg.Connection, records: Sequence[KafkaRecord], schema: str) -> None:
    """Binary COPY into the outbox in the caller's transaction, plus a NOTIFY delivered when it commits.

    Headers go in as one ``marshal`` blob of (str, bytes) pairs: C-speed both ways (see migration 0003).
    """
    if not records:
        return
    dumps = marshal.dumps
    await conn.copy_records_to_table(
        "outbox",
        records=[(r.topic, r.key, dumps(r.headers), r.value) for r in records],
        columns=OUTBOX_COLUMNS,
    )
    await conn.execute("SELECT pg_notify($1, '')", notify_channel(schema))


def make_producer(bootstrap: str, **overrides: object) -> AIOKafkaProducer:
    """Producer settings for everything the kit publishes: idempotent, acks=all, small linger for batching."""
    settings: dict[str, object] = {
        "bootstrap_servers": bootstrap,
        "enable_idempotence": True,
        "acks": "all",
        "linger_ms": 5,
        "max_batch_size": 256 * 1024,
        "request_timeout_ms": 30_000,
    }
    settings.update(overrides)
    return AIOKafkaProducer(**settings)  # type: ignore[arg-type]


class OutboxRelay:
    def __init__(
        self,
        pool: asyncpg.Pool,
        schema: str,
        producer: AIOKafkaProducer,
        *,
        poll_interval_s: float = 1.0,
        batch_rows: int = 5000,
        metrics: KitMetrics | None = None,
        on_published: Callable[[int], None] | None = None,
        on_leadership: Callable[[bool], None] | None = None,
    ) -> None:
        """``on_published(n)`` after each committed slice and ``on_leadership(bool)`` when leadership changes:
        how a relay in a process of its own (``loyalty_kit.relay_process``) reports to its service."""
        self.pool = pool
        self.schema = schema
        self.producer = producer
        self.poll_interval_s = poll_interval_s
        self.batch_rows = batch_rows
        self.metrics = metrics
        self._on_published = on_published
        self._on_leadership = on_leadership
        self._leader = False
        self.published_total = 0
        self._wake = asyncio.Event()
        self._stopping = False

    @property
    def is_leader(self) -> bool:
        return self._leader

    @is_leader.setter
    def is_leader(self, value: bool) -> None:
        if value != self._leader:
            self._leader = value
            if self._on_leadership is not None:
                self._on_leadership(value)

    def wake(self) -> None:
        self._wake.set()

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Run until cancelled: take leadership, then publish on every wake-up or poll tick."""
        backoff = 0.5
        while True:
            try:
                await self._lead()
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not (is_transient_db_error(exc) or isinstance(exc, KafkaError)):
                    log.exception("outbox relay failed; restarting", extra={"schema": self.schema})
                else:
                    log.warning("outbox relay transient error; retrying", extra={"error": repr(exc)[:300]})
                if self.metrics:
                    self.metrics.retries.labels("outbox_relay").inc()
                self.is_leader = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def _lead(self) -> None:
        async with self.pool.acquire() as conn:
            lock_key = f"loyalty-outbox-relay:{self.schema}"
            while not await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", lock_key):
                self.is_leader = False
                await asyncio.sleep(self.poll_interval_s)
            self.is_leader = True
            channel = notify_channel(self.schema)
            await conn.add_listener(channel, self._on_notify)
            try:
                while True:
                    self._wake.clear()
                    await self.drain(conn)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)
            finally:
                self.is_leader = False
                with contextlib.suppress(Exception):
                    await conn.remove_listener(channel, self._on_notify)
                    await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", lock_key)

    async def _publish(self, rows: Sequence[asyncpg.Record]) -> None:
        """Publish rows (in id order) as one record batch per partition and wait for every ack.

        Rows are partitioned like the producer's default partitioner (murmur2 of the key, as the Java client)
        and appended to ``BatchBuilder``s: one future per batch instead of per-row ``send`` calls, which
        were most of the relay's CPU. Within a partition the rows keep their id order; the producer sends a
        partition's batches one after another (idempotent, acks=all).
        """
        by_partition: dict[tuple[str, int], list[asyncpg.Record]] = {}
        partition_of: dict[tuple[str, bytes | None], int] = {}
        topic_partitions: dict[str, list[int]] = {}
        for row in rows:
            topic, key = row["topic"], row["key"]
            partition = partition_of.get((topic, key))
            if partition is None:
                parts = topic_partitions.get(topic)
                if parts is None:
                    parts = topic_partitions[topic] = sorted(await self.producer.partitions_for(topic))
                partition = _PARTITIONER(key, parts, parts)
                if key is not None:  # a keyless row goes to a random partition each time
                    partition_of[(topic, key)] = partition
            by_partition.setdefault((topic, partition), []).append(row)
        futures: list[asyncio.Future[object]] = []
        for (topic, partition), group in by_partition.items():
            batch = self.producer.create_batch()
            for row in group:
                headers = _headers_from_row(row)
                if batch.append(key=row["key"], value=row["value"], timestamp=None, headers=headers) is None:
                    futures.append(await self.producer.send_batch(batch, topic, partition=partition))
                    batch = self.producer.create_batch()
                    if batch.append(key=row["key"], value=row["value"], timestamp=None, headers=headers) is None:
                        # Larger than a whole batch: the producer's own send sizes a batch for it (or refuses it).
                        futures.append(await self.producer.send(
                            topic, value=row["value"], key=row["key"], headers=headers, partition=partition
                        ))
            if batch.record_count():
                futures.append(await self.producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*futures)

    async def drain(self, conn: asyncpg.Connection) -> int:
        """Publish and delete every unpublished row (in id order); returns the number published.

        Each round deletes a slice of rows inside a transaction, publishes them and commits only after
        Kafka acknowledged all of them: a crash or a Kafka error rolls the delete back, so the rows stay
        and are published again (at least once; consumers' inboxes drop the duplicates).
        """
        published = 0
        while True:
            async with conn.transaction():
                # ``= ANY(ARRAY(subquery))``, not ``IN (subquery)``: once the table is analysed with a backlog,
                # the planner turns IN into a hash semi-join over a sequential scan of the whole outbox (dead
                # rows included until vacuum), so every slice cost O(backlog) and a relay that fell behind
                # fell further behind (the "relay stalls" in docs/KIT.md). This form is always 5000 probes of
                # the primary key.
                rows = await conn.fetch(
                    "DELETE FROM outbox WHERE id = ANY(ARRAY(SELECT id FROM outbox ORDER BY id LIMIT $1)) "
                    "RETURNING id, topic, key, header_blob, header_names, header_values, headers, value",
                    self.batch_rows,
                )
                rows.sort(key=lambda r: r["id"])  # RETURNING has no order; publish in id order
                await self._publish(rows)
            published += len(rows)
            self.published_total += len(rows)
            if self.metrics:
                self.metrics.outbox_published.inc(len(rows))
            if self._on_published is not None and rows:
                self._on_published(len(rows))
            if len(rows) < self.batch_rows:
                if self.metrics:
                    self.metrics.outbox_backlog.set(0)
                return published
