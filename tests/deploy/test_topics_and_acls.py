"""Kafka resources follow the contracts' topic catalogue: topics equal the catalogue, each KafkaUser has
exactly the ACLs its role needs, KEDA never scales past the partition count."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from deploy_chart import DEPLOY, REPO, SERVICES, RenderError, by_kind, one, render
from loyalty_contracts import catalogue

Acl = tuple[str, str, str, str]  # resource type, name, pattern type, operation


def expected_topics() -> dict[str, tuple[int, int]]:
    """name -> (partitions, retention.ms): the catalogue's topics plus one dead-letter topic per service."""
    topics = {t.name: (t.partitions, t.retention_ms) for t in catalogue.TOPICS}
    for service in catalogue.SERVICES:
        topics[catalogue.dead_letter_topic(service)] = (1, catalogue.DLQ_RETENTION_MS)
    return topics


def acls_of(user: dict[str, Any]) -> set[Acl]:
    return {
        (rule["resource"]["type"], rule["resource"]["name"], rule["resource"]["patternType"], op)
        for rule in user["spec"]["authorization"]["acls"]
        for op in rule["operations"]
    }


def test_generated_files_match_the_catalogue() -> None:
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "gen_topics.py"), "--check"], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 0, result.stderr


def test_chart_topics_equal_the_catalogue(manifests: list[dict[str, Any]]) -> None:
    rendered = {
        t["spec"]["topicName"]: (t["spec"]["partitions"], t["spec"]["config"]["retention.ms"])
        for t in by_kind(manifests, "KafkaTopic")
    }
    assert rendered == expected_topics()
    assert len(by_kind(manifests, "KafkaTopic")) == len(rendered)  # no duplicates


def test_topics_carry_cluster_label_replicas_and_survive_uninstall(manifests: list[dict[str, Any]]) -> None:
    for topic in by_kind(manifests, "KafkaTopic"):
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == "loyalty"
        assert topic["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert topic["spec"]["replicas"] == 3
        assert topic["spec"]["config"]["min.insync.replicas"] == 2


def test_compose_topics_equal_the_catalogue() -> None:
    lines = (DEPLOY / "compose" / "topics.generated.txt").read_text().splitlines()
    rows = [line.split() for line in lines if line and not line.startswith("#")]
    assert {name: (int(p), int(r)) for name, p, r in rows} == expected_topics()


@pytest.mark.parametrize("service", SERVICES)
def test_service_user_has_exactly_the_acls_its_role_needs(manifests: list[dict[str, Any]], service: str) -> None:
    user = one(manifests, "KafkaUser", f"t-loyalty-suite-{service}")
    expected = {("topic", name, "literal", "Read") for name in catalogue.topics_consumed_by(service)}
    expected |= {("topic", name, "literal", "Write") for name in catalogue.topics_produced_by(service)}
    expected |= {
        ("topic", catalogue.dead_letter_topic(service), "literal", "Write"),
        ("group", f"loyalty-{service}", "literal", "Read"),
    }
    assert acls_of(user) == expected
    assert user["spec"]["authentication"]["type"] == "scram-sha-512"


def test_partner_user_only_reads_public_topics(manifests: list[dict[str, Any]]) -> None:
    partner = one(manifests, "KafkaUser", "loyalty-partner")
    public = {t.name for t in catalogue.TOPICS if t.public}
    assert public, "the catalogue marks result topics public"
    expected = {("topic", name, "literal", "Read") for name in public} | {("group", "partner-", "prefix", "Read")}
    assert acls_of(partner) == expected


def test_retailer_user_only_writes_input_topics(manifests: list[dict[str, Any]]) -> None:
    retailer = one(manifests, "KafkaUser", "loyalty-retailer")
    inputs = catalogue.topics_produced_by(catalogue.RETAILER)
    assert acls_of(retailer) == {("topic", name, "literal", "Write") for name in inputs}


@pytest.mark.parametrize("service", SERVICES)
def test_scaled_object_never_exceeds_partitions(manifests: list[dict[str, Any]], service: str) -> None:
    scaled = one(manifests, "ScaledObject", f"t-loyalty-suite-{service}")
    ceiling = min(catalogue.TOPICS_BY_NAME[name].partitions for name in catalogue.topics_consumed_by(service))
    assert scaled["spec"]["maxReplicaCount"] == ceiling  # default: exactly the useful maximum
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == f"loyalty-{service}"
    assert int(trigger["metadata"]["lagThreshold"]) > 0
    assert trigger["authenticationRef"]["name"] == f"t-loyalty-suite-{service}-kafka"
    deployment = one(manifests, "Deployment", f"t-loyalty-suite-{service}")
    assert "replicas" not in deployment["spec"]  # KEDA owns the replica count


def test_scaled_object_takes_a_lower_max_and_rejects_a_higher_one(helm: str) -> None:
    docs = render("--set", "services.surveys.autoscaling.maxReplicas=4")
    assert one(docs, "ScaledObject", "t-loyalty-suite-surveys")["spec"]["maxReplicaCount"] == 4
    with pytest.raises(RenderError, match="exceeds 6"):
        render("--set", "services.surveys.autoscaling.maxReplicas=12")


def test_autoscaling_off_gives_fixed_replicas(helm: str) -> None:
    docs = render("--set", "services.tiers.autoscaling.enabled=false", "--set", "services.tiers.replicas=3")
    assert one(docs, "Deployment", "t-loyalty-suite-tiers")["spec"]["replicas"] == 3
    assert not [d for d in by_kind(docs, "ScaledObject") if d["metadata"]["name"].endswith("-tiers")]


def test_tls_authentication_mounts_the_user_certificate(helm: str) -> None:
    docs = render("--set", "kafka.authentication=tls")
    assert {u["spec"]["authentication"]["type"] for u in by_kind(docs, "KafkaUser")} == {"tls"}
    pod = one(docs, "Deployment", "t-loyalty-suite-tiers")["spec"]["template"]["spec"]
    user_volume = next(v for v in pod["volumes"] if v["name"] == "kafka-user")
    assert user_volume["secret"]["secretName"] == "t-loyalty-suite-tiers"
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["LOYALTY_KAFKA_SECURITY_PROTOCOL"] == "SSL"
    assert env["LOYALTY_KAFKA_SSL_CERTFILE"] == "/etc/loyalty/kafka-user/user.crt"
    auth = one(docs, "TriggerAuthentication", "t-loyalty-suite-tiers-kafka")
    assert {r["parameter"] for r in auth["spec"]["secretTargetRef"]} == {"cert", "key", "ca"}


def test_no_authentication_renders_no_users(helm: str) -> None:
    docs = render("--set", "kafka.authentication=none", "--set", "kafka.tls.enabled=false")
    assert by_kind(docs, "KafkaUser") == [] and by_kind(docs, "TriggerAuthentication") == []
    assert len(by_kind(docs, "KafkaTopic")) == len(expected_topics())
    env = {e["name"]: e.get("value") for e in
           one(docs, "Deployment", "t-loyalty-suite-notifier")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LOYALTY_KAFKA_SECURITY_PROTOCOL"] == "PLAINTEXT"
    assert env["LOYALTY_KAFKA_BOOTSTRAP"] == "loyalty-kafka-bootstrap:9092"
