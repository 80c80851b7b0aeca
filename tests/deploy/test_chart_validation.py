"""The chart lints strictly, its values schema rejects bad values, and every rendered manifest is valid:
built-in kinds against the Kubernetes schemas bundled by kubernetes-validate, custom resources against the
vendored operator CRDs (deploy/crds)."""

from __future__ import annotations

import copy
import re
from typing import Any

import kubernetes_validate
import pytest
from deploy_chart import CHART, CI_VALUES, RenderError, crd_errors, one, render, run_helm

BUILTIN_GROUPS = ("v1", "apps/v1", "batch/v1", "policy/v1", "networking.k8s.io/v1")
# The chart's declared minimum (Chart.yaml kubeVersion) and the newest the helm build targets.
KUBE_VERSIONS = ("1.27.0", "1.35.0")


def test_helm_lint_strict_passes(helm: str) -> None:
    result = run_helm("lint", "--strict", str(CHART), "-f", str(CI_VALUES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_chart_renders_every_expected_kind(manifests: list[dict[str, Any]]) -> None:
    counts: dict[str, int] = {}
    for doc in manifests:
        counts[doc["kind"]] = counts.get(doc["kind"], 0) + 1
    for kind in ("Deployment", "Service", "ServiceAccount", "PodDisruptionBudget", "NetworkPolicy",
                 "ScaledObject", "TriggerAuthentication", "Job"):
        assert counts.get(kind) == 4, f"{kind}: {counts.get(kind)}"
    assert counts["Cluster"] == 1 and counts["Database"] == 1 and counts["ConfigMap"] == 1
    assert counts["KafkaUser"] == 6  # four services, retailer producer, partner reader
    assert counts["Pod"] == 4  # `helm test` readiness pods
    assert "PodMonitor" not in counts  # opt-in


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_builtin_manifests_are_valid_kubernetes(manifests: list[dict[str, Any]], kube_version: str) -> None:
    builtin = [d for d in manifests if d["apiVersion"] in BUILTIN_GROUPS]
    assert len(builtin) >= 25
    errors = []
    for doc in builtin:
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert not errors, "\n".join(errors)


def test_kubernetes_validation_is_not_vacuous(manifests: list[dict[str, Any]]) -> None:
    deployment = copy.deepcopy(one(manifests, "Deployment", "t-loyalty-suite-tiers"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["portt"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[-1], strict=True)


def test_custom_resources_match_vendored_crds(manifests: list[dict[str, Any]]) -> None:
    custom = [d for d in manifests if d["apiVersion"] not in BUILTIN_GROUPS]
    kinds = {d["kind"] for d in custom}
    assert kinds == {"KafkaTopic", "KafkaUser", "ScaledObject", "TriggerAuthentication", "Cluster", "Database"}
    errors = [e for doc in custom for e in crd_errors(doc)]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize(
    ("kind", "name", "mutate", "expected"),
    [
        ("ScaledObject", "t-loyalty-suite-tiers", lambda d: d["spec"].update(maxReplicas=3), "maxReplicas"),
        ("Cluster", "t-loyalty-suite-pg", lambda d: d["spec"].update(instances="three"), "three"),
        ("KafkaUser", "t-loyalty-suite-tiers",
         lambda d: d["spec"]["authorization"]["acls"][0].update(operations=["Reed"]), "Reed"),
        ("KafkaTopic", "loyalty.purchase-made.v1", lambda d: d["spec"].update(partitions=0), "minimum"),
        ("Database", "t-loyalty-suite-pg-loyalty",
         lambda d: d["spec"]["schemas"][0].pop("name"), "name"),
    ],
)
def test_crd_validation_catches_mistakes(
    manifests: list[dict[str, Any]], kind: str, name: str, mutate: Any, expected: str
) -> None:
    doc = copy.deepcopy(one(manifests, kind, name))
    assert crd_errors(doc) == []
    mutate(doc)
    errors = crd_errors(doc)
    assert errors and any(expected in e for e in errors), errors


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "replicaCount=3"], "replicaCount"),
        (["--set", "services.tiers.replica=3"], "replica"),
        (["--set", "services.billing.enabled=true"], "billing"),
        (["--set", "services.tiers.replicas=two"], "replicas"),
        (["--set", "kafka.authentication=plain"], "authentication"),
        (["--set", "postgres.port=70000"], "port"),
        (["--set", "observability.otel.endpoint=collector:4318"], "endpoint"),
        (["--set", "services.notifier.env.lower_case=x"], "lower_case"),
    ],
)
def test_values_schema_rejects_unknown_keys_and_wrong_types(helm: str, args: list[str], expected: str) -> None:
    with pytest.raises(RenderError) as failure:
        render(*args)
    message = str(failure.value)
    assert "values don't meet the specifications of the schema" in message
    assert expected in message


@pytest.mark.parametrize(
    ("args", "values", "expected"),
    [
        ([], (), "programs: set programs.files"),
        (["--set", "programs.existingConfigMap=mine"], None, "either programs.files or"),
        (["--set", "services.tiers.autoscaling.maxReplicas=7"], None, "exceeds 6, the partition count"),
        (["--set", "kafka.authentication=tls", "--set", "kafka.tls.enabled=false"], None, "needs kafka.tls"),
        (["--set", "postgres.cnpg.enabled=false"], None, "postgres.host is required"),
    ],
)
def test_inconsistent_values_fail_with_a_reason(
    helm: str, args: list[str], values: tuple[()] | None, expected: str
) -> None:
    with pytest.raises(RenderError) as failure:
        render(*args) if values is None else render(*args, values=values)
    assert expected in str(failure.value)


def test_names_fit_kubernetes_limits_with_the_longest_release_name(helm: str) -> None:
    release = "r" * 53  # helm's own maximum release name length
    docs = render(release=release)
    label = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    for doc in docs:
        name = doc["metadata"]["name"]
        assert len(name) <= 253, name
        if doc["kind"] in ("Service", "Job", "Deployment", "ServiceAccount", "KafkaUser"):
            # DNS labels (Services, the job-name pod label, generated pod names) and Kafka principals.
            assert len(name) <= 63 and label.match(name), f"{doc['kind']} {name!r}"
