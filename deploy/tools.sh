#!/usr/bin/env bash
# Installs what the offline deploy tests need, using package registries only, into a cache outside git:
#   helm  -> .cache/bin/helm, built once from the Go module proxy (no prebuilt binary download)
#   kubernetes-validate + jsonschema -> the uv dev group (`uv sync --frozen`)
# Idempotent: a second run with the binary present does nothing. After it, tests need no network.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.20.2}"
KUBE_MINOR=35  # helm v3.20 builds against the k8s.io v0.35 modules
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin_dir="${LOYALTY_TOOLS_BIN:-$repo_root/.cache/bin}"
mkdir -p "$bin_dir"

stamp="$bin_dir/helm.build"  # what the binary was built as; rebuild when the wanted build differs
wanted="helm=$HELM_VERSION kube=1.$KUBE_MINOR"
if [[ -x "$bin_dir/helm" && -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]]; then
    echo "helm $HELM_VERSION already at $bin_dir/helm"
else
    # Go may be installed outside PATH (e.g. /usr/local/go); Debian's golang-go is too old for helm 3.20.
    command -v go >/dev/null || { [[ -x /usr/local/go/bin/go ]] && export PATH="/usr/local/go/bin:$PATH"; } || true
    command -v go >/dev/null || { echo "tools.sh: go is required to build helm (Go >= 1.24, e.g. from go.dev or the Go module proxy toolchain)" >&2; exit 1; }
    echo "building helm $HELM_VERSION from the Go module proxy into $bin_dir (a few minutes on 2 cores)"
    # Same ldflags as helm's Makefile: the real version tag, and the Kubernetes version helm assumes for
    # lint/template (go install alone leaves it at 1.20, which fails the chart's kubeVersion constraint).
    ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
    for pkg in pkg/lint/rules pkg/chartutil; do
        ldflags+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$KUBE_MINOR"
    done
    GOBIN="$bin_dir" CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -buildvcs=false" go install -ldflags "$ldflags" \
        "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
    echo "$wanted" > "$stamp"
fi
"$bin_dir/helm" version --short

cd "$repo_root"
uv sync --frozen --quiet
uv run --frozen --quiet python -c "import kubernetes_validate, jsonschema; print('kubernetes-validate ok')"
