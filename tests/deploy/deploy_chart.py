"""Helpers for the offline deploy tests: find helm, render the chart, validate against vendored CRDs."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CHART = DEPLOY / "helm" / "loyalty-suite"
CI_VALUES = CHART / "ci" / "test-values.yaml"
CRDS = DEPLOY / "crds"
SERVICES = ("tiers", "referrals", "surveys", "notifier")


class HelmMissing(RuntimeError):
    pass


def helm_binary() -> str:
    """helm from $LOYALTY_HELM, the project cache (deploy/tools.sh), or PATH; never downloads."""
    candidates = [os.environ.get("LOYALTY_HELM"), str(REPO / ".cache" / "bin" / "helm"), shutil.which("helm")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise HelmMissing("helm not found: run deploy/tools.sh once (builds it into .cache/bin from the Go proxy)")


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm_binary(), *args], capture_output=True, text=True, timeout=120, check=False)


def render(*extra: str, values: Iterable[Path] = (CI_VALUES,), release: str = "t") -> list[dict[str, Any]]:
    """`helm template` the chart; returns the non-empty documents. Raises with helm's stderr on failure."""
    args = ["template", release, str(CHART), "--namespace", "loyalty"]
    for path in values:
        args += ["-f", str(path)]
    result = run_helm(*args, *extra)
    if result.returncode != 0:
        raise RenderError(result.stderr.strip())
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


class RenderError(RuntimeError):
    pass


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """name -> value (str) or valueFrom (dict)."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


# ---- CRD schemas -----------------------------------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """An OpenAPI v3 CRD schema as JSON Schema with the API server's strict field validation: objects that
    list properties and neither preserve unknown fields nor declare additionalProperties reject unknown
    keys (kubectl's default --validate=strict errors on them); `nullable` admits null."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and not schema.get("x-kubernetes-preserve-unknown-fields")
        and "additionalProperties" not in schema
    ):
        out["additionalProperties"] = False
    if schema.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


@cache
def crd_index() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> JSON Schema, from every vendored CRD under deploy/crds/."""
    index: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(CRDS.rglob("*.yaml")):
        crd = yaml.safe_load(path.read_text(encoding="utf-8"))
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
            # metadata is validated by the API server itself, not by the CRD schema.
            schema.setdefault("properties", {})["metadata"] = {"type": "object"}
            index[(f"{group}/{version['name']}", kind)] = _strict(schema)
    return index


def crd_errors(doc: dict[str, Any]) -> list[str]:
    """Validation errors of one custom resource against its vendored CRD ("no CRD" is an error too)."""
    schema = crd_index().get((doc["apiVersion"], doc["kind"]))
    if schema is None:
        return [f"no vendored CRD for {doc['apiVersion']} {doc['kind']}"]
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{doc['kind']}/{doc['metadata']['name']}: {'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(doc)
    ]


def secret_env_names(node: object) -> set[str]:
    """Env var names the program files point at for secrets (keys ``*_env`` / ``*_envs``): in Kubernetes
    these come from ``services.<name>.secretEnv``; here they get throwaway values."""
    names: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if str(key).endswith("_env") and isinstance(value, str):
                names.add(value)
            elif str(key).endswith("_envs") and isinstance(value, list):
                names.update(str(v) for v in value)
            else:
                names |= secret_env_names(value)
    elif isinstance(node, list):
        for item in node:
            names |= secret_env_names(item)
    return names
