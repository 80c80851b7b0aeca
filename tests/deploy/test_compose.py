"""The laptop compose stack, checked structurally (no Docker engine here) and its helper scripts run for real:
topic creation against a stub kafka-topics.sh, the Postgres role script against the real Postgres."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import jsonschema
import pytest
import yaml
from deploy_chart import DEPLOY, REPO, SERVICES, secret_env_names
from loyalty_contracts import catalogue
from loyalty_kit.settings import ServiceSettings

COMPOSE_FILE = DEPLOY / "compose.yaml"
DEPENDS_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def host_path(spec: str) -> Path | None:
    """The host side of a bind mount "src:dst[:mode]" (None for a named volume or tmpfs)."""
    source = spec.split(":", 1)[0]
    return (DEPLOY / source).resolve() if source.startswith((".", "/")) else None


def test_compose_file_matches_the_compose_spec_schema(compose: dict[str, Any]) -> None:
    schema = json.loads((DEPLOY / "compose" / "schema" / "compose-spec.json").read_text())
    # The vendored schema predates the top-level project `name` (a later compose-spec addition).
    schema["properties"]["name"] = {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]*$"}
    validator = jsonschema.Draft201909Validator(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, "\n".join(errors)
    broken = json.loads(json.dumps(compose))
    broken["services"]["tiers"]["read_only_fs"] = True  # a typo must not pass
    assert list(validator.iter_errors(broken))


def test_every_reference_resolves(compose: dict[str, Any]) -> None:
    services = compose["services"]
    named_volumes = set(compose.get("volumes", {}))
    for name, svc in services.items():
        assert "image" in svc, f"{name} needs an image"
        for dep, spec in svc.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            assert spec["condition"] in DEPENDS_CONDITIONS, name
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy; {dep} has no check"
        for mount in svc.get("volumes", []):
            path = host_path(mount)
            if path is None:
                assert mount.split(":", 1)[0] in named_volumes, f"{name}: undeclared volume in {mount}"
            else:
                assert path.exists(), f"{name}: bind mount source {path} is missing"
        if "build" in svc:
            context = (DEPLOY / svc["build"]["context"]).resolve()
            assert context == REPO and (context / svc["build"]["dockerfile"]).is_file()
    host_ports = [p.split(":")[0] for s in services.values() for p in s.get("ports", [])]
    assert len(host_ports) == len(set(host_ports)), "two services publish the same host port"


def test_compose_supplies_every_secret_the_program_files_name(compose: dict[str, Any]) -> None:
    named: set[str] = set()
    for program in sorted((REPO / "programs").glob("*.yaml")):
        named |= secret_env_names(yaml.safe_load(program.read_text()))
    assert named, "the example program names its secrets by environment variable"
    for service in SERVICES:
        env_files = compose["services"][service]["env_file"]
        defined = set()
        for env_file in env_files:
            for line in (DEPLOY / env_file).read_text().splitlines():
                if line and not line.startswith("#"):
                    defined.add(line.split("=", 1)[0])
        assert named <= defined, f"{service}: no value for {sorted(named - defined)}"


def test_kafka_is_single_node_kraft_without_auto_created_topics(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    init = compose["services"]["kafka-init"]
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert "./compose/topics.generated.txt:/init/topics.txt:ro" in init["volumes"]


@pytest.mark.parametrize("service", SERVICES)
def test_service_container_is_hardened_and_wired(compose: dict[str, Any], service: str) -> None:
    svc = compose["services"][service]
    assert svc["command"] == [service]
    assert svc["read_only"] is True and svc["tmpfs"] == ["/tmp"]
    assert svc["user"] == "10001:10001" and svc["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in svc["security_opt"]
    assert svc["healthcheck"]["test"][-1] == "/opt/loyalty/bin/healthcheck.py"
    assert svc["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    env = svc["environment"]
    assert env["LOYALTY_SERVICE"] == service
    assert env["LOYALTY_CONSUMER_GROUP"] == f"loyalty-{service}"
    assert env["LOYALTY_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert env["LOYALTY_CREATE_TOPICS"] == "false"  # kafka-init owns topics
    assert urlsplit(env["LOYALTY_PG_DSN"]).username == service
    assert urlsplit(env["LOYALTY_PG_DSN"]).hostname == "postgres"
    assert urlsplit(env["LOYALTY_OTEL_EXPORTER_ENDPOINT"]).hostname in compose["services"]
    assert "../programs:/etc/loyalty/programs:ro" in svc["volumes"]
    known = {f"LOYALTY_{name.upper()}" for name in ServiceSettings.model_fields}
    assert not set(env) - known, f"the kit ignores {sorted(set(env) - known)}"


def test_prometheus_scrapes_every_service_and_the_lag_exporter(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    for service in SERVICES:
        assert jobs[service] == [f"{service}:8080"]
    for targets in jobs.values():
        for target in targets:
            assert target.split(":")[0] in compose["services"], target


def test_traces_flow_collector_to_jaeger(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((DEPLOY / "compose" / "otel-collector.yaml").read_text())
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    pipeline = config["service"]["pipelines"]["traces"]
    for exporter in pipeline["exporters"]:
        assert config["exporters"][exporter]["endpoint"].split(":")[0] in compose["services"]
    for processor in pipeline["processors"]:
        assert processor in config["processors"]


def test_a_dashboard_per_service_with_the_required_panels() -> None:
    result = subprocess.run([sys.executable, str(DEPLOY / "gen_dashboards.py"), "--check"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    provisioning = yaml.safe_load(
        (DEPLOY / "compose" / "grafana" / "provisioning" / "datasources" / "datasources.yaml").read_text())
    datasource_uids = {d["uid"] for d in provisioning["datasources"]}
    required = {
        "tiers": "Tier changes", "notifier": "Deliveries by channel", "surveys": "NPS", "referrals": "recommend",
    }
    for service in SERVICES:
        board = json.loads((DEPLOY / "compose" / "grafana" / "dashboards" / f"loyalty-{service}.json").read_text())
        titles = " | ".join(p["title"] for p in board["panels"])
        for needed in ("Consumer lag", "Batch latency", "Dead letters", required[service]):
            assert needed in titles, f"{service} dashboard lacks {needed!r}: {titles}"
        exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
        assert any(f'consumergroup="loyalty-{service}"' in e for e in exprs)
        assert any(f'job="{service}"' in e for e in exprs)
        assert {p["datasource"]["uid"] for p in board["panels"]} <= datasource_uids


def test_topic_init_creates_every_catalogue_topic(tmp_path: Path) -> None:
    calls = tmp_path / "calls.txt"
    stub = tmp_path / "kafka-topics.sh"
    stub.write_text(f'#!/bin/sh\necho "$*" >> "{calls}"\n')
    stub.chmod(0o755)
    result = subprocess.run(
        ["sh", str(DEPLOY / "compose" / "create-topics.sh")], capture_output=True, text=True, timeout=30,
        env={**os.environ, "KAFKA_BIN": str(tmp_path), "BOOTSTRAP": "kafka:9092",
             "TOPICS_FILE": str(DEPLOY / "compose" / "topics.generated.txt")},
    )
    assert result.returncode == 0, result.stderr
    creates = [line.split() for line in calls.read_text().splitlines() if "--create" in line]
    created = {}
    for args in creates:
        assert args[args.index("--bootstrap-server") + 1] == "kafka:9092" and "--if-not-exists" in args
        configs = [args[i + 1] for i, a in enumerate(args) if a == "--config"]
        created[args[args.index("--topic") + 1]] = (int(args[args.index("--partitions") + 1]), configs)
    assert set(created) == {t.name for t in catalogue.TOPICS} | {
        catalogue.dead_letter_topic(s) for s in catalogue.SERVICES
    }
    purchase = catalogue.TOPICS_BY_NAME["loyalty.purchase-made.v1"]
    assert created[purchase.name] == (
        purchase.partitions, [f"retention.ms={purchase.retention_ms}", "cleanup.policy=delete"]
    )


@pytest.mark.integration
def test_postgres_init_gives_each_service_only_its_own_schema(pg_admin_dsn: str) -> None:
    suffix = uuid.uuid4().hex[:8]
    database = f"deploy_init_{suffix}"
    roles = [f"dt{suffix}_{s}" for s in ("tiers", "surveys")]
    admin = urlsplit(pg_admin_dsn)

    async def admin_exec(sql: str) -> None:
        conn = await asyncpg.connect(pg_admin_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def as_role(role: str, sql: str) -> None:
        conn = await asyncpg.connect(
            host=admin.hostname, port=admin.port, user=role, password="pw-" + suffix, database=database
        )
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin_exec(f'CREATE DATABASE "{database}"'))
    try:
        result = subprocess.run(
            ["sh", str(DEPLOY / "compose" / "postgres-init" / "10-service-roles.sh")],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "PGHOST": admin.hostname or "", "PGPORT": str(admin.port),
                 "PGPASSWORD": admin.password or "", "POSTGRES_USER": admin.username or "postgres",
                 "POSTGRES_DB": database, "LOYALTY_SERVICES": " ".join(roles),
                 "LOYALTY_SERVICE_DB_PASSWORD": "pw-" + suffix},
        )
        assert result.returncode == 0, result.stderr
        own, other = roles
        asyncio.run(as_role(own, "CREATE TABLE ledger (id int)"))  # lands in its schema via search_path
        asyncio.run(as_role(own, f'SELECT * FROM "{own}".ledger'))
        for forbidden in (f'CREATE TABLE "{other}".x (id int)', "CREATE TABLE public.x (id int)"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                asyncio.run(as_role(own, forbidden))
    finally:
        asyncio.run(admin_exec(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        for role in roles:
            asyncio.run(admin_exec(f'DROP ROLE IF EXISTS "{role}"'))
