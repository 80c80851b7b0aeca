"""One mypy run over the whole workspace is clean (what `uv run mypy` checks: [tool.mypy] files in pyproject.toml).

Each package alone looks clean because the other workspace packages (no py.typed marker) are skipped as untyped;
only the joint run sees errors across package boundaries. The run is cold (its own cache directory), as in CI
on a fresh clone, and a stale shared .mypy_cache cannot report errors the code does not have: ~10 s on 2 cores.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_whole_workspace_passes_mypy(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy-cache")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert run.returncode == 0, f"mypy exited {run.returncode}:\n{run.stdout}{run.stderr}"
    assert "Success: no issues found" in run.stdout, run.stdout
