"""loyalty_kit: what every loyalty service needs (see docs/KIT.md)."""

from loyalty_kit.batch import BatchContext
from loyalty_kit.kafka import group_for
from loyalty_kit.service import ServiceApp
from loyalty_kit.settings import ServiceSettings
from loyalty_kit.timers import Timer, TimerContext

__all__ = ["BatchContext", "ServiceApp", "ServiceSettings", "Timer", "TimerContext", "group_for"]
