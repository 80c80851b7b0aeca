"""A topic prefix per test with one-partition topics, deleted afterwards: the shared Kafka must not pile up
partitions (a dev broker ran out of heap with thousands of test partitions)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from loyalty_suite.demo.retailer import catalogue_topic_names


@pytest.fixture
async def demo_prefix(kafka_bootstrap: str, unique_suffix: str) -> AsyncIterator[str]:
    """Every catalogue + dead-letter topic under a fresh prefix, one partition each (ensure_topics skips them)."""
    prefix = f"demo-{unique_suffix}."
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap, request_timeout_ms=60_000)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1) for name in catalogue_topic_names(prefix)])
        yield prefix
    finally:
        mine = [t for t in await admin.list_topics() if t.startswith(prefix)]
        for start in range(0, len(mine), 50):
            await admin.delete_topics(mine[start:start + 50], timeout_ms=60_000)
        await admin.close()
