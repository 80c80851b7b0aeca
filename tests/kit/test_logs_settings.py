"""JSON logs carry only whitelisted fields; settings come from LOYALTY_* variables."""

from __future__ import annotations

import json
import logging

import pytest
from loyalty_kit.logs import JsonFormatter
from loyalty_kit.settings import ServiceSettings


def test_json_logs_drop_non_whitelisted_extras_and_tracebacks() -> None:
    formatter = JsonFormatter("tiers")
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "dead-lettered record", None, None)
    record.__dict__.update({"topic": "loyalty.purchase-made.v1", "offset": 7, "body": {"email": "a@b.c"}})
    try:
        raise ValueError("bad thing")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    line = json.loads(formatter.format(record))
    assert line["service"] == "tiers" and line["level"] == "WARNING" and line["msg"] == "dead-lettered record"
    assert line["topic"] == "loyalty.purchase-made.v1" and line["offset"] == 7
    assert "body" not in line and "a@b.c" not in json.dumps(line)
    assert line["exc"] == "ValueError: bad thing"


def test_settings_read_the_loyalty_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOYALTY_SERVICE", "tiers")
    monkeypatch.setenv("LOYALTY_KAFKA_BOOTSTRAP", "broker:9092")
    monkeypatch.setenv("LOYALTY_BATCH_MAX_RECORDS", "250")
    monkeypatch.setenv("LOYALTY_TIMER_CLOCK", "event")
    s = ServiceSettings()  # type: ignore[call-arg]
    assert (s.service, s.kafka_bootstrap, s.batch_max_records, s.timer_clock) == ("tiers", "broker:9092", 250, "event")
    assert s.group_id == "loyalty-tiers" and s.http_port == 8080  # what the chart and compose use
    monkeypatch.setenv("LOYALTY_TIMER_CLOCK", "sundial")
    with pytest.raises(ValueError, match="timer_clock"):
        ServiceSettings()  # type: ignore[call-arg]
