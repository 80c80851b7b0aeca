"""Topic names as one ServiceApp sees them (optional prefix for isolated test runs) and topic creation."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from loyalty_contracts.catalogue import DEFAULT_PARTITIONS, DLQ_RETENTION_MS, TOPICS

log = logging.getLogger(__name__)

_SPECS = {spec.name: spec for spec in TOPICS}


async def ensure_topics(
    bootstrap: str,
    names: Iterable[str],
    *,
    prefix: str = "",
    replication_factor: int = 1,
    partitions: int | None = None,
    kafka_options: Mapping[str, Any] | None = None,
) -> None:
    """Create missing topics with the catalogue's partitions and retention (a no-op for existing ones).

    ``partitions`` overrides the catalogue's count (``settings.topic_partitions``: tests, local runs);
    ``kafka_options`` are the connection's security options (``settings.kafka_options()``).
    """
    wanted = sorted(set(names))
    if not wanted:
        return
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **dict(kafka_options or {}))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new: list[NewTopic] = []
        for name in wanted:
            if name in existing:
                continue
            spec = _SPECS.get(name[len(prefix):] if prefix and name.startswith(prefix) else name)
            count = partitions or (spec.partitions if spec else DEFAULT_PARTITIONS)
            retention = spec.retention_ms if spec else (DLQ_RETENTION_MS if ".dlq." in name else None)
            configs = {"retention.ms": str(retention)} if retention else {}
            new.append(
                NewTopic(
                    name, num_partitions=count, replication_factor=replication_factor, topic_configs=configs
                )
            )
        if new:
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass  # another replica created it first
            log.info("created topics", extra={"count": len(new)})
    finally:
        await admin.close()


async def delete_topics_with_prefix(
    bootstrap: str, prefix: str, *, kafka_options: Mapping[str, Any] | None = None
) -> list[str]:
    """Delete every topic whose name starts with ``prefix`` (test and benchmark clean-up); returns them.

    A non-empty prefix is required: this must never be able to delete the catalogue's topics.
    """
    if not prefix:
        raise ValueError("refusing to delete topics without a prefix")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **dict(kafka_options or {}))
    await admin.start()
    try:
        doomed = sorted(t for t in await admin.list_topics() if t.startswith(prefix))
        if doomed:
            await admin.delete_topics(doomed)
        return doomed
    finally:
        await admin.close()
