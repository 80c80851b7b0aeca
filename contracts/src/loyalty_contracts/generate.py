"""Generate the partner-facing artefacts from the models and the catalogue.

``python -m loyalty_contracts.generate`` writes ``contracts/schemas/<EventType>.v<N>.json`` (JSON Schema
2020-12 of each event version) and ``contracts/asyncapi.yaml`` (AsyncAPI 3.0 for every topic).
``--check`` writes nothing and exits 1 listing the files that differ from what the code generates.

Schemas describe an open content model (no ``additionalProperties: false``): readers must ignore fields
they do not know, which is what lets a minor revision add optional fields (see contracts/README.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from loyalty_contracts.base import Event
from loyalty_contracts.catalogue import TOPICS, dead_letter_topic
from loyalty_contracts.envelope import DecodeReason
from loyalty_contracts.registry import EVENT_TYPES

CONTRACTS_DIR = Path(__file__).resolve().parents[2]
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID_PREFIX = "urn:loyalty:schema:"
ASYNCAPI_VERSION = "1.0.0"  # version of our AsyncAPI document; bump the minor on compatible additions


def _open_content_model(node: Any) -> Any:
    """Drop ``additionalProperties: false`` everywhere (tolerant readers); keep map value schemas."""
    if isinstance(node, dict):
        return {k: _open_content_model(v) for k, v in node.items() if not (k == "additionalProperties" and v is False)}
    if isinstance(node, list):
        return [_open_content_model(v) for v in node]
    return node


def schema_name(model: type[Event]) -> str:
    return f"{model.event_type}.v{model.event_version}"


def event_schema(model: type[Event], ref_template: str = "#/$defs/{model}") -> dict[str, Any]:
    """JSON Schema of one event version, as published to partners."""
    schema = _open_content_model(model.model_json_schema(ref_template=ref_template))
    schema["x-ce-type"] = model.ce_type()
    return schema


def render_schema_file(model: type[Event]) -> str:
    schema = {
        "$schema": SCHEMA_DIALECT,
        "$id": f"{SCHEMA_ID_PREFIX}{model.ce_type()}",
        **event_schema(model),
    }
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


_HEADER_DESCRIPTIONS: dict[str, str] = {
    "ce_id": "Event id, unique per source (UUID); consumers deduplicate on it.",
    "ce_source": "URI-reference of the producer, e.g. 'urn:loyalty:tiers' or the retailer's own.",
    "ce_type": "Event name and major version, 'loyalty.<EventType>.v<N>'.",
    "ce_specversion": "CloudEvents spec version, always '1.0'.",
    "ce_time": "Event time (equals occurred_at in the body), RFC 3339 with offset.",
    "ce_subject": "Customer id (equals customer_id in the body and the Kafka key).",
    "ce_tenantid": "Retailer (tenant) id.",
    "ce_partitionkey": "Partition key, the customer id.",
    "content-type": "Always 'application/json'.",
    "traceparent": "W3C trace context of the action that caused this event (optional).",
}
_REQUIRED_HEADERS = ["ce_id", "ce_source", "ce_type", "ce_specversion", "ce_time", "ce_subject", "ce_tenantid"]


def _headers_schema() -> dict[str, Any]:
    props: dict[str, Any] = {name: {"type": "string", "description": d} for name, d in _HEADER_DESCRIPTIONS.items()}
    props["ce_specversion"]["const"] = "1.0"
    props["content-type"]["const"] = "application/json"
    return {
        "type": "object",
        "description": "CloudEvents 1.0 Kafka binary content mode headers (values are UTF-8).",
        "properties": props,
        "required": _REQUIRED_HEADERS,
    }


def _component_name(model: type[Event]) -> str:
    return f"{model.event_type}V{model.event_version}"


def asyncapi_document() -> dict[str, Any]:
    schemas: dict[str, Any] = {"CloudEventsHeaders": _headers_schema()}
    messages: dict[str, Any] = {}
    for ce_type, model in sorted(EVENT_TYPES.items()):
        name = _component_name(model)
        schema = event_schema(model, ref_template="#/components/schemas/{model}")
        for def_name, definition in schema.pop("$defs", {}).items():
            if schemas.setdefault(def_name, definition) != definition:
                raise RuntimeError(f"two different nested models are both named {def_name!r}")
        schemas[name] = schema
        messages[name] = {
            "name": ce_type,
            "title": model.event_type,
            "summary": (model.__doc__ or "").strip().splitlines()[0],
            "contentType": "application/json",
            "headers": {"$ref": "#/components/schemas/CloudEventsHeaders"},
            "payload": {"$ref": f"#/components/schemas/{name}"},
            "bindings": {
                "kafka": {
                    "key": {"type": "string", "description": "Customer id."},
                    "bindingVersion": "0.5.0",
                }
            },
        }

    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for topic in TOPICS:
        channel_id = topic.name.replace(".", "_").replace("-", "_")
        models = [EVENT_TYPES[ce] for ce in topic.event_types]
        channels[channel_id] = {
            "address": topic.name,
            "description": topic.description,
            "messages": {_component_name(m): {"$ref": f"#/components/messages/{_component_name(m)}"} for m in models},
            "bindings": {
                "kafka": {
                    "topic": topic.name,
                    "partitions": topic.partitions,
                    "topicConfiguration": {"retention.ms": topic.retention_ms},
                    "bindingVersion": "0.5.0",
                }
            },
            "x-key": topic.key,
            "x-producers": list(topic.producers),
            "x-consumers": list(topic.consumers),
            "x-public": topic.public,
        }
        message_refs = [{"$ref": f"#/channels/{channel_id}/messages/{_component_name(m)}"} for m in models]
        for producer in topic.producers:
            operations[f"{producer}_sends_{channel_id}"] = {
                "action": "send",
                "channel": {"$ref": f"#/channels/{channel_id}"},
                "messages": message_refs,
            }
        for consumer in topic.consumers:
            operations[f"{consumer}_receives_{channel_id}"] = {
                "action": "receive",
                "channel": {"$ref": f"#/channels/{channel_id}"},
                "messages": message_refs,
            }

    dlq_services = sorted({c for t in TOPICS for c in t.consumers})
    for service in dlq_services:
        name = dead_letter_topic(service)
        channels[name.replace(".", "_").replace("-", "_")] = {
            "address": name,
            "description": (
                f"Dead letters of the {service} service: the original record with its original headers plus "
                f"dlq_reason (one of: {', '.join(r.value for r in DecodeReason)}, or handler_error), dlq_error, "
                "dlq_topic, dlq_partition, dlq_offset. The value may be any bytes."
            ),
            "x-producers": [service],
            "x-public": False,
        }

    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Loyalty event suite",
            "version": ASYNCAPI_VERSION,
            "description": (
                "Every topic of the loyalty suite. Messages are CloudEvents 1.0 in Kafka binary content mode: "
                "attributes in ce_* headers, the event as JSON in the value, the customer id as the key. "
                "Topic names carry the major version; readers must ignore unknown JSON fields."
            ),
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
    }


def render_asyncapi() -> str:
    return yaml.safe_dump(asyncapi_document(), sort_keys=True, allow_unicode=True, width=120)


def generated_files() -> dict[str, str]:
    """Path relative to contracts/ -> file content."""
    files = {f"schemas/{schema_name(m)}.json": render_schema_file(m) for m in EVENT_TYPES.values()}
    files["asyncapi.yaml"] = render_asyncapi()
    return files


def differing_files(root: Path = CONTRACTS_DIR) -> list[str]:
    """Generated files whose committed copy is missing or different, plus stale schema files."""
    files = generated_files()
    out = [rel for rel, text in files.items() if not (root / rel).is_file() or (root / rel).read_text() != text]
    schema_dir = root / "schemas"
    if schema_dir.is_dir():
        out += [f"schemas/{p.name} (stale)" for p in schema_dir.glob("*.json") if f"schemas/{p.name}" not in files]
    return sorted(out)


def write(root: Path = CONTRACTS_DIR) -> list[str]:
    """Write every generated file; returns those that changed. Old schema files are never deleted here:
    a published version stays until it is retired on purpose."""
    changed = []
    for rel, text in generated_files().items():
        path = root / rel
        if not path.is_file() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            changed.append(rel)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loyalty_contracts.generate", description=__doc__)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if any file differs")
    parser.add_argument("--root", type=Path, default=CONTRACTS_DIR, help="contracts/ directory")
    args = parser.parse_args(argv)
    if args.check:
        differing = differing_files(args.root)
        for rel in differing:
            print(f"differs: {rel}", file=sys.stderr)
        if differing:
            print("run: uv run python -m loyalty_contracts.generate", file=sys.stderr)
            return 1
        print(f"{len(generated_files())} generated files are up to date")
        return 0
    changed = write(args.root)
    print(f"wrote {len(changed)} changed file(s)" + "".join(f"\n  {c}" for c in changed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
