"""What every service workload must carry: hardened pods, health probes, settings by env, secrets only by
reference, the program files, disruption budget, network policy, Postgres role + schema."""

from __future__ import annotations

import os
from typing import Any

import pytest
from deploy_chart import REPO, SERVICES, by_kind, crd_errors, env_of, one, render


def pod_specs(manifests: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{d['kind']}/{d['metadata']['name']}", d["spec"] if d["kind"] == "Pod" else d["spec"]["template"]["spec"])
        for d in manifests
        if d["kind"] in ("Deployment", "Job", "Pod")
    ]


def test_every_pod_is_non_root_read_only_and_unprivileged(manifests: list[dict[str, Any]]) -> None:
    pods = pod_specs(manifests)
    assert len(pods) == 12  # four Deployments, four migration Jobs, four `helm test` pods
    for name, pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] != 0, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod["automountServiceAccountToken"] is False, name
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            if not name.startswith("Pod/"):  # the test pods only run a stdlib HTTP GET
                mounts = {m["mountPath"] for m in container["volumeMounts"]}
                assert "/tmp" in mounts, f"{name}: a read-only root needs a writable /tmp"
            assert container["resources"]["requests"], name


@pytest.mark.parametrize("service", SERVICES)
def test_deployment_runs_the_service_with_probes_on_health_routes(
    manifests: list[dict[str, Any]], service: str
) -> None:
    deployment = one(manifests, "Deployment", f"t-loyalty-suite-{service}")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == [service]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    env = env_of(container)
    assert env["LOYALTY_SERVICE"] == service
    assert env["LOYALTY_HTTP_PORT"] == "8080"
    assert env["LOYALTY_CONSUMER_GROUP"] == f"loyalty-{service}"
    assert env["LOYALTY_KAFKA_BOOTSTRAP"] == "loyalty-kafka-bootstrap:9093"
    assert env["LOYALTY_PROGRAMS_DIR"] == "/etc/loyalty/programs"
    assert env["LOYALTY_CREATE_TOPICS"] == "false"  # Strimzi owns topics
    assert env["LOYALTY_PG_DSN"] == f"postgresql://{service}@t-loyalty-suite-pg-rw:5432/loyalty?sslmode=require"
    assert env["PGPASSWORD"] == {"secretKeyRef": {"name": f"loyalty-{service}-db", "key": "password"}}
    assert env["LOYALTY_KAFKA_SASL_PASSWORD"] == {
        "secretKeyRef": {"name": f"t-loyalty-suite-{service}", "key": "password"}
    }
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
    service_obj = one(manifests, "Service", f"t-loyalty-suite-{service}")
    assert service_obj["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_secrets_are_only_referenced(manifests: list[dict[str, Any]]) -> None:
    assert by_kind(manifests, "Secret") == []
    for name, pod in pod_specs(manifests):
        if name.startswith("Pod/"):
            assert "env" not in pod["containers"][0], name
            continue
        for container in pod["containers"]:
            for entry in container["env"]:
                sensitive = any(word in entry["name"] for word in ("PASSWORD", "SECRET", "TOKEN", "KEY"))
                if sensitive and not entry["name"].endswith("FILE"):
                    assert "value" not in entry, f"{name}: {entry['name']} must come from a Secret"
            userinfo = env_of(container)["LOYALTY_PG_DSN"].split("//", 1)[1].split("@", 1)[0]
            assert ":" not in userinfo, f"{name}: the DSN must not carry a password"


def test_program_files_from_the_repo_become_the_mounted_config_map(helm: str) -> None:
    program = REPO / "programs" / "acme-diy.yaml"
    docs = render("--set-file", f"programs.files.acme-diy\\.yaml={program}", values=())
    config_map = one(docs, "ConfigMap", "t-loyalty-suite-programs")
    assert config_map["data"]["acme-diy.yaml"].strip() == program.read_text().strip()
    pod = one(docs, "Deployment", "t-loyalty-suite-surveys")["spec"]["template"]["spec"]
    assert {"name": "programs", "configMap": {"name": "t-loyalty-suite-programs"}} in pod["volumes"]


def test_an_existing_program_config_map_is_used_as_is(helm: str) -> None:
    docs = render("--set", "programs.existingConfigMap=retailer-programs", values=())
    assert by_kind(docs, "ConfigMap") == []
    pod = one(docs, "Deployment", "t-loyalty-suite-tiers")["spec"]["template"]["spec"]
    assert {"name": "programs", "configMap": {"name": "retailer-programs"}} in pod["volumes"]


def test_changing_a_program_rolls_the_pods(helm: str) -> None:
    def checksum(content: str) -> str:
        docs = render("--set", f"programs.files.x\\.yaml={content}", values=())
        return one(docs, "Deployment", "t-loyalty-suite-tiers")["spec"]["template"]["metadata"]["annotations"][
            "checksum/programs"
        ]

    assert checksum("tenant: a") != checksum("tenant: b")


@pytest.mark.parametrize("service", SERVICES)
def test_pdb_network_policy_and_service_account(manifests: list[dict[str, Any]], service: str) -> None:
    name = f"t-loyalty-suite-{service}"
    selector = one(manifests, "Deployment", name)["spec"]["selector"]["matchLabels"]
    assert one(manifests, "PodDisruptionBudget", name)["spec"] == {"maxUnavailable": 1,
                                                                   "selector": {"matchLabels": selector}}
    assert one(manifests, "ServiceAccount", name)["automountServiceAccountToken"] is False
    policy = one(manifests, "NetworkPolicy", name)["spec"]
    assert policy["podSelector"]["matchLabels"] == selector
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert [p["port"] for p in policy["ingress"][0]["ports"]] == [8080]
    egress_targets = [rule.get("to", [{}])[0].get("podSelector", {}).get("matchLabels") for rule in policy["egress"]]
    assert {"strimzi.io/cluster": "loyalty", "strimzi.io/kind": "Kafka"} in egress_targets
    assert {"cnpg.io/cluster": "t-loyalty-suite-pg"} in egress_targets


def test_extra_egress_reaches_the_notifier_only(helm: str) -> None:
    smtp = '{"to":[{"ipBlock":{"cidr":"192.0.2.10/32"}}],"ports":[{"port":587,"protocol":"TCP"}]}'
    docs = render("--set-json", f"services.notifier.extraEgress=[{smtp}]")
    notifier = one(docs, "NetworkPolicy", "t-loyalty-suite-notifier")["spec"]["egress"]
    tiers = one(docs, "NetworkPolicy", "t-loyalty-suite-tiers")["spec"]["egress"]
    assert any(r.get("ports") == [{"port": 587, "protocol": "TCP"}] for r in notifier)
    assert not any(r.get("ports") == [{"port": 587, "protocol": "TCP"}] for r in tiers)


def test_postgres_cluster_has_a_role_and_schema_per_service(manifests: list[dict[str, Any]]) -> None:
    cluster = one(manifests, "Cluster", "t-loyalty-suite-pg")["spec"]
    roles = {r["name"]: r for r in cluster["managed"]["roles"]}
    assert set(roles) == set(SERVICES)
    for service, role in roles.items():
        assert role["login"] is True and role["superuser"] is False and role["inherit"] is False
        assert role["passwordSecret"] == {"name": f"loyalty-{service}-db"}
    assert cluster["enableSuperuserAccess"] is False
    database = one(manifests, "Database", "t-loyalty-suite-pg-loyalty")["spec"]
    assert database["name"] == "loyalty" and database["cluster"] == {"name": "t-loyalty-suite-pg"}
    assert {(s["name"], s["owner"]) for s in database["schemas"]} == {(s, s) for s in SERVICES}


@pytest.mark.parametrize("service", SERVICES)
def test_migration_job_runs_before_upgrades_as_the_service_role(
    manifests: list[dict[str, Any]], service: str
) -> None:
    job = one(manifests, "Job", f"t-loyalty-suite-{service}-migrate")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,pre-upgrade"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["migrate", service]
    env = env_of(container)
    assert env["LOYALTY_PG_DSN"].startswith(f"postgresql://{service}@")
    assert env["PGPASSWORD"]["secretKeyRef"]["name"] == f"loyalty-{service}-db"
    assert not [name for name in env if "KAFKA" in name]  # it must not wait for Kafka credentials


def test_observability_is_configurable(helm: str) -> None:
    docs = render(
        "--set", "observability.otel.endpoint=http://otel.observability:4318",
        "--set", "observability.prometheus.scrapeAnnotations=false",
    )
    pod = one(docs, "Deployment", "t-loyalty-suite-referrals")["spec"]["template"]
    assert env_of(pod["spec"]["containers"][0])["LOYALTY_OTEL_EXPORTER_ENDPOINT"] == "http://otel.observability:4318"
    assert not any(k.startswith("prometheus.io/") for k in pod["metadata"]["annotations"])


def test_a_disabled_service_leaves_no_trace(helm: str) -> None:
    docs = render("--set", "services.notifier.enabled=false")
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert not [n for n in names if n[1].startswith("t-loyalty-suite-notifier")]
    cluster = one(docs, "Cluster", "t-loyalty-suite-pg")["spec"]
    assert "notifier" not in {r["name"] for r in cluster["managed"]["roles"]}
    assert len(by_kind(docs, "Deployment")) == 3


@pytest.mark.parametrize("service", SERVICES)
def test_helm_test_pod_checks_the_service_readiness(manifests: list[dict[str, Any]], service: str) -> None:
    pod = one(manifests, "Pod", f"t-loyalty-suite-{service}-test-ready")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["containers"][0]["command"][-1] == f"http://t-loyalty-suite-{service}:8080/readyz"


def test_pod_monitor_scrapes_service_pods_only_with_the_service_as_job(helm: str) -> None:
    docs = render("--set", "observability.prometheus.podMonitor.enabled=true",
                  "--set", "observability.prometheus.podMonitor.labels.release=kube-prometheus")
    monitor = one(docs, "PodMonitor", "t-loyalty-suite")
    assert crd_errors(monitor) == []
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus"
    assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/component"
    assert monitor["spec"]["podMetricsEndpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s"}]
    selector = monitor["spec"]["selector"]["matchLabels"]

    def selected(labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in selector.items())

    for deployment in by_kind(docs, "Deployment"):
        assert selected(deployment["spec"]["template"]["metadata"]["labels"])
    for job in by_kind(docs, "Job"):
        assert not selected(job["spec"]["template"]["metadata"]["labels"])
    for pod in by_kind(docs, "Pod"):
        assert not selected(pod["metadata"]["labels"])


def test_spans_carry_the_pod_identity(manifests: list[dict[str, Any]]) -> None:
    container = one(manifests, "Deployment", "t-loyalty-suite-tiers")["spec"]["template"]["spec"]["containers"][0]
    names = [e["name"] for e in container["env"]]
    env = env_of(container)
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["OTEL_RESOURCE_ATTRIBUTES"] == "k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE)"
    # Kubernetes expands $(VAR) only for variables defined earlier in the list.
    assert names.index("POD_NAME") < names.index("OTEL_RESOURCE_ATTRIBUTES")
    assert names.index("POD_NAMESPACE") < names.index("OTEL_RESOURCE_ATTRIBUTES")


# The Kafka security settings the chart passes (the kit reads them since kit issue 3).
KAFKA_SECURITY_SETTINGS = {
    "LOYALTY_KAFKA_SECURITY_PROTOCOL", "LOYALTY_KAFKA_SASL_MECHANISM", "LOYALTY_KAFKA_SASL_USERNAME",
    "LOYALTY_KAFKA_SASL_PASSWORD", "LOYALTY_KAFKA_SSL_CAFILE", "LOYALTY_KAFKA_SSL_CERTFILE",
    "LOYALTY_KAFKA_SSL_KEYFILE",
}


@pytest.mark.parametrize("service", SERVICES)
def test_chart_env_is_what_the_kit_settings_read(
    manifests: list[dict[str, Any]], service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loyalty_kit.settings import ServiceSettings

    known = {f"LOYALTY_{name.upper()}" for name in ServiceSettings.model_fields}
    assert known >= KAFKA_SECURITY_SETTINGS
    container = one(manifests, "Deployment", f"t-loyalty-suite-{service}")["spec"]["template"]["spec"]["containers"][0]
    loyalty_env = {e["name"]: e.get("value") for e in container["env"] if e["name"].startswith("LOYALTY_")}
    unknown = set(loyalty_env) - known
    assert not unknown, f"the kit ignores {sorted(unknown)} (ServiceSettings has extra='ignore')"
    for name in list(os.environ):
        if name.startswith("LOYALTY_"):
            monkeypatch.delenv(name)
    for name, value in loyalty_env.items():
        if value is not None and name in known:
            monkeypatch.setenv(name, value)
    settings = ServiceSettings()
    assert settings.service == service and settings.http_port == 8080
    assert settings.group_id == f"loyalty-{service}" and settings.create_topics is False
    assert str(settings.programs_dir) == "/etc/loyalty/programs"
