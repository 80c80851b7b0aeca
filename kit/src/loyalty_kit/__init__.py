"""loyalty_kit: what every loyalty service needs (see docs/KIT.md).

The names below are imported on first use (PEP 562), so ``import loyalty_kit.outbox`` in a small process
(the relay child, CLI commands) does not pull in FastAPI, FastStream and OpenTelemetry.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loyalty_kit.batch import BatchContext
    from loyalty_kit.kafka import group_for
    from loyalty_kit.service import ServiceApp
    from loyalty_kit.settings import ServiceSettings
    from loyalty_kit.timers import Timer, TimerContext

_EXPORTS = {
    "BatchContext": "loyalty_kit.batch",
    "group_for": "loyalty_kit.kafka",
    "ServiceApp": "loyalty_kit.service",
    "ServiceSettings": "loyalty_kit.settings",
    "Timer": "loyalty_kit.timers",
    "TimerContext": "loyalty_kit.timers",
}

__all__ = ["BatchContext", "ServiceApp", "ServiceSettings", "Timer", "TimerContext", "group_for"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'loyalty_kit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
