"""Structured JSON logging.

Never pass event bodies, contacts or names to a logger: log ids, types, tenants, topics and offsets only.
The formatter emits only the message, fixed fields and whitelisted ``extra`` keys, so an accidental
``extra={"event": ...}`` does not leak a body into the logs.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

SAFE_EXTRA_KEYS = frozenset(
    {
        "service", "tenant", "event_id", "event_type", "topic", "partition", "offset", "count",
        "batch_size", "reason", "error", "attempt", "delay_s", "kind", "timer_id", "rows", "elapsed_ms",
        "dead_letters", "migration", "schema", "group_id",
    }
)


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "service": self.service,
            "msg": record.getMessage(),
        }
        for key in SAFE_EXTRA_KEYS:
            if key in record.__dict__ and key != "service":
                entry[key] = record.__dict__[key]
        if record.exc_info and record.exc_info[0] is not None:
            # Exception type and message only: tracebacks can quote local variables holding PII.
            entry["exc"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
        return json.dumps(entry, default=str)


def configure_logging(service: str, level: str = "INFO") -> None:
    """Route all logging to stdout as one JSON object per line."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiokafka logs record contents at DEBUG; keep it quiet.
    logging.getLogger("aiokafka").setLevel(max(logging.INFO, logging.getLevelName(level)))
