"""The `e2e` fixture: one start of the four real service processes per test module (see e2e_suite.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from e2e_suite import E2ESuite, running_suite


@pytest.fixture(scope="module")
async def e2e(kafka_bootstrap: str, pg_admin_dsn: str, tmp_path_factory: pytest.TempPathFactory
              ) -> AsyncIterator[E2ESuite]:
    async with running_suite(kafka_bootstrap, pg_admin_dsn, tmp_path_factory.mktemp("e2e")) as suite:
        yield suite
