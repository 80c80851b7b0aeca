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
from collections.abc import Sequence

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from loyalty_contracts.envelope import KafkaRecord

from loyalty_kit.db import is_transient_db_error
from loyalty_kit.metrics import KitMetrics

log = logging.getLogger(__name__)


def notify_channel(schema: str) -> str:
    return f"loyalty_outbox_{schema}"


def _headers_from_row(row: asyncpg.Record) -> list[tuple[str, bytes]]:
    if row["header_names"] or row["headers"] is None:
        return list(zip(row["header_names"], row["header_values"], strict=True))
    # Rows written before migration 0002 kept JSON [[name, latin-1 text]].
    return [(name, value.encode("latin-1")) for name, value in json.loads(row["headers"])]


OUTBOX_COLUMNS = ["topic", "key", "header_names", "header_values", "value"]


async def insert(conn: asyncpg.Connection, records: Sequence[KafkaRecord], schema: str) -> None:
    """Binary COPY into the outbox in the caller's transaction, plus a NOTIFY delivered when it commits."""
    if not records:
        return
    await conn.copy_records_to_table(
        "outbox",
        records=[(r.topic, r.key, [h[0] for h in r.headers], [h[1] for h in r.headers], r.value) for r in records],
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
    ) -> None:
        self.pool = pool
        self.schema = schema
        self.producer = producer
        self.poll_interval_s = poll_interval_s
        self.batch_rows = batch_rows
        self.metrics = metrics
        self.is_leader = False
        self.published_total = 0
        self._wake = asyncio.Event()
        self._stopping = False

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

    async def drain(self, conn: asyncpg.Connection) -> int:
        """Publish and delete every unpublished row (in id order); returns the number published.

        Each round deletes a slice of rows inside a transaction, publishes them and commits only after
        Kafka acknowledged all of them: a crash or a Kafka error rolls the delete back, so the rows stay
        and are published again (at least once; consumers' inboxes drop the duplicates).
        """
        published = 0
        while True:
            async with conn.transaction():
                rows = await conn.fetch(
                    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT $1) "
                    "RETURNING id, topic, key, header_names, header_values, headers, value",
                    self.batch_rows,
                )
                rows.sort(key=lambda r: r["id"])  # RETURNING has no order; publish in id order
                futures = [
                    await self.producer.send(
                        r["topic"], value=r["value"], key=r["key"], headers=_headers_from_row(r)
                    )
                    for r in rows
                ]
                await asyncio.gather(*futures)
            published += len(rows)
            self.published_total += len(rows)
            if self.metrics:
                self.metrics.outbox_published.inc(len(rows))
            if len(rows) < self.batch_rows:
                if self.metrics:
                    self.metrics.outbox_backlog.set(0)
                return published
