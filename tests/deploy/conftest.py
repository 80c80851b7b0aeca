from __future__ import annotations

from typing import Any

import pytest
from deploy_chart import HelmMissing, helm_binary, render


@pytest.fixture(scope="session")
def helm() -> str:
    try:
        return helm_binary()
    except HelmMissing as exc:  # fail loudly: these tests must not silently skip
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def manifests(helm: str) -> list[dict[str, Any]]:
    """The chart rendered with its CI values (defaults + one example tenant)."""
    return render()
