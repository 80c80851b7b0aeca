"""Helpers for services' integration tests (real Kafka + Postgres).

- ``isolated_settings(service, bootstrap, dsn, suffix)``: settings with a unique consumer group and topic
  prefix so parallel runs never collide, and 2 partitions per topic; the prefix is registered for clean-up:
  ``delete_registered_topics()`` deletes every registered prefix's topics, and the kit's pytest plugin
  (entry point ``loyalty_kit``) calls it when the test session ends, so runs leave no topics behind;
- ``fresh_database(admin_dsn)``: a throwaway database (dropped afterwards), DSN of its superuser;
- ``running(app)``: start a ServiceApp in-process, stop it afterwards;
- ``publish(bootstrap, envelopes, topic_prefix)`` and ``publish_raw``;
- every helper that connects to Kafka takes ``kafka_options`` (``settings.kafka_options()``) for secured brokers;
- ``TopicReader``: read everything on a topic from the beginning, ``wait_for(n)`` records.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from loyalty_contracts.envelope import Envelope, encode

from loyalty_kit.outbox import make_producer
from loyalty_kit.service import ServiceApp
from loyalty_kit.settings import ServiceSettings
from loyalty_kit.topics import delete_topics_with_prefix

log = logging.getLogger(__name__)

# (bootstrap, topic prefix) -> Kafka options, for every isolated run whose topics must be deleted at the end.
_CLEANUP: dict[tuple[str, str], dict[str, Any]] = {}


def register_topic_cleanup(settings: ServiceSettings) -> None:
    """Delete the topics under ``settings.topic_prefix`` when the test session ends (no-op without a prefix)."""
    if settings.topic_prefix:
        _CLEANUP[(settings.kafka_bootstrap, settings.topic_prefix)] = settings.kafka_options()


def _reachable(bootstrap: str) -> bool:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout=1):
            return True
    except (OSError, ValueError):
        return False


async def delete_registered_topics(prefixes: Iterable[str] | None = None) -> list[str]:
    """Delete the topics of every registered prefix (or only of ``prefixes``); returns their names.

    A broker that is gone (a throwaway stack already stopped) is skipped: its topics went with it.
    """
    only = set(prefixes) if prefixes is not None else None
    deleted: list[str] = []
    for (bootstrap, prefix), options in list(_CLEANUP.items()):
        if only is not None and prefix not in only:
            continue
        if _reachable(bootstrap):
            async with asyncio.timeout(30):
                deleted += await delete_topics_with_prefix(bootstrap, prefix, kafka_options=options)
        _CLEANUP.pop((bootstrap, prefix), None)
    return deleted


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def isolated_settings(service: str, bootstrap: str, dsn: str, suffix: str, **overrides: Any) -> ServiceSettings:
    values: dict[str, Any] = {
        "service": service,
        "kafka_bootstrap": bootstrap,
        "pg_dsn": dsn,
        "consumer_group": f"{service}-{suffix}",
        "topic_prefix": f"t{suffix}.",
        "batch_timeout_ms": 50,
        "outbox_poll_interval_s": 0.2,
        "timer_poll_interval_s": 0.2,
        "topic_partitions": 2,
    }
    values.update(overrides)
    settings = ServiceSettings(**values)
    register_topic_cleanup(settings)
    return settings


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


@asynccontextmanager
async def fresh_database(admin_dsn: str, prefix: str = "kit_") -> AsyncIterator[str]:
    """Create a uniquely named database; yields its superuser DSN; drops it (and its sessions) afterwards."""
    name = unique(prefix)
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield _with_database(admin_dsn, name)
    finally:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@asynccontextmanager
async def running(app: ServiceApp) -> AsyncIterator[ServiceApp]:
    """Start the app in-process, stop it afterwards; topics it creates under a prefix are deleted at the end."""
    if app.settings.create_topics:
        register_topic_cleanup(app.settings)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


def http_client(app: ServiceApp) -> httpx.AsyncClient:
    """An httpx client calling the app's ASGI routes in-process (start the app first)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app.asgi()), base_url="http://svc")


async def publish(
    bootstrap: str,
    envelopes: Iterable[Envelope],
    *,
    topic_prefix: str = "",
    producer: AIOKafkaProducer | None = None,
    kafka_options: Mapping[str, Any] | None = None,
) -> None:
    records = [encode(env) for env in envelopes]
    await publish_raw(
        bootstrap, [(topic_prefix + r.topic, r.key, r.value, r.headers) for r in records], producer=producer,
        kafka_options=kafka_options,
    )


async def publish_raw(
    bootstrap: str,
    records: Sequence[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]],
    *,
    producer: AIOKafkaProducer | None = None,
    kafka_options: Mapping[str, Any] | None = None,
) -> None:
    own = producer is None
    prod = producer or make_producer(bootstrap, **dict(kafka_options or {}))
    if own:
        await prod.start()
    try:
        futures = [await prod.send(t, key=k, value=v, headers=h) for t, k, v, h in records]
        await asyncio.gather(*futures)
    finally:
        if own:
            await prod.stop()


class TopicReader:
    """Collects every record of some topics from the beginning (no consumer group)."""

    def __init__(self, bootstrap: str, *topics: str, kafka_options: Mapping[str, Any] | None = None) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.kafka_options = dict(kafka_options or {})
        self.records: list[ConsumerRecord[bytes, bytes]] = []
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TopicReader:
        self._consumer = AIOKafkaConsumer(
            *self.topics, bootstrap_servers=self.bootstrap, group_id=None, auto_offset_reset="earliest",
            enable_auto_commit=False, metadata_max_age_ms=1000, **self.kafka_options,
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._pump())
        return self

    async def _pump(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=100)
            for recs in batch.values():
                self.records.extend(recs)

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    async def wait_for(
        self,
        count: int,
        *,
        within_s: float = 30.0,
        where: Callable[[ConsumerRecord[bytes, bytes]], bool] | None = None,
    ) -> list[ConsumerRecord[bytes, bytes]]:
        """Wait until at least ``count`` matching records arrived; raises TimeoutError with what was seen."""
        deadline = time.monotonic() + within_s
        while True:
            matching = [r for r in self.records if where is None or where(r)]
            if len(matching) >= count:
                return matching
            if time.monotonic() > deadline:
                raise TimeoutError(f"saw {len(matching)} of {count} records on {self.topics} in {within_s}s")
            await asyncio.sleep(0.05)


async def wait_until(predicate: Callable[[], Any], *, within_s: float = 30.0, interval: float = 0.05) -> None:
    """Poll a sync or async predicate until truthy."""
    deadline = time.monotonic() + within_s
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)
