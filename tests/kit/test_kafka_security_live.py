"""A ServiceApp behind SCRAM-SHA-512: it creates its topics, consumes, emits through the outbox relay and
dead-letters with nothing but the LOYALTY_KAFKA_* security settings; the DLQ library and the test helpers
connect the same way; a wrong password is refused. The broker's only client listener is SASL, so any
client the kit built without the settings would fail to connect."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.errors import KafkaError
from kit_counter_service import MILESTONE, PURCHASE, build
from loyalty_contracts.catalogue import topic_for
from loyalty_contracts.envelope import encode
from loyalty_kit.dlq import list_dead_letters, replay_dead_letters
from loyalty_kit.testing import TopicReader, isolated_settings, publish, publish_raw, running, wait_until
from loyalty_kit.topics import ensure_topics
from loyalty_suite.stack.secured import SecuredKafka as ScramKafka
from loyalty_suite.stack.secured import start_secured_kafka as start_scram_kafka
from test_pipeline import counts, purchases

USER, PASSWORD = "loyalty-kt", uuid.uuid4().hex


@pytest.fixture(scope="module")
def scram_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScramKafka]:
    broker = start_scram_kafka(tmp_path_factory.mktemp("scram-kafka"), {USER: PASSWORD})
    try:
        yield broker
    finally:
        broker.stop()


def scram(password: str = PASSWORD) -> dict[str, str]:
    return {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "SCRAM-SHA-512",
            "kafka_sasl_username": USER, "kafka_sasl_password": password}


async def test_service_app_consumes_produces_and_dead_letters_with_scram(
    scram_broker: ScramKafka, kit_db: str, service_name: str, suffix: str
) -> None:
    settings = isolated_settings(service_name, scram_broker.bootstrap, kit_db, suffix, pg_admin_dsn=kit_db, **scram())
    options = settings.kafka_options()
    prefix = settings.topic_prefix
    await ensure_topics(scram_broker.bootstrap, [prefix + topic_for(MILESTONE)], prefix=prefix,
                        partitions=settings.topic_partitions, kafka_options=options)
    app = build(settings)
    events = purchases(["s1", "s2"], 3)
    garbage = [(k, v) for k, v in encode(events[0]).headers if k != "ce_id"] + [("ce_id", b"garbage-1")]
    async with (
        running(app),  # the app creates its consumed + DLQ topics with its admin client
        TopicReader(scram_broker.bootstrap, prefix + topic_for(MILESTONE), kafka_options=options) as out,
    ):
        await publish(scram_broker.bootstrap, events, topic_prefix=prefix, kafka_options=options)
        await publish_raw(scram_broker.bootstrap, [(prefix + topic_for(PURCHASE), b"s1", b"{nope", garbage)],
                          kafka_options=options)
        await out.wait_for(6, within_s=60)  # consumed by FastStream, emitted by the relay's producer
        assert await counts(kit_db, service_name) == {"s1": 3, "s2": 3}
        assert await app.readiness() == []
        await wait_until(lambda: app.metrics.dead_letters.labels("malformed_json")._value.get() == 1, within_s=30)
        letters = await list_dead_letters(scram_broker.bootstrap, service_name, topic_prefix=prefix,
                                          kafka_options=options)
        assert [dl.reason for dl in letters] == ["malformed_json"]
        await replay_dead_letters(scram_broker.bootstrap, service_name, "all", topic_prefix=prefix,
                                  kafka_options=options)
        await wait_until(lambda: app.metrics.dead_letters.labels("malformed_json")._value.get() == 2, within_s=30)
    partitions = await _partitions(scram_broker.bootstrap, prefix + topic_for(PURCHASE), options)
    assert partitions == 2  # isolated_settings' topic_partitions, not the catalogue's count


async def test_a_wrong_password_is_refused(scram_broker: ScramKafka, tmp_path: Path, suffix: str) -> None:
    settings = isolated_settings("kt_wrong", scram_broker.bootstrap, "postgresql://unused/x", suffix, **scram("nope"))
    with pytest.raises((KafkaError, OSError)):
        async with asyncio.timeout(60):
            await ensure_topics(scram_broker.bootstrap, [f"{settings.topic_prefix}x"],
                                kafka_options=settings.kafka_options())


async def _partitions(bootstrap: str, topic: str, options: dict[str, object]) -> int:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **options)  # type: ignore[arg-type]
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        return len(described["partitions"])
    finally:
        await admin.close()
