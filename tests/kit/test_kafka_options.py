"""Kafka security settings become the same options for every client the kit builds; service metrics."""

from __future__ import annotations

import ssl

import certifi
import pytest
from faststream.security import BaseSecurity, SASLScram512
from loyalty_kit import ServiceApp, ServiceSettings
from loyalty_kit.kafka import KafkaSecurityError, faststream_security, group_for, kafka_client_options
from loyalty_kit.testing import http_client


def settings(**values: object) -> ServiceSettings:
    return ServiceSettings(**{"service": "tiers", **values})  # type: ignore[arg-type]


def test_plaintext_adds_no_options() -> None:
    assert kafka_client_options(settings()) == {}
    assert faststream_security(settings()) is None


def test_scram_over_tls_from_the_chart_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "LOYALTY_SERVICE": "tiers", "LOYALTY_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "LOYALTY_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "LOYALTY_KAFKA_SASL_USERNAME": "loyalty-tiers",
        "LOYALTY_KAFKA_SASL_PASSWORD": "s3cret", "LOYALTY_KAFKA_SSL_CAFILE": certifi.where(),
    }.items():
        monkeypatch.setenv(name, value)
    s = ServiceSettings()  # type: ignore[call-arg]
    assert "s3cret" not in repr(s)
    options = s.kafka_options()
    assert options["security_protocol"] == "SASL_SSL" and options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("loyalty-tiers", "s3cret")
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    security = faststream_security(s)
    assert isinstance(security, SASLScram512) and security.use_ssl
    assert (security.username, security.password) == ("loyalty-tiers", "s3cret")


def test_mutual_tls_without_sasl() -> None:
    s = settings(kafka_security_protocol="SSL", kafka_ssl_cafile=certifi.where())
    options = kafka_client_options(s)
    assert set(options) == {"security_protocol", "ssl_context"} and options["security_protocol"] == "SSL"
    security = faststream_security(s)
    assert type(security) is BaseSecurity and security.use_ssl and security.ssl_context is not None


def test_sasl_plaintext_without_tls() -> None:
    options = kafka_client_options(settings(
        kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="u", kafka_sasl_password="p",
    ))
    assert "ssl_context" not in options and options["security_protocol"] == "SASL_PLAINTEXT"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "SCRAM-SHA-512"}, "needs"),
        ({"kafka_sasl_username": "u", "kafka_sasl_password": "p"}, "SASL credentials are set"),
        ({"kafka_ssl_cafile": "/ca.crt"}, "TLS files are set"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_certfile": "/user.crt"}, "go together"),
    ],
)
def test_contradicting_settings_are_refused_with_the_reason(values: dict[str, object], message: str) -> None:
    with pytest.raises(KafkaSecurityError, match=message):
        kafka_client_options(settings(**values))


def test_unknown_protocol_is_a_settings_error() -> None:
    with pytest.raises(ValueError, match="kafka_security_protocol"):
        settings(kafka_security_protocol="SASL_TLS")


def test_default_group_is_loyalty_dash_service() -> None:
    assert group_for("notifier") == "loyalty-notifier"
    assert settings().group_id == "loyalty-tiers"
    assert settings(consumer_group="bench-1").group_id == "bench-1"


async def test_service_metrics_are_served_with_the_kits() -> None:
    app = ServiceApp("kt_metrics", settings(service="kt_metrics"))
    changes = app.counter("loyalty_tier_changes_total", "Tier changes", ["to_tier"])
    assert app.counter("loyalty_tier_changes", "Tier changes", ["to_tier"]) is changes  # same metric again
    changes.labels("gold").inc()
    app.gauge("loyalty_referrals_recommendation_gap", "Says-vs-does gap").set(0.25)
    app.gauge("loyalty_surveys_nps", "NPS", ["tenant"]).labels("acme-diy").set(42)
    app.counter("loyalty_notifier_deliveries", "Deliveries", ["channel", "outcome"]).labels("email", "sent").inc(3)
    app.histogram("loyalty_notifier_send_seconds", "Send time", buckets=(0.1, 1)).observe(0.5)
    with pytest.raises(ValueError, match="already registered as Counter"):
        app.gauge("loyalty_tier_changes", "clash")
    with pytest.raises(ValueError, match="already registered"):
        app.counter("loyalty_tier_changes_total", "Tier changes", ["tier"])
    async with http_client(app) as client:
        text = (await client.get("/metrics")).text
    for line in (
        'loyalty_tier_changes_total{to_tier="gold"} 1.0',
        "loyalty_referrals_recommendation_gap 0.25",
        'loyalty_surveys_nps{tenant="acme-diy"} 42.0',
        'loyalty_notifier_deliveries_total{channel="email",outcome="sent"} 3.0',
        'loyalty_notifier_send_seconds_bucket{le="1.0"} 1.0',
        "loyalty_outbox_backlog 0.0",  # the kit's own series still there
    ):
        assert line in text.splitlines(), line
