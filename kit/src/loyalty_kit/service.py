"""ServiceApp: the wiring every service uses.

    app = ServiceApp("tiers", settings, migrations_dir=Path(__file__).parent / "migrations")

    @app.batch_handler("loyalty.PurchaseMade.v1", "loyalty.PurchaseRefunded.v1")
    async def on_purchases(ctx: BatchContext) -> None: ...

    @app.timer_handler("tier-downgrade-check")
    async def on_downgrade(ctx: TimerContext, timers: list[Timer]) -> None: ...

    asgi = app.asgi()  # FastAPI: routers + /healthz /readyz /metrics; lifespan runs broker, relay, timers

Consumption uses FastStream's batch subscriber with ``AckPolicy.MANUAL``: the kit acks (commits offsets)
only after ``BatchProcessor.process`` returned, i.e. after the DB commit or the dead-letter acks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Container, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer, TopicPartition
from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import JSONResponse
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.kafka.message import KafkaAckableMessage
from loyalty_contracts.catalogue import topic_for, topics_produced_by
from loyalty_contracts.registry import EVENT_TYPES
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram

from loyalty_kit import inbox, migrations, roles
from loyalty_kit.batch import BatchHandler, BatchProcessor, PreparedBatch
from loyalty_kit.db import check_identifier, create_pool
from loyalty_kit.dlq import dlq_topic_name
from loyalty_kit.kafka import faststream_security
from loyalty_kit.logs import configure_logging
from loyalty_kit.metrics import KitMetrics
from loyalty_kit.outbox import OutboxRelay, make_producer
from loyalty_kit.relay_process import RelayProcess
from loyalty_kit.runtime import tune_gc
from loyalty_kit.settings import ServiceSettings
from loyalty_kit.telemetry import make_tracer_provider
from loyalty_kit.timers import TimerHandler, TimerLoop, count_due
from loyalty_kit.topics import ensure_topics

log = logging.getLogger(__name__)


async def _no_decode(_: Any) -> None:
    """Bodies are decoded by the kit (contracts.decode), not by FastStream."""
    return None


class ServiceApp:
    def __init__(
        self,
        name: str,
        settings: ServiceSettings | None = None,
        migrations_dir: Path | None = None,
        *,
        known_tenants: Container[str] | None = None,
        tracer_provider: TracerProvider | None = None,
        title: str | None = None,
        faststream_middlewares: bool = True,
    ) -> None:
        self.name = check_identifier(name)
        self.settings = settings or ServiceSettings(service=name)
        self.migrations_dir = migrations_dir
        self.known_tenants = known_tenants
        self.title = title or f"loyalty {name}"
        self.metrics = KitMetrics(name)
        self.tracer_provider = tracer_provider or make_tracer_provider(name, self.settings.otel_exporter_endpoint)
        self.tracer = self.tracer_provider.get_tracer("loyalty_kit")
        self.faststream_middlewares = faststream_middlewares
        self._batch_handlers: dict[str, BatchHandler] = {}
        self._timer_handlers: dict[str, TimerHandler] = {}
        self._routers: list[tuple[APIRouter, dict[str, Any]]] = []
        self.pool: asyncpg.Pool | None = None
        self.producer: AIOKafkaProducer | None = None
        self.broker: KafkaBroker | None = None
        self.relay: OutboxRelay | RelayProcess | None = None
        self.timers: TimerLoop | None = None
        self.processor: BatchProcessor | None = None
        self.dsn: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stage: asyncio.Queue[tuple[Any, PreparedBatch]] = asyncio.Queue(maxsize=1)
        self._pending_offsets: dict[Any, dict[TopicPartition, int]] = {}
        self._commit_wanted = asyncio.Event()
        self._pending_settle: dict[tuple[str, int], bool] = {}  # event clock: partition flags not yet settled
        self._settle_wanted = asyncio.Event()
        self._started = False
        self._fastapi: FastAPI | None = None
        self._subscriber: Any = None  # the batch subscriber (its consumer, for the batch parser)

    # --- registration -------------------------------------------------------------------------------
    def batch_handler(self, *ce_types: str) -> Callable[[BatchHandler], BatchHandler]:
        if not ce_types:
            raise ValueError("batch_handler needs at least one ce_type")
        for ce_type in ce_types:
            if ce_type not in EVENT_TYPES:
                raise KeyError(f"unknown event type {ce_type!r}")
            if ce_type in self._batch_handlers:
                raise ValueError(f"{ce_type} already has a batch handler")

        def register(fn: BatchHandler) -> BatchHandler:
            for ce_type in ce_types:
                self._batch_handlers[ce_type] = fn
            return fn

        return register

    def timer_handler(self, kind: str) -> Callable[[TimerHandler], TimerHandler]:
        if kind in self._timer_handlers:
            raise ValueError(f"timer kind {kind!r} already has a handler")

        def register(fn: TimerHandler) -> TimerHandler:
            self._timer_handlers[kind] = fn
            return fn

        return register

    def include_router(self, router: APIRouter, **kwargs: Any) -> None:
        self._routers.append((router, kwargs))
        if self._fastapi is not None:
            self._fastapi.include_router(router, **kwargs)

    # --- service metrics (served by /metrics with the kit's) ---------------------------------------------
    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        """Register (or get) a service counter on the app's registry, e.g.
        ``app.counter("loyalty_tier_changes_total", "Tier changes", ["to_tier"]).labels(tier).inc()``."""
        return self.metrics.counter(name, documentation, labels)

    def gauge(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
        return self.metrics.gauge(name, documentation, labels)

    def histogram(
        self, name: str, documentation: str, labels: Sequence[str] = (),
        buckets: Sequence[float] = Histogram.DEFAULT_BUCKETS,
    ) -> Histogram:
        return self.metrics.histogram(name, documentation, labels, buckets)

    # --- topics ---------------------------------------------------------------------------------------
    def topic(self, name: str) -> str:
        return self.settings.topic_prefix + name

    @property
    def consumed_topics(self) -> list[str]:
        return sorted({self.topic(topic_for(t)) for t in self._batch_handlers})

    @property
    def dlq_topic(self) -> str:
        return dlq_topic_name(self.name, self.settings.topic_prefix)

    def _produced_topics(self) -> list[str]:
        try:
            return [self.topic(t) for t in topics_produced_by(self.name)]
        except KeyError:
            return []  # a service outside the catalogue (tests) creates its topics itself

    # --- lifecycle ------------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._started:
            return
        try:
            await self._start()
        except BaseException:
            self._started = True  # let stop() release whatever was acquired
            await self.stop()
            raise

    async def _start(self) -> None:
        s = self.settings
        kafka_options = s.kafka_options()  # raises KafkaSecurityError on contradicting settings, before any I/O
        self.dsn = s.pg_dsn
        if s.pg_admin_dsn:
            self.dsn = await roles.provision(s.pg_admin_dsn, self.name, s.pg_password)
        self.pool = await create_pool(self.dsn, self.name, min_size=2, max_size=s.pg_pool_max)
        await migrations.apply(self.pool, self.name, self.migrations_dir)
        if s.create_topics:
            await ensure_topics(
                s.kafka_bootstrap, [*self.consumed_topics, self.dlq_topic, *self._produced_topics()],
                prefix=s.topic_prefix, replication_factor=s.topic_replication_factor,
                partitions=s.topic_partitions, kafka_options=kafka_options,
            )
        self.producer = make_producer(s.kafka_bootstrap, **kafka_options)
        await self.producer.start()

        if s.outbox_relay == "process":
            self.relay = RelayProcess(s, self.dsn, metrics=self.metrics)
        else:
            self.relay = OutboxRelay(
                self.pool, self.name, self.producer, poll_interval_s=s.outbox_poll_interval_s, metrics=self.metrics
            )
        self.timers = TimerLoop(
            service=self.name, pool=self.pool, handlers=self._timer_handlers, tracer=self.tracer,
            metrics=self.metrics, clock=s.timer_clock, poll_interval_s=s.timer_poll_interval_s,
            topic_prefix=s.topic_prefix, on_committed=self.relay.wake,
        )

        def after_batch_commit() -> None:
            assert self.relay is not None and self.timers is not None
            self.relay.wake()
            if s.timer_clock == "event":
                self.timers.wake()  # the watermark moved; timers may be due

        self.processor = BatchProcessor(
            service=self.name, pool=self.pool, handlers=self._batch_handlers,
            tracer=self.tracer, metrics=self.metrics, dlq_topic=self.dlq_topic, clock=s.timer_clock,
            known_tenants=self.known_tenants, topic_prefix=s.topic_prefix, on_committed=after_batch_commit,
            on_settle=self._queue_settle,
        )
        self._tasks = [
            asyncio.create_task(self.relay.run(), name=f"{self.name}-outbox-relay"),
            asyncio.create_task(self.timers.run(), name=f"{self.name}-timers"),
            asyncio.create_task(self._housekeeping(), name=f"{self.name}-housekeeping"),
            asyncio.create_task(self._db_stage(), name=f"{self.name}-batch-db-stage"),
            asyncio.create_task(self._run_when_set(self._commit_wanted, self._commit_pending),
                                name=f"{self.name}-offset-committer"),
            asyncio.create_task(self._run_when_set(self._settle_wanted, self._settle_pending),
                                name=f"{self.name}-clock-settler"),
        ]
        if self._batch_handlers:
            self.broker = self._make_broker()
            await self.broker.start()
        self._started = True
        log.info("service started", extra={"service": self.name, "group_id": s.group_id})

    def _make_broker(self) -> KafkaBroker:
        s = self.settings
        middlewares: list[Any] = []
        if self.faststream_middlewares:
            from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware
            from faststream.kafka.prometheus import KafkaPrometheusMiddleware

            middlewares = [
                KafkaTelemetryMiddleware(tracer_provider=self.tracer_provider),
                KafkaPrometheusMiddleware(registry=self.metrics.registry, app_name=self.name),
            ]
        broker_logger = logging.getLogger(f"faststream.{self.name}")
        # FastStream logs every batch at INFO ("Received"/"Processed"); the kit logs what matters itself.
        broker_logger.setLevel(max(logging.WARNING, logging.getLogger().level))
        broker = KafkaBroker(
            s.kafka_bootstrap, middlewares=middlewares, logger=broker_logger, security=faststream_security(s)
        )
        subscriber = broker.subscriber(
            *self.consumed_topics,
            group_id=s.group_id,
            batch=True,
            max_records=s.batch_max_records,
            batch_timeout_ms=s.batch_timeout_ms,
            ack_policy=AckPolicy.MANUAL,
            auto_offset_reset=s.auto_offset_reset,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            parser=self._parse_batch,
            decoder=_no_decode,
        )
        self._subscriber = subscriber

        @subscriber
        async def on_batch(msg: KafkaMessage) -> None:
            await self._on_batch(msg)

        return broker

    async def _parse_batch(self, records: tuple[Any, ...]) -> KafkaAckableMessage:
        """The batch as FastStream's handler sees it, without FastStream's per-record work.

        Its own batch parser turns every record's headers into a dict and its telemetry then extracts W3C
        baggage and span links from each (~1.7 us per record, ~2 % of a service's CPU); the kit decodes the
        raw records itself (``_on_batch``), and its events carry their trace context in ``ce_traceparent``.
        The record values stay as the body (FastStream's metrics count their size)."""
        first, last = records[0], records[-1]
        return KafkaAckableMessage(
            records, [r.value or b"" for r in records],
            message_id=f"{first.offset}-{last.offset}-{first.timestamp}",
            consumer=self._subscriber.consumer,
        )

    async def _on_batch(self, msg: Any) -> None:
        """FastStream handler: decode now, queue for the DB stage, return to fetch the next batch.

        Two stages overlap the CPU work of batch N+1 (decode) with the database work of batch N. The queue
        holds one batch, so at most two are in flight; offsets are committed by the DB stage, in order.
        """
        assert self.processor is not None
        records = msg.raw_message if isinstance(msg.raw_message, tuple) else (msg.raw_message,)
        batch = await self.processor.prepare_in_slices(records)
        if self.settings.timer_clock == "event":
            batch.behind = await self._partition_flags(msg.consumer)
        await self._stage.put((msg.consumer, batch))

    @staticmethod
    async def _partition_flags(consumer: Any) -> dict[tuple[str, int], bool]:
        """Event clock: for every partition assigned to this consumer, whether it has records not yet handed
        out (its high watermark from the latest fetch past the consumer's position). Taken when a batch is
        handed out, settled once that batch is applied: every record handed out before it is applied by then.
        An unknown high watermark or position counts as behind (a partition not fetched yet)."""
        flags: dict[tuple[str, int], bool] = {}
        for tp in list(consumer.assignment()):
            try:
                highwater = consumer.highwater(tp)
                position = await consumer.position(tp) if highwater is not None else None
            except Exception:  # revoked meanwhile (a rebalance): its next owner reports it
                continue
            flags[(tp.topic, tp.partition)] = highwater is None or position is None or highwater > position
        return flags

    async def _db_stage(self) -> None:
        assert self.processor is not None
        while True:
            consumer, batch = await self._stage.get()
            delay = 1.0
            while True:
                try:
                    await self.processor.finish(batch)
                    break
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # A kit bug, not a data problem (those are dead-lettered): never skip the batch.
                    log.exception("batch processing failed; retrying", extra={"batch_size": len(batch.records)})
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
            last = self._last_offsets(batch.records)  # once per batch: it walks every record
            self._queue_offset_commit(consumer, last)
            self._record_lag(consumer, last)

    @staticmethod
    def _last_offsets(records: Sequence[Any]) -> dict[tuple[str, int], int]:
        # A batch lists each partition's records in offset order (FastStream flattens getmany's per-partition
        # lists), so the last one seen per partition is the highest.
        return {(rec.topic, rec.partition): rec.offset for rec in records}

    def _queue_offset_commit(self, consumer: Any, last: dict[tuple[str, int], int]) -> None:
        """Hand a committed batch's offsets to the committer task and go on with the next batch.

        Awaiting the commit here left the DB stage idle for a Kafka round trip per batch (~10 ms of
        ~60 ms per 1000 events under load). The committer coalesces: it always commits the newest offsets
        it was given, one commit at a time, so committed offsets only move forward, and only ever past
        batches whose transaction has committed.
        """
        pending = self._pending_offsets.setdefault(consumer, {})
        for (topic, partition), offset in last.items():
            pending[TopicPartition(topic, partition)] = offset + 1
        self._commit_wanted.set()

    def _queue_settle(self, behind: dict[tuple[str, int], bool]) -> None:
        """Event clock: hand a finished batch's partition flags to the settler task and go on with the next
        batch (settling in the DB stage cost it a transaction of several round trips per batch). Newer flags
        replace older ones."""
        self._pending_settle.update(behind)
        self._settle_wanted.set()

    async def _settle_pending(self) -> None:
        assert self.processor is not None and self.timers is not None
        self._settle_wanted.clear()
        pending, self._pending_settle = self._pending_settle, {}
        if not pending:
            return
        try:
            await self.processor.settle_clocks(pending, self.consumed_topics)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Settling again later gives the same clocks (recomputed from the tables): keep the flags, retry.
            log.warning("event clock settle failed; retrying", extra={"error": type(exc).__name__})
            for partition, flag in pending.items():
                self._pending_settle.setdefault(partition, flag)
            await asyncio.sleep(1.0)
            self._settle_wanted.set()

    @staticmethod
    async def _run_when_set(wanted: asyncio.Event, action: Callable[[], Awaitable[None]]) -> None:
        """A task that runs ``action`` whenever ``wanted`` is set; ``action`` clears it first, so requests
        made while it runs coalesce into one more run (the offset committer, the clock settler)."""
        while True:
            await wanted.wait()
            await action()

    async def _commit_pending(self) -> None:
        self._commit_wanted.clear()
        pending, self._pending_offsets = self._pending_offsets, {}
        for consumer, offsets in pending.items():
            await self._commit_offsets(consumer, offsets)

    async def _commit_offsets(self, consumer: Any, offsets: dict[TopicPartition, int]) -> None:
        """Commit exactly these offsets (not the consumer's position, which may be a batch ahead)."""
        try:
            await consumer.commit(offsets)
        except Exception as exc:
            # Typically a rebalance: the next owner re-reads these records and the inbox absorbs them.
            log.warning("offset commit failed", extra={"error": repr(exc)})

    def _record_lag(self, consumer: Any, last: dict[tuple[str, int], int]) -> None:
        for (topic, partition), offset in last.items():
            with contextlib.suppress(Exception):
                highwater = consumer.highwater(TopicPartition(topic, partition))
                if highwater is not None:
                    self.metrics.consumer_lag.labels(topic, str(partition)).set(max(0, highwater - offset - 1))

    async def _housekeeping(self) -> None:
        """Refresh backlog gauges every few seconds; prune the inbox hourly."""
        assert self.pool is not None
        last_prune = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with self.pool.acquire() as conn:
                    self.metrics.outbox_backlog.set(await conn.fetchval("SELECT count(*) FROM outbox"))
                    self.metrics.timers_due.set(await count_due(conn, self.settings.timer_clock))
                    if loop.time() - last_prune > 3600:
                        await inbox.prune(conn, timedelta(days=self.settings.inbox_retention_days))
                        last_prune = loop.time()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("housekeeping failed", extra={"error": type(exc).__name__})
            await asyncio.sleep(5.0)

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        if self._pending_offsets:
            # Batches whose transaction committed: tell Kafka before the consumer closes (else they are
            # re-read after a restart and absorbed by the inbox; correct, but avoidable).
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self._commit_pending()
        if self.broker is not None:
            await self.broker.stop()
            self.broker = None
        if self._pending_settle:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self._settle_pending()  # the last batches' clocks, before the pool closes
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        self._stage = asyncio.Queue(maxsize=1)  # a queued, uncommitted batch is re-read after restart
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None
        if self.pool is not None:
            await self.pool.close()
            self.pool = None
        log.info("service stopped", extra={"service": self.name})

    # --- health ---------------------------------------------------------------------------------------
    async def readiness(self) -> list[str]:
        """Reasons the service is not ready (empty when ready)."""
        if not self._started or self.pool is None or self.producer is None:
            return ["service not started"]
        reasons: list[str] = []
        try:
            async with asyncio.timeout(3):
                async with self.pool.acquire() as conn:
                    await conn.fetchval("SELECT 1")
                    missing = await migrations.pending(conn, self.name, self.migrations_dir)
                    if missing:
                        reasons.append(f"migrations not applied: {', '.join(missing)}")
        except Exception as exc:
            reasons.append(f"postgres unreachable: {type(exc).__name__}: {exc}")
        try:
            async with asyncio.timeout(3):
                await self.producer.client.fetch_all_metadata()
        except Exception as exc:
            reasons.append(f"kafka unreachable: {type(exc).__name__}: {exc}")
        for task in self._tasks:
            if task.done():
                reasons.append(f"background task {task.get_name()} stopped")
        return reasons

    def asgi(self) -> FastAPI:
        """The service's HTTP app; its lifespan starts and stops the service (unless already started)."""
        if self._fastapi is not None:
            return self._fastapi

        @asynccontextmanager
        async def lifespan(_: FastAPI) -> AsyncIterator[None]:
            owned = not self._started
            if owned:
                await self.start()
            try:
                yield
            finally:
                if owned:
                    await self.stop()

        api = FastAPI(title=self.title, lifespan=lifespan)

        @api.get("/healthz", include_in_schema=False)
        async def healthz() -> dict[str, str]:
            return {"status": "ok", "service": self.name}

        @api.get("/readyz", include_in_schema=False)
        async def readyz() -> JSONResponse:
            reasons = await self.readiness()
            if reasons:
                return JSONResponse({"status": "not ready", "reasons": reasons}, status_code=503)
            return JSONResponse({"status": "ready"})

        @api.get("/metrics", include_in_schema=False)
        async def metrics() -> Response:
            return Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)

        for router, kwargs in self._routers:
            api.include_router(router, **kwargs)
        self._fastapi = api
        return api

    def run(self) -> None:
        """Entry point for ``python -m loyalty_<svc>``: JSON logs, then uvicorn serving ``asgi()``."""
        import uvicorn

        configure_logging(self.name, self.settings.log_level)
        tune_gc()
        uvicorn.run(
            self.asgi(), host=self.settings.http_host, port=self.settings.http_port, log_config=None,
            access_log=False,
        )
