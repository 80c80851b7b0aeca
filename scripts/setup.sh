#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: system packages (Java 17, Maven, Postgres), uv, the workspace venv.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
java_major() { java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1; }
if ! command -v java >/dev/null || [ "$(java_major)" -lt 17 ]; then need_apt+=(openjdk-17-jre-headless); fi
command -v mvn >/dev/null || need_apt+=(maven)
if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then need_apt+=(postgresql); fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing system packages: ${need_apt[*]} (install them with apt-get as root)" >&2; exit 1
  fi
  echo "setup: installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# uv manages the workspace (one lock file); install it into a private tool venv if it is not on PATH.
if ! command -v uv >/dev/null; then
  if [ ! -x .cache/tools/bin/uv ]; then
    python3 -m venv .cache/tools
    .cache/tools/bin/pip install -q --disable-pip-version-check "uv>=0.5"
  fi
  export PATH="$PWD/.cache/tools/bin:$PATH"
fi
uv sync --frozen --quiet

# Offline deploy tests (tests/deploy) need helm: built once from the Go module proxy into .cache/bin.
bash deploy/tools.sh >/dev/null
