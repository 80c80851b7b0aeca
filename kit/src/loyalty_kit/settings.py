"""Service settings, read from the environment (prefix ``LOYALTY_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from loyalty_kit.kafka import SaslMechanism, SecurityProtocol, group_for


class ServiceSettings(BaseSettings):
    """Everything a service process needs to start; one instance per process."""

    model_config = SettingsConfigDict(env_prefix="LOYALTY_", extra="ignore")

    service: str = Field(description="service name; also its Postgres schema and role")
    kafka_bootstrap: str = "localhost:9092"
    # Connection security for every Kafka client the kit creates (see loyalty_kit.kafka); the Helm chart
    # sets these from its kafka.authentication / kafka.tls values.
    kafka_security_protocol: SecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: SaslMechanism | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = Field(default=None, repr=False)
    kafka_ssl_cafile: str | None = None
    kafka_ssl_certfile: str | None = None
    kafka_ssl_keyfile: str | None = None
    pg_dsn: str = "postgresql://postgres@localhost:5432/loyalty"
    # When set, the service provisions its own role + schema with this superuser DSN at start and then
    # connects as its role (local stack, demo); in production pg_dsn already names the service's role.
    pg_admin_dsn: str | None = None
    pg_password: str | None = None
    pg_pool_max: int = 10
    programs_dir: Path = Path("programs")
    http_host: str = "0.0.0.0"
    http_port: int = 8080  # what the chart and compose expose
    batch_max_records: int = 500
    batch_timeout_ms: int = 200
    otel_exporter_endpoint: str | None = None
    timer_clock: Literal["wall", "event"] = "wall"
    timer_poll_interval_s: float = 1.0
    outbox_poll_interval_s: float = 1.0
    # "process": the outbox relay runs in a child process the service supervises (another core for
    # publishing; see loyalty_kit.relay_process); "inline": a task in the service's own event loop.
    outbox_relay: Literal["process", "inline"] = "process"
    log_level: str = "INFO"
    # Consumer group defaults to loyalty-<service> (group_for); tests and benchmarks override it to stay isolated.
    consumer_group: str | None = None
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    # Prepended to every topic the app consumes, emits to or dead-letters to (isolated test runs only).
    topic_prefix: str = ""
    create_topics: bool = True
    topic_replication_factor: int = 1
    # Overrides the catalogue's partition count for topics the kit creates (tests and local runs: a shared
    # dev broker runs out of heap under thousands of test partitions). None: the catalogue's count.
    topic_partitions: int | None = Field(default=None, ge=1)
    inbox_retention_days: int = 35

    @property
    def group_id(self) -> str:
        return self.consumer_group or group_for(self.service)

    def kafka_options(self) -> dict[str, Any]:
        """aiokafka keyword arguments for the configured Kafka security (empty for PLAINTEXT)."""
        from loyalty_kit.kafka import kafka_client_options

        return kafka_client_options(self)
