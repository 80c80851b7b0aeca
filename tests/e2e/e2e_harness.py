"""What the end-to-end tests need around the four real service processes.

- `BackgroundLoop`: an event loop in its own thread for the local sinks and the OTLP receiver, so they answer
  whatever the test's own loop is doing (blocking waits included).
- `OtlpReceiver`: a tiny OTLP/HTTP trace receiver (POST /v1/traces, protobuf) that keeps every span.
- `KafkaTail`: reads every catalogue and dead-letter topic from the moment it starts (no consumer group) and
  keeps the records whose customer id carries this run's prefix.
- `start_groups_at_end`: commits a fresh consumer group at the current end of its topics, so services with
  per-run groups start at "now" whatever the shared broker already holds.
"""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from loyalty_contracts.envelope import DecodeError, Envelope, decode
from loyalty_suite.demo.retailer import catalogue_topic_names, topic_partitions
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

T = TypeVar("T")


class BackgroundLoop:
    """An asyncio loop running in a daemon thread; `run(coro)` waits for a coroutine scheduled on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="e2e-sinks", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 30.0) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


# ------------------------------------------------------------------------------------------------ OTLP


@dataclass(frozen=True)
class SpanRecord:
    service: str
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str  # "" for a root span
    name: str


class OtlpReceiver:
    """OTLP/HTTP traces endpoint on 127.0.0.1: decodes ExportTraceServiceRequest bodies into `SpanRecord`s."""

    def __init__(self) -> None:
        self._spans: list[SpanRecord] = []
        self._lock = threading.Lock()
        self._server: asyncio.AbstractServer | None = None
        self.requests = 0
        self.errors: list[str] = []
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spans(self) -> list[SpanRecord]:
        with self._lock:
            return list(self._spans)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    break
                method, target, _ = [*request_line.decode("latin-1").split(), "", "", ""][:3]
                headers: dict[str, str] = {}
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                status, payload = self._handle(method, target, headers, body)
                writer.write(f"HTTP/1.1 {status}\r\nContent-Type: application/x-protobuf\r\n"
                             f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    def _handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> tuple[str, bytes]:
        if method != "POST" or target.split("?", 1)[0] != "/v1/traces":
            return "404 Not Found", b""
        self.requests += 1
        try:
            if headers.get("content-encoding", "").lower() == "gzip":
                body = gzip.decompress(body)
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
        except Exception as exc:  # a body we cannot read is a test failure later, with why
            self.errors.append(f"{type(exc).__name__}: {exc}")
            return "400 Bad Request", b""
        found: list[SpanRecord] = []
        for resource_spans in request.resource_spans:
            service = next((a.value.string_value for a in resource_spans.resource.attributes
                            if a.key == "service.name"), "")
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.append(SpanRecord(service, span.trace_id.hex(), span.span_id.hex(),
                                            span.parent_span_id.hex(), span.name))
        with self._lock:
            self._spans.extend(found)
        return "200 OK", ExportTraceServiceResponse().SerializeToString()


# ------------------------------------------------------------------------------------------------ Kafka


@dataclass
class Seen:
    topic: str
    env: Envelope
    headers: dict[str, bytes]

    @property
    def trace_id(self) -> str | None:
        parts = (self.env.traceparent or "").split("-")
        return parts[1] if len(parts) == 4 else None


@dataclass
class KafkaTail:
    """Every catalogue + DLQ record from `start()` on whose customer id starts with `prefix`."""

    bootstrap: str
    prefix: str
    records: list[Seen] = field(default_factory=list)
    copies: Counter[str] = field(default_factory=Counter)  # topic/ce_id -> times read
    undecodable: int = 0
    _consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                          enable_auto_commit=False, max_partition_fetch_bytes=8 * 1024 * 1024)
        await self._consumer.start()
        partitions = await topic_partitions(self.bootstrap, catalogue_topic_names())
        self._consumer.assign(partitions)
        await self._consumer.seek_to_end(*partitions)
        for tp in partitions:  # resolve the end offsets now, before anything is published
            await self._consumer.position(tp)

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def poll(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=100, max_records=2000)
            if not batches:
                return
            for records in batches.values():
                for record in records:
                    self._keep(record)

    def _keep(self, record: Any) -> None:
        key = (record.key or b"").decode(errors="replace")
        if not key.startswith(self.prefix):
            return
        headers = {k: v for k, v in record.headers}
        try:
            env = decode(record.key, record.value, list(record.headers))
        except DecodeError:
            self.undecodable += 1
            return
        self.copies[f"{record.topic}/{env.id}"] += 1
        if self.copies[f"{record.topic}/{env.id}"] == 1:
            self.records.append(Seen(record.topic, env, headers))

    def of(self, event_type: str, customer_id: str | None = None, topic_prefix: str = "loyalty.") -> list[Seen]:
        return [s for s in self.records if s.env.data.event_type == event_type and s.topic.startswith(topic_prefix)
                and (customer_id is None or s.env.data.customer_id == customer_id)]

    def dead_letters(self) -> list[Seen]:
        return [s for s in self.records if s.topic.startswith("loyalty.dlq.")]

    async def wait_for(self, find: Callable[[], T | None], what: str, timeout_s: float = 60.0) -> T:
        deadline = time.monotonic() + timeout_s
        while True:
            await self.poll()
            found = find()
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"waited {timeout_s:.0f}s for {what}; nothing matched")
            await asyncio.sleep(0.2)


async def start_groups_at_end(bootstrap: str, group: str, topics: Iterable[str]) -> None:
    """Commit `group` at the current end offset of every partition of `topics`."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions: list[TopicPartition] = await topic_partitions(bootstrap, topics)
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        await consumer.commit({tp: ends[tp] for tp in partitions})
    finally:
        await consumer.stop()


async def eventually(check: Callable[[], Awaitable[T | None]], what: str, timeout_s: float = 60.0) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        found = await check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout_s:.0f}s for {what}")
        await asyncio.sleep(0.3)


async def partition_lag(bootstrap: str, group: str) -> dict[str, tuple[int, int]]:
    """Partitions where `group` is behind: "topic/partition" -> (committed offset, end offset)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        ends = await consumer.end_offsets(list(committed))
        return {f"{tp.topic}/{tp.partition}": (meta.offset, ends[tp]) for tp, meta in committed.items()
                if ends[tp] > meta.offset}
    finally:
        await consumer.stop()
        await admin.close()


def subscribed_topics(service: str) -> list[str]:
    """The topics a service's batch handlers subscribe to: the catalogue's consumers, which
    tests/suite/test_catalogue_matches_services.py proves equal to each service's own declaration."""
    from loyalty_contracts.catalogue import topics_consumed_by

    return sorted(topics_consumed_by(service))


async def delete_groups(bootstrap: str, groups: Iterable[str]) -> dict[str, int]:
    """Delete the run's (empty) consumer groups; returns the broker's error code per group (0: deleted).

    aiokafka's admin client has no DeleteGroups call, so the request goes to each group's coordinator directly.
    """
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.protocol.admin import DeleteGroupsRequest

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    errors: dict[str, int] = {}
    try:
        for group in groups:
            coordinator = await admin.find_coordinator(group)
            response = await admin._send_request(DeleteGroupsRequest([group]), coordinator)
            errors.update({name: code for name, code in response.results})
    finally:
        await admin.close()
    return errors
