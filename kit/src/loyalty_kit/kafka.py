"""Kafka connection security: one place turns the ``LOYALTY_KAFKA_*`` settings into client options.

Every Kafka client the kit creates (FastStream broker, outbox/DLQ producer, admin clients, DLQ readers,
test helpers) gets its security from here, so a service behind SCRAM or mutual TLS needs no code change:

- ``kafka_client_options(settings)`` -> aiokafka keyword arguments (``security_protocol``, ``ssl_context``,
  ``sasl_mechanism``, ``sasl_plain_username``, ``sasl_plain_password``); empty for PLAINTEXT, so the
  plain-text case builds exactly the clients it built before;
- ``faststream_security(settings)`` -> the FastStream ``BaseSecurity`` object for ``KafkaBroker(security=...)``.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from faststream.security import BaseSecurity

    from loyalty_kit.settings import ServiceSettings

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

KafkaOptions = Mapping[str, Any]


class KafkaSecurityError(ValueError):
    """The security settings contradict each other (raised at start, before any connection)."""


def group_for(service: str) -> str:
    """The consumer group of a service: ``loyalty-<service>`` (what the Helm chart, compose and ACLs use)."""
    return f"loyalty-{service}"


def _ssl_context(settings: ServiceSettings) -> ssl.SSLContext:
    from aiokafka.helpers import create_ssl_context

    # Without a CA file the system trust store is used (a broker with a public certificate).
    return create_ssl_context(
        cafile=settings.kafka_ssl_cafile,
        certfile=settings.kafka_ssl_certfile,
        keyfile=settings.kafka_ssl_keyfile,
    )


def _check(settings: ServiceSettings) -> None:
    protocol = settings.kafka_security_protocol
    sasl = protocol.startswith("SASL_")
    if sasl and not (settings.kafka_sasl_mechanism and settings.kafka_sasl_username is not None
                     and settings.kafka_sasl_password is not None):
        raise KafkaSecurityError(
            f"kafka_security_protocol={protocol} needs kafka_sasl_mechanism, kafka_sasl_username and "
            "kafka_sasl_password"
        )
    if not sasl and (settings.kafka_sasl_username is not None or settings.kafka_sasl_password is not None):
        raise KafkaSecurityError(
            f"SASL credentials are set but kafka_security_protocol={protocol}; use SASL_PLAINTEXT or SASL_SSL"
        )
    uses_tls = protocol in ("SSL", "SASL_SSL")
    tls_files = [settings.kafka_ssl_cafile, settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile]
    if not uses_tls and any(f is not None for f in tls_files):
        raise KafkaSecurityError(f"TLS files are set but kafka_security_protocol={protocol}; use SSL or SASL_SSL")
    if (settings.kafka_ssl_certfile is None) != (settings.kafka_ssl_keyfile is None):
        raise KafkaSecurityError("kafka_ssl_certfile and kafka_ssl_keyfile go together (client certificate)")


def kafka_client_options(settings: ServiceSettings) -> dict[str, Any]:
    """aiokafka keyword arguments for the connection security the settings describe (empty for PLAINTEXT)."""
    _check(settings)
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = _ssl_context(settings)
    if protocol.startswith("SASL_"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password
    return options


def faststream_security(settings: ServiceSettings) -> BaseSecurity | None:
    """The same security for ``faststream.kafka.KafkaBroker(security=...)`` (None for PLAINTEXT)."""
    from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

    options = kafka_client_options(settings)
    if not options:
        return None
    context = options.get("ssl_context")
    use_ssl = context is not None
    mechanism = options.get("sasl_mechanism")
    if mechanism is None:
        return BaseSecurity(ssl_context=context, use_ssl=use_ssl)
    sasl_class = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}[mechanism]
    return sasl_class(
        options["sasl_plain_username"], options["sasl_plain_password"], ssl_context=context, use_ssl=use_ssl
    )
