#!/usr/bin/env bash
# All benchmarks on one fresh local stack (see docs/BENCHMARKS.md). `--quick` for a smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.cache/tools/bin:$PATH"
exec uv run --frozen python -m bench.run_all "$@"
