"""CloudEvents 1.0 envelope in Kafka binary content mode: attributes in ``ce_*`` headers, event JSON as value.

Headers: ``ce_id, ce_source, ce_type, ce_specversion ("1.0"), ce_time (RFC 3339), ce_subject (customer id),
ce_tenantid, ce_partitionkey`` (extensions), ``content-type: application/json`` and optional W3C
``traceparent``. The Kafka key is the customer id.

Why hand code instead of ``cloudevents.core.bindings.kafka.to_binary/from_binary``: ``decode`` runs for every
consumed event. The SDK's ``from_binary`` parses the body with ``json.loads`` into a dict, builds a generic
CloudEvent object and parses ``ce_time`` with dateutil; we would then validate the dict again with pydantic,
and strict python-mode validation rejects the ISO strings in it, so we would have to loosen strictness (which
would let ``10.0`` pass as an integer amount) or serialise back to JSON. Here the body is validated once, in
strict JSON mode, straight from bytes by pydantic-core, and the headers are read in one pass.
``contracts/bench/codec.py`` measures both paths (numbers in contracts/README.md). The produced headers are
the same ones the SDK's ``to_binary`` writes; a test checks that the SDK reads what ``encode`` writes.
"""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from loyalty_contracts.base import Event
from loyalty_contracts.catalogue import topic_for
from loyalty_contracts.registry import EVENT_NAMES, EVENT_TYPES

SPECVERSION = "1.0"
CONTENT_TYPE = "application/json"
DEFAULT_MAX_BYTES = 1_000_000

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$")
_CE_TYPE = re.compile(r"^loyalty\.([A-Za-z][A-Za-z0-9]*)\.v([0-9]+)$")
_REQUIRED = ("ce_id", "ce_source", "ce_type", "ce_specversion", "ce_time", "ce_subject", "ce_tenantid")
_KNOWN_HEADERS = frozenset((*_REQUIRED, "ce_partitionkey", "content-type", "traceparent"))


class DecodeReason(enum.StrEnum):
    """Why a Kafka record could not become an Envelope (the value travels in the ``dlq_reason`` header)."""

    MALFORMED_JSON = "malformed_json"
    UNKNOWN_TYPE = "unknown_type"
    UNKNOWN_VERSION = "unknown_version"
    MISSING_HEADER = "missing_header"
    INVALID_HEADER = "invalid_header"
    SCHEMA_VIOLATION = "schema_violation"
    OVERSIZED = "oversized"
    UNKNOWN_TENANT = "unknown_tenant"
    KEY_MISMATCH = "key_mismatch"  # Kafka key / ce_subject / ce_partitionkey differ from data.customer_id


class DecodeError(Exception):
    """The only exception ``decode`` raises. ``detail`` never contains field values (no PII)."""

    def __init__(self, reason: DecodeReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Envelope:
    """One event with its CloudEvents attributes."""

    id: str
    source: str
    type: str  # ce_type, e.g. "loyalty.PurchaseMade.v1"
    time: datetime
    subject: str  # customer id
    tenant: str
    partition_key: str
    traceparent: str | None
    data: Event

    @classmethod
    def new(
        cls,
        data: Event,
        *,
        tenant: str,
        source: str,
        traceparent: str | None = None,
        id: str | None = None,
    ) -> Envelope:
        """Envelope for a new event: id (uuid4 unless given), type, time, subject and key from ``data``."""
        if not tenant:
            raise ValueError("tenant must not be empty")
        if not source:
            raise ValueError("source must not be empty")
        customer_id = data.customer_id
        # Positional, in field order (id, source, type, time, subject, tenant, partition_key, traceparent,
        # data): runs per emitted event, and keywords cost ~0.3 us more.
        return cls(
            id if id is not None else str(uuid.uuid4()), source, data.ce_type(), data.occurred_at,
            customer_id, tenant, customer_id, traceparent, data,
        )


@dataclass(frozen=True, slots=True)
class KafkaRecord:
    """What a producer sends: topic, key, value and headers (aiokafka's header shape)."""

    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


_SPECVERSION_HEADER = ("ce_specversion", SPECVERSION.encode())
_CONTENT_TYPE_HEADER = ("content-type", CONTENT_TYPE.encode())


def encode(env: Envelope, topic_prefix: str = "") -> KafkaRecord:
    """Kafka binary-mode record for an envelope; the topic comes from the catalogue (after ``topic_prefix``).

    Runs once per emitted event: constant headers are shared tuples and the prefix is applied here, so an
    emitting service builds one ``KafkaRecord``, not two.
    """
    data = env.data
    headers = [
        ("ce_id", env.id.encode()),
        ("ce_source", env.source.encode()),
        ("ce_type", env.type.encode()),
        _SPECVERSION_HEADER,
        ("ce_time", env.time.isoformat().encode()),
        ("ce_subject", env.subject.encode()),
        ("ce_tenantid", env.tenant.encode()),
        ("ce_partitionkey", env.partition_key.encode()),
        _CONTENT_TYPE_HEADER,
    ]
    if env.traceparent:
        headers.append(("traceparent", env.traceparent.encode()))
    return KafkaRecord(
        topic_prefix + topic_for(env.type),
        data.customer_id.encode(),
        data.__pydantic_serializer__.to_json(data),
        headers,
    )


def _header_map(headers: Iterable[tuple[str, bytes]] | Mapping[str, bytes] | None) -> dict[str, str]:
    """Our headers as text; the first occurrence of a name wins; unknown headers are ignored."""
    found: dict[str, str] = {}
    if headers is None:
        return found
    try:
        # lists/tuples (aiokafka's shape) first: an isinstance check against the Mapping ABC is slow
        pairs: Iterable[Any] = (
            headers if type(headers) in (list, tuple) or not isinstance(headers, Mapping) else headers.items()
        )
        for pair in pairs:
            name, raw = pair
            if name in _KNOWN_HEADERS and name not in found:
                if type(raw) is bytes:
                    found[name] = raw.decode()
                elif isinstance(raw, str):
                    found[name] = raw
                else:
                    found[name] = bytes(raw).decode()
    except UnicodeDecodeError as exc:
        raise DecodeError(DecodeReason.INVALID_HEADER, f"header is not UTF-8: {exc.reason}") from None
    except (TypeError, ValueError) as exc:
        raise DecodeError(DecodeReason.INVALID_HEADER, f"headers are not (name, bytes) pairs: {exc}") from None
    return found


def _validation_detail(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False)[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def decode(
    key: bytes | None,
    value: bytes | None,
    headers: Iterable[tuple[str, bytes]] | Mapping[str, bytes] | None,
    *,
    known_tenants: Container[str] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Envelope:
    """Envelope from a consumed Kafka record; raises only ``DecodeError``.

    Unknown body fields are ignored (tolerant reader), so a producer on a newer minor revision of the same
    major version (with extra optional fields) never breaks this consumer.
    """
    if value is None:
        raise DecodeError(DecodeReason.MALFORMED_JSON, "record has no value")
    if type(value) is bytes:
        pass  # what aiokafka hands out; the checks below are for other callers
    elif isinstance(value, memoryview):
        value = value.tobytes()
    elif not isinstance(value, bytes | bytearray):
        raise DecodeError(DecodeReason.MALFORMED_JSON, f"value is {type(value).__name__}, not bytes")
    if len(value) > max_bytes:
        raise DecodeError(DecodeReason.OVERSIZED, f"value is {len(value)} bytes, limit {max_bytes}")

    h = _header_map(headers)
    for name in _REQUIRED:
        if not h.get(name):
            raise DecodeError(DecodeReason.MISSING_HEADER, f"missing header {name}")
    if h["ce_specversion"] != SPECVERSION:
        raise DecodeError(DecodeReason.INVALID_HEADER, f"ce_specversion {h['ce_specversion'][:20]!r} is not 1.0")
    content_type = h.get("content-type")
    if (
        content_type is not None
        and content_type != CONTENT_TYPE
        and content_type.split(";", 1)[0].strip().lower() != CONTENT_TYPE
    ):
        raise DecodeError(DecodeReason.INVALID_HEADER, f"content-type {content_type[:60]!r} is not {CONTENT_TYPE}")

    ce_type = h["ce_type"]
    model = EVENT_TYPES.get(ce_type)
    if model is None:
        m = _CE_TYPE.match(ce_type)
        if m is not None and m.group(1) in EVENT_NAMES:
            raise DecodeError(DecodeReason.UNKNOWN_VERSION, f"unknown version of {m.group(1)}: {ce_type[:100]!r}")
        raise DecodeError(DecodeReason.UNKNOWN_TYPE, f"unknown event type {ce_type[:100]!r}")

    tenant = h["ce_tenantid"]
    if known_tenants is not None and tenant not in known_tenants:
        raise DecodeError(DecodeReason.UNKNOWN_TENANT, f"unknown tenant {tenant[:100]!r}")

    try:
        time = datetime.fromisoformat(h["ce_time"])
    except ValueError:
        raise DecodeError(DecodeReason.INVALID_HEADER, "ce_time is not an RFC 3339 timestamp") from None
    if time.tzinfo is None or time.utcoffset() is None:
        raise DecodeError(DecodeReason.INVALID_HEADER, "ce_time has no UTC offset")

    try:
        # Exactly what ``model.model_validate_json(value, extra="ignore")`` runs, minus its Python wrapper.
        data = model.__pydantic_validator__.validate_json(value, extra="ignore")
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False, include_context=False)[0]
        if first["type"] in ("json_invalid", "json_type"):
            raise DecodeError(DecodeReason.MALFORMED_JSON, first["msg"]) from None
        raise DecodeError(DecodeReason.SCHEMA_VIOLATION, f"{ce_type}: {_validation_detail(exc)}") from None

    customer_id = data.customer_id
    subject = h["ce_subject"]
    partition_key = h.get("ce_partitionkey") or customer_id
    if subject != customer_id or partition_key != customer_id:
        raise DecodeError(DecodeReason.KEY_MISMATCH, "ce_subject/ce_partitionkey differ from data.customer_id")
    if key is not None and key != customer_id.encode():
        raise DecodeError(DecodeReason.KEY_MISMATCH, "Kafka key differs from data.customer_id")

    traceparent = h.get("traceparent")
    if traceparent is not None and _TRACEPARENT.match(traceparent) is None:
        traceparent = None  # W3C trace context: an invalid traceparent is ignored, a new trace starts

    # Positional (field order: id, source, type, time, subject, tenant, partition_key, traceparent, data):
    # keyword arguments cost ~0.3 us more per record.
    return Envelope(h["ce_id"], h["ce_source"], ce_type, time, subject, tenant, partition_key, traceparent, data)
