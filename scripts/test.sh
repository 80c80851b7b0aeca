#!/usr/bin/env bash
# The whole test suite on a real Kafka + Postgres that the tests start themselves (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.cache/tools/bin:$PATH"
exec uv run --frozen pytest "$@"
