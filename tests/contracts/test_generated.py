"""Committed generated files match what the code generates; the artefacts are well formed."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from loyalty_contracts import generate
from loyalty_contracts.catalogue import TOPICS
from loyalty_contracts.envelope import Envelope, encode
from loyalty_contracts.registry import EVENT_TYPES
from loyalty_contracts.samples import SAMPLES


def test_committed_generated_files_match_the_code() -> None:
    differing = generate.differing_files()
    assert differing == [], f"regenerate with: uv run python -m loyalty_contracts.generate ({differing})"


def test_check_mode_reports_a_differing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert generate.main(["--root", str(tmp_path)]) == 0
    assert generate.main(["--check", "--root", str(tmp_path)]) == 0
    target = tmp_path / "schemas" / "PurchaseMade.v1.json"
    target.write_text(target.read_text().replace("Order id", "Order number"))
    assert generate.main(["--check", "--root", str(tmp_path)]) == 1
    assert "schemas/PurchaseMade.v1.json" in capsys.readouterr().err


@pytest.mark.parametrize("ce_type", sorted(EVENT_TYPES))
def test_sample_wire_body_validates_against_the_committed_schema(ce_type: str) -> None:
    """What a partner in another language would do: validate our JSON against the published schema."""
    model = EVENT_TYPES[ce_type]
    schema = json.loads((generate.CONTRACTS_DIR / "schemas" / f"{generate.schema_name(model)}.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    body = json.loads(encode(Envelope.new(SAMPLES[ce_type], tenant="acme", source="s")).value)
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(body)


def test_published_schema_rejects_float_money_and_missing_fields() -> None:
    schema = json.loads((generate.CONTRACTS_DIR / "schemas" / "PurchaseMade.v1.json").read_text())
    body = json.loads(SAMPLES["loyalty.PurchaseMade.v1"].model_dump_json())
    validator = jsonschema.Draft202012Validator(schema)
    body["total"]["amount_minor"] = 119.98
    assert not validator.is_valid(body)
    body["total"]["amount_minor"] = 11998
    del body["order_id"]
    assert not validator.is_valid(body)


def test_every_field_is_documented() -> None:
    for ce_type, model in EVENT_TYPES.items():
        schema = generate.event_schema(model)
        objects = [schema, *schema.get("$defs", {}).values()]
        for obj in objects:
            for name, prop in obj.get("properties", {}).items():
                assert prop.get("description"), f"{ce_type}: {obj.get('title')}.{name} has no description"


def test_asyncapi_lists_every_topic_with_headers_and_payload() -> None:
    doc = yaml.safe_load((generate.CONTRACTS_DIR / "asyncapi.yaml").read_text())
    assert doc["asyncapi"] == "3.0.0"
    addresses = {c["address"] for c in doc["channels"].values()}
    assert {t.name for t in TOPICS} <= addresses
    assert {"loyalty.dlq.tiers.v1", "loyalty.dlq.notifier.v1"} <= addresses
    for message in doc["components"]["messages"].values():
        assert message["headers"] == {"$ref": "#/components/schemas/CloudEventsHeaders"}
        payload = message["payload"]["$ref"].rsplit("/", 1)[1]
        assert payload in doc["components"]["schemas"]
    # every local $ref in the document resolves
    text = json.dumps(doc)
    for ref in {r for r in _refs(doc)}:
        node = doc
        for part in ref[2:].split("/"):
            node = node[part]
    assert "#/$defs/" not in text


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        out = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return out + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []
