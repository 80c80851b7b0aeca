"""The chart's KafkaUser ACLs applied to a real broker with SCRAM and the StandardAuthorizer (as Strimzi's
User Operator would apply them): each service can do exactly its work with the kit's own producer
settings and a consumer group like the kit's, and is refused everything else; the partner user only reads
public topics; the retailer user only writes inputs."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    TopicAuthorizationFailedError,
)
from deploy_chart import SERVICES, by_kind, render
from loyalty_contracts import catalogue
from loyalty_kit.outbox import make_producer
from secured_kafka import SecuredKafka, create_acls, start_secured_kafka

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def chart_users() -> dict[str, dict[str, Any]]:
    return {u["metadata"]["name"]: u for u in by_kind(render(), "KafkaUser")}


@pytest.fixture(scope="module")
def passwords(chart_users: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {name: uuid.uuid4().hex for name in chart_users}


@pytest.fixture(scope="module")
def broker(
    tmp_path_factory: pytest.TempPathFactory, chart_users: dict[str, dict[str, Any]], passwords: dict[str, str]
) -> Iterator[SecuredKafka]:
    work = tmp_path_factory.mktemp("secured-kafka")
    kafka = start_secured_kafka(work, passwords)
    try:
        topics = [t["spec"]["topicName"] for t in by_kind(render(), "KafkaTopic")]
        asyncio.run(_create_and_seed(kafka.internal_bootstrap, topics))
        lines = [
            f"User:{name}|{rule['resource']['type']}|{rule['resource']['name']}|"
            f"{rule['resource']['patternType']}|{op}"
            for name, user in chart_users.items()
            for rule in user["spec"]["authorization"]["acls"]
            for op in rule["operations"]
        ]
        create_acls(kafka, lines, work)
        yield kafka
    finally:
        kafka.stop()


async def _create_and_seed(bootstrap: str, topics: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, num_partitions=1, replication_factor=1) for t in topics])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for topic in topics:
            await producer.send_and_wait(topic, b"seed", key=b"customer-1")
    finally:
        await producer.stop()


def sasl(name: str, password: str) -> dict[str, str]:
    return {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": name, "sasl_plain_password": password}


async def consume(broker: SecuredKafka, user: str, password: str, topics: list[str], group: str) -> set[str]:
    """Join `group`, read until every topic gave a record (or 20 s), commit; returns the topics read."""
    consumer = AIOKafkaConsumer(
        *topics, bootstrap_servers=broker.client_bootstrap, group_id=group, auto_offset_reset="earliest",
        enable_auto_commit=False, **sasl(user, password),
    )
    seen: set[str] = set()
    try:
        await consumer.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while seen != set(topics) and loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            seen |= {tp.topic for tp, records in batches.items() if records}
        await consumer.commit()
    finally:
        await consumer.stop()
    return seen


async def produce(broker: SecuredKafka, user: str, password: str, topic: str) -> None:
    producer = make_producer(broker.client_bootstrap, request_timeout_ms=10_000, **sasl(user, password))
    try:
        await producer.start()
        await asyncio.wait_for(producer.send_and_wait(topic, b"{}", key=b"customer-1"), timeout=15)
    finally:
        await producer.stop()


@pytest.mark.parametrize("service", SERVICES)
async def test_service_does_its_work_with_its_acls(
    broker: SecuredKafka, passwords: dict[str, str], service: str
) -> None:
    user = f"t-loyalty-suite-{service}"
    consumed = catalogue.topics_consumed_by(service)
    assert await consume(broker, user, passwords[user], consumed, f"loyalty-{service}") == set(consumed)
    for topic in [*catalogue.topics_produced_by(service), catalogue.dead_letter_topic(service)]:
        await produce(broker, user, passwords[user], topic)  # the kit's idempotent, acks=all producer


@pytest.mark.parametrize("service", SERVICES)
async def test_service_is_refused_everything_else(
    broker: SecuredKafka, passwords: dict[str, str], service: str
) -> None:
    user = f"t-loyalty-suite-{service}"
    not_consumed = next(t.name for t in catalogue.TOPICS if service not in t.consumers)
    not_produced = next(t.name for t in catalogue.TOPICS if service not in t.producers)
    other = next(s for s in SERVICES if s != service)
    with pytest.raises(TopicAuthorizationFailedError):
        await consume(broker, user, passwords[user], [not_consumed], f"loyalty-{service}")
    with pytest.raises(GroupAuthorizationFailedError):  # another service's consumer group
        await consume(broker, user, passwords[user], catalogue.topics_consumed_by(service)[:1], f"loyalty-{other}")
    with pytest.raises(TopicAuthorizationFailedError):
        await produce(broker, user, passwords[user], not_produced)


async def test_partner_reads_public_topics_only(broker: SecuredKafka, passwords: dict[str, str]) -> None:
    public = [t.name for t in catalogue.TOPICS if t.public]
    private = next(t.name for t in catalogue.TOPICS if not t.public)
    password = passwords["loyalty-partner"]
    assert await consume(broker, "loyalty-partner", password, public, "partner-crm") == set(public)
    with pytest.raises(TopicAuthorizationFailedError):
        await consume(broker, "loyalty-partner", password, [private], "partner-crm")
    with pytest.raises(GroupAuthorizationFailedError):  # only groups with the partner prefix
        await consume(broker, "loyalty-partner", password, public[:1], "loyalty-tiers")
    # With Write on no topic at all, the idempotent producer is refused its producer id up front.
    with pytest.raises(ClusterAuthorizationFailedError):
        await produce(broker, "loyalty-partner", password, public[0])


async def test_retailer_writes_inputs_only(broker: SecuredKafka, passwords: dict[str, str]) -> None:
    password = passwords["loyalty-retailer"]
    for topic in catalogue.topics_produced_by(catalogue.RETAILER):
        await produce(broker, "loyalty-retailer", password, topic)
    with pytest.raises(TopicAuthorizationFailedError):
        await produce(broker, "loyalty-retailer", password, catalogue.topics_produced_by("tiers")[0])
    with pytest.raises((TopicAuthorizationFailedError, GroupAuthorizationFailedError)):
        await consume(broker, "loyalty-retailer", password, catalogue.topics_produced_by(catalogue.RETAILER)[:1],
                      "partner-x")
