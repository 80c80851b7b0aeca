#!/usr/bin/env bash
# The main job: set up, start the local stack and the suite, run until Ctrl-C (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.cache/tools/bin:$PATH"
exec uv run --frozen loyalty run "$@"
