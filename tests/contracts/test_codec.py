"""Envelope encode/decode: round trips, headers, and every DecodeReason."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from cloudevents.core.bindings.kafka import KafkaMessage, from_binary
from cloudevents.core.formats.json import JSONFormat
from loyalty_contracts.catalogue import topic_for
from loyalty_contracts.envelope import DecodeError, DecodeReason, Envelope, KafkaRecord, decode, encode
from loyalty_contracts.registry import EVENT_TYPES
from loyalty_contracts.samples import SAMPLES

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _record(ce_type: str = "loyalty.PurchaseMade.v1") -> KafkaRecord:
    env = Envelope.new(SAMPLES[ce_type], tenant="acme", source="urn:test", traceparent=TRACEPARENT)
    return encode(env)


def _headers_with(record: KafkaRecord, **changes: bytes | None) -> list[tuple[str, bytes]]:
    """Record headers with some replaced (value bytes) or removed (None); names use '_' for '-'."""
    wanted = {k.replace("__", "-"): v for k, v in changes.items()}
    out = [(n, v) for n, v in record.headers if n not in wanted]
    out.extend((n, v) for n, v in wanted.items() if v is not None)
    return out


@pytest.mark.parametrize("ce_type", sorted(EVENT_TYPES))
def test_every_event_type_round_trips(ce_type: str) -> None:
    event = SAMPLES[ce_type]
    env = Envelope.new(event, tenant="acme", source="urn:loyalty:test", traceparent=TRACEPARENT)
    record = encode(env)

    assert record.topic == topic_for(ce_type)
    assert record.key == event.customer_id.encode()
    decoded = decode(record.key, record.value, record.headers, known_tenants={"acme"})

    assert decoded == env
    assert type(decoded.data) is type(event)
    assert decoded.data == event


def test_envelope_new_fills_attributes_from_the_event() -> None:
    event = SAMPLES["loyalty.PurchaseMade.v1"]
    env = Envelope.new(event, tenant="acme", source="urn:retailer:acme")
    assert env.type == "loyalty.PurchaseMade.v1"
    assert env.time == event.occurred_at
    assert env.subject == env.partition_key == event.customer_id
    assert len(env.id) == 36 and env.id != Envelope.new(event, tenant="acme", source="x").id
    assert Envelope.new(event, tenant="acme", source="x", id="fixed").id == "fixed"


def test_headers_are_cloudevents_binary_mode() -> None:
    record = _record()
    headers = dict(record.headers)
    assert headers["ce_specversion"] == b"1.0"
    assert headers["ce_type"] == b"loyalty.PurchaseMade.v1"
    assert headers["ce_subject"] == headers["ce_partitionkey"] == b"cust-0001"
    assert headers["ce_tenantid"] == b"acme"
    assert headers["content-type"] == b"application/json"
    assert headers["traceparent"] == TRACEPARENT.encode()
    assert datetime.fromisoformat(headers["ce_time"].decode()) == SAMPLES["loyalty.PurchaseMade.v1"].occurred_at
    assert len(record.headers) == len(headers), "no duplicate header names"


def test_cloudevents_sdk_reads_what_encode_writes() -> None:
    record = _record()
    event = from_binary(KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value), JSONFormat())
    assert event.get_type() == "loyalty.PurchaseMade.v1"
    assert event.get_subject() == "cust-0001"
    assert event.get_extension("tenantid") == "acme"
    data = event.get_data()
    assert isinstance(data, dict) and data["order_id"] == "order-1001"


def test_money_is_integer_minor_units_on_the_wire() -> None:
    body = json.loads(_record().value)
    assert body["total"] == {"amount_minor": 11998, "currency": "EUR"}
    assert isinstance(body["lines"][0]["unit_price"]["amount_minor"], int)


def test_unknown_body_fields_are_ignored_by_the_reader() -> None:
    record = _record()
    body = json.loads(record.value)
    body["added_in_a_later_minor_revision"] = "x"
    body["lines"][0]["also_new"] = 1
    env = decode(record.key, json.dumps(body).encode(), record.headers)
    assert env.data == SAMPLES["loyalty.PurchaseMade.v1"]


def test_invalid_traceparent_is_dropped_not_fatal() -> None:
    record = _record()
    env = decode(record.key, record.value, _headers_with(record, traceparent=b"garbage"))
    assert env.traceparent is None


def test_key_may_be_absent() -> None:
    record = _record()
    assert decode(None, record.value, record.headers).subject == "cust-0001"


def _reason(key: bytes | None, value: object, headers: object, **kwargs: object) -> DecodeReason:
    with pytest.raises(DecodeError) as info:
        decode(key, value, headers, **kwargs)  # type: ignore[arg-type]
    assert info.value.detail
    return info.value.reason


def test_reason_malformed_json() -> None:
    r = _record()
    assert _reason(r.key, b'{"customer_id": ', r.headers) is DecodeReason.MALFORMED_JSON
    assert _reason(r.key, b"\xff\xfe", r.headers) is DecodeReason.MALFORMED_JSON
    assert _reason(r.key, None, r.headers) is DecodeReason.MALFORMED_JSON


def test_reason_unknown_type_and_unknown_version() -> None:
    r = _record()
    assert _reason(r.key, r.value, _headers_with(r, ce_type=b"loyalty.Nope.v1")) is DecodeReason.UNKNOWN_TYPE
    assert _reason(r.key, r.value, _headers_with(r, ce_type=b"com.other")) is DecodeReason.UNKNOWN_TYPE
    unknown_version = _headers_with(r, ce_type=b"loyalty.PurchaseMade.v9")
    assert _reason(r.key, r.value, unknown_version) is DecodeReason.UNKNOWN_VERSION


@pytest.mark.parametrize(
    "name", ["ce_id", "ce_source", "ce_type", "ce_specversion", "ce_time", "ce_subject", "ce_tenantid"]
)
def test_reason_missing_header(name: str) -> None:
    r = _record()
    with pytest.raises(DecodeError) as info:
        decode(r.key, r.value, _headers_with(r, **{name: None}))
    assert info.value.reason is DecodeReason.MISSING_HEADER
    assert name in info.value.detail
    assert _reason(r.key, r.value, None) is DecodeReason.MISSING_HEADER


def test_reason_invalid_header() -> None:
    r = _record()
    cases = [
        _headers_with(r, ce_specversion=b"0.3"),
        _headers_with(r, ce_time=b"yesterday"),
        _headers_with(r, ce_time=b"2026-03-02T10:30:00"),  # naive
        _headers_with(r, content__type=b"application/avro"),
        _headers_with(r, ce_id=b"\xff\xfe"),
    ]
    for headers in cases:
        assert _reason(r.key, r.value, headers) is DecodeReason.INVALID_HEADER
    assert _reason(r.key, r.value, [("ce_id",)]) is DecodeReason.INVALID_HEADER


def test_reason_schema_violation_names_the_field_without_its_value() -> None:
    r = _record()
    body = json.loads(r.value)
    body["total"]["amount_minor"] = 19.99
    with pytest.raises(DecodeError) as info:
        decode(r.key, json.dumps(body).encode(), r.headers)
    assert info.value.reason is DecodeReason.SCHEMA_VIOLATION
    assert "total.amount_minor" in info.value.detail
    assert "19.99" not in info.value.detail


def test_reason_schema_violation_for_naive_event_time() -> None:
    r = _record()
    body = json.loads(r.value)
    body["occurred_at"] = "2026-03-02T10:30:00"
    assert _reason(r.key, json.dumps(body).encode(), r.headers) is DecodeReason.SCHEMA_VIOLATION


def test_reason_oversized() -> None:
    r = _record()
    assert _reason(r.key, r.value, r.headers, max_bytes=len(r.value) - 1) is DecodeReason.OVERSIZED
    assert decode(r.key, r.value, r.headers, max_bytes=len(r.value)).type == "loyalty.PurchaseMade.v1"


def test_reason_unknown_tenant() -> None:
    r = _record()
    assert _reason(r.key, r.value, r.headers, known_tenants={"other"}) is DecodeReason.UNKNOWN_TENANT


def test_reason_key_mismatch() -> None:
    r = _record()
    assert _reason(b"someone-else", r.value, r.headers) is DecodeReason.KEY_MISMATCH
    assert _reason(r.key, r.value, _headers_with(r, ce_subject=b"someone-else")) is DecodeReason.KEY_MISMATCH
    assert _reason(r.key, r.value, _headers_with(r, ce_partitionkey=b"x")) is DecodeReason.KEY_MISMATCH


def test_every_reason_is_covered_by_a_test_above() -> None:
    covered = {
        DecodeReason.MALFORMED_JSON,
        DecodeReason.UNKNOWN_TYPE,
        DecodeReason.UNKNOWN_VERSION,
        DecodeReason.MISSING_HEADER,
        DecodeReason.INVALID_HEADER,
        DecodeReason.SCHEMA_VIOLATION,
        DecodeReason.OVERSIZED,
        DecodeReason.UNKNOWN_TENANT,
        DecodeReason.KEY_MISMATCH,
    }
    assert covered == set(DecodeReason)


def test_encode_is_deterministic_for_a_given_envelope() -> None:
    env = Envelope.new(SAMPLES["loyalty.TierChanged.v1"], tenant="acme", source="s", id="1")
    assert encode(env) == encode(env)
    assert env.time.tzinfo is not None and env.time.utcoffset() == UTC.utcoffset(None)
