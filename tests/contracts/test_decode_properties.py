"""Property tests: whatever bytes, headers or JSON arrive, decode raises nothing but DecodeError."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loyalty_contracts.envelope import DecodeError, Envelope, decode, encode
from loyalty_contracts.registry import EVENT_TYPES
from loyalty_contracts.samples import SAMPLES

GOOD = {ce: encode(Envelope.new(ev, tenant="acme", source="s")) for ce, ev in SAMPLES.items()}
HEADER_NAMES = st.sampled_from(
    [
        "ce_id",
        "ce_source",
        "ce_type",
        "ce_specversion",
        "ce_time",
        "ce_subject",
        "ce_tenantid",
        "ce_partitionkey",
        "content-type",
        "traceparent",
        "other",
    ]
)
HEADER_VALUES = st.one_of(
    st.binary(max_size=40),
    st.sampled_from(
        [
            b"1.0",
            b"application/json",
            *(ce.encode() for ce in EVENT_TYPES),
            b"loyalty.X.v1",
            b"2026-03-02T10:30:00+00:00",
            b"cust-0001",
            b"acme",
            b"",
        ]
    ),
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20,
)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decode_only_decode_errors(*args: Any, **kwargs: Any) -> None:
    try:
        decode(*args, **kwargs)
    except DecodeError as exc:
        assert exc.detail and exc.reason.value


@SETTINGS
@given(
    key=st.none() | st.binary(max_size=20),
    value=st.none() | st.binary(max_size=200),
    headers=st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=12),
)
def test_arbitrary_bytes_and_headers(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> None:
    _decode_only_decode_errors(key, value, headers, known_tenants={"acme"})


@SETTINGS
@given(ce_type=st.sampled_from(sorted(EVENT_TYPES)), body=JSON)
def test_arbitrary_json_under_valid_headers(ce_type: str, body: Any) -> None:
    record = GOOD[ce_type]
    _decode_only_decode_errors(record.key, json.dumps(body).encode(), record.headers)


@SETTINGS
@given(ce_type=st.sampled_from(sorted(EVENT_TYPES)), data=st.data())
def test_valid_body_with_one_field_replaced(ce_type: str, data: st.DataObject) -> None:
    record = GOOD[ce_type]
    body = json.loads(record.value)
    name = data.draw(st.sampled_from(sorted(body)))
    body[name] = data.draw(JSON)
    _decode_only_decode_errors(record.key, json.dumps(body).encode(), record.headers)


@SETTINGS
@given(ce_type=st.sampled_from(sorted(EVENT_TYPES)), data=st.data())
def test_valid_record_with_mutated_bytes_and_header_shapes(ce_type: str, data: st.DataObject) -> None:
    record = GOOD[ce_type]
    value = bytearray(record.value)
    for _ in range(data.draw(st.integers(0, 4))):
        if value:
            value[data.draw(st.integers(0, len(value) - 1))] = data.draw(st.integers(0, 255))
    headers: Any = data.draw(
        st.sampled_from(
            [
                record.headers,
                dict(record.headers),
                [(n, v.decode()) for n, v in record.headers],  # str values instead of bytes
                [(n, None) for n, _ in record.headers],
                [(n,) for n, _ in record.headers],
                [1, 2, 3],
                "ce_id",
            ]
        )
    )
    _decode_only_decode_errors(record.key, bytes(value), headers, max_bytes=data.draw(st.integers(0, 2_000_000)))


def test_the_valid_records_used_above_really_decode() -> None:
    for record in GOOD.values():
        assert decode(record.key, record.value, record.headers).tenant == "acme"


@SETTINGS
@given(amount=st.floats(allow_nan=False, allow_infinity=False))
def test_money_never_accepts_a_float(amount: float) -> None:
    """In python and on the wire, an amount written as a float is a schema violation, even 100.0."""
    import pytest
    from loyalty_contracts.base import Money
    from loyalty_contracts.envelope import DecodeReason
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        Money(amount_minor=amount, currency="EUR")  # type: ignore[arg-type]
    record = GOOD["loyalty.PurchaseMade.v1"]
    body = json.loads(record.value)
    body["total"]["amount_minor"] = amount
    try:
        decode(record.key, json.dumps(body).encode(), record.headers)
    except DecodeError as exc:
        assert exc.reason is DecodeReason.SCHEMA_VIOLATION
    else:
        raise AssertionError(f"float amount {amount!r} was accepted")
