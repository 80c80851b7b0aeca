"""Service settings, read from the environment (prefix ``LOYALTY_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Everything a service process needs to start; one instance per process."""

    model_config = SettingsConfigDict(env_prefix="LOYALTY_", extra="ignore")

    service: str = Field(description="service name; also its Postgres schema, role and consumer group")
    kafka_bootstrap: str = "localhost:9092"
    pg_dsn: str = "postgresql://postgres@localhost:5432/loyalty"
    # When set, the service provisions its own role + schema with this superuser DSN at start and then
    # connects as its role (local stack, demo); in production pg_dsn already names the service's role.
    pg_admin_dsn: str | None = None
    pg_password: str | None = None
    pg_pool_max: int = 10
    programs_dir: Path = Path("programs")
    http_host: str = "0.0.0.0"
    http_port: int = 8000
    batch_max_records: int = 500
    batch_timeout_ms: int = 200
    otel_exporter_endpoint: str | None = None
    timer_clock: Literal["wall", "event"] = "wall"
    timer_poll_interval_s: float = 1.0
    outbox_poll_interval_s: float = 1.0
    log_level: str = "INFO"
    # Consumer group defaults to the service name; tests and benchmarks override it to stay isolated.
    consumer_group: str | None = None
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    # Prepended to every topic the app consumes, emits to or dead-letters to (isolated test runs only).
    topic_prefix: str = ""
    create_topics: bool = True
    topic_replication_factor: int = 1
    inbox_retention_days: int = 35

    @property
    def group_id(self) -> str:
        return self.consumer_group or self.service
