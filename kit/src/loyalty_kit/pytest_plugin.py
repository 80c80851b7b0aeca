"""pytest plugin (entry point ``loyalty_kit``): delete the topics of isolated test runs when the session ends.

``loyalty_kit.testing.isolated_settings`` and ``running`` register each run's topic prefix; without this
clean-up a shared development broker accumulates thousands of test partitions and runs out of heap.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def _loyalty_kit_delete_test_topics() -> Iterator[None]:
    yield
    from loyalty_kit.testing import _CLEANUP, delete_registered_topics

    if not _CLEANUP:
        return
    try:
        asyncio.run(delete_registered_topics())
    except Exception as exc:  # clean-up must not turn a passed run red; say it did not happen
        warnings.warn(f"loyalty_kit: deleting test topics failed: {type(exc).__name__}: {exc}", stacklevel=1)
