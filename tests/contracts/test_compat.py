"""The compatibility gate: the checker catches each kind of breaking change, and every committed schema
revision of a published version is compatible with the current model (transitively, over git history)."""

from __future__ import annotations

import copy
import json
import subprocess
from typing import Any

import pytest
from loyalty_contracts.compat import check_compatible
from loyalty_contracts.generate import CONTRACTS_DIR, event_schema, render_schema_file, schema_name
from loyalty_contracts.registry import EVENT_TYPES

REPO = CONTRACTS_DIR.parent
BASE: dict[str, Any] = json.loads(render_schema_file(EVENT_TYPES["loyalty.PurchaseMade.v1"]))


def _changed(edit: Any) -> dict[str, Any]:
    new = copy.deepcopy(BASE)
    edit(new)
    return new


def _problems(edit: Any) -> list[str]:
    return check_compatible(BASE, _changed(edit))


def test_identical_schema_is_compatible() -> None:
    assert check_compatible(BASE, copy.deepcopy(BASE)) == []


def test_adding_an_optional_field_is_compatible() -> None:
    def add(s: dict[str, Any]) -> None:
        s["properties"]["gift_message"] = {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None}

    assert _problems(add) == []


def test_adding_an_enum_value_is_accepted_by_the_stated_rule() -> None:
    assert _problems(lambda s: s["properties"]["sales_channel"]["enum"].append("kiosk")) == []


def test_field_removed() -> None:
    problems = _problems(lambda s: s["properties"].pop("store_id"))
    assert any("store_id: field removed" in p for p in problems)


def test_field_renamed() -> None:
    def rename(s: dict[str, Any]) -> None:
        s["properties"]["shop_id"] = s["properties"].pop("store_id")
        s["required"] = ["shop_id" if r == "store_id" else r for r in s["required"]]

    problems = _problems(rename)
    assert any("store_id: field removed" in p for p in problems)
    assert any("shop_id: new required field" in p for p in problems)


def test_nested_field_removed_through_a_ref() -> None:
    problems = _problems(lambda s: s["$defs"]["Money"]["properties"].pop("currency"))
    assert any("total.currency: field removed" in p for p in problems)
    assert any("lines[].unit_price.currency: field removed" in p for p in problems)


def test_type_changed() -> None:
    problems = _problems(lambda s: s["$defs"]["Money"]["properties"]["amount_minor"].update(type="number"))
    assert any("total.amount_minor: type changed from integer to number" in p for p in problems)


def test_nullability_changed() -> None:
    def make_nullable(s: dict[str, Any]) -> None:
        s["properties"]["order_id"] = {"anyOf": [s["properties"]["order_id"], {"type": "null"}]}

    assert any("order_id: type changed" in p for p in _problems(make_nullable))

    def drop_null(s: dict[str, Any]) -> None:
        s["properties"]["referral_code"] = s["properties"]["referral_code"]["anyOf"][0]

    assert any("referral_code: type changed" in p for p in _problems(drop_null))


def test_new_required_field() -> None:
    def add_required(s: dict[str, Any]) -> None:
        s["properties"]["cashier_id"] = {"type": "string"}
        s["required"].append("cashier_id")

    assert _problems(add_required) == ["cashier_id: new required field"]


def test_optional_field_became_required_and_back() -> None:
    assert _problems(lambda s: s["required"].append("referral_code")) == [
        "referral_code: optional field became required"
    ]
    assert any("became optional" in p for p in _problems(lambda s: s["required"].remove("order_id")))


def test_enum_value_removed() -> None:
    problems = _problems(lambda s: s["properties"]["sales_channel"]["enum"].remove("phone"))
    assert problems == ["sales_channel: enum value(s) removed: 'phone'"]


@pytest.mark.parametrize(
    ("where", "key", "value"),
    [
        (("$defs", "PurchaseLine", "properties", "quantity"), "minimum", 2),
        (("properties", "order_id"), "maxLength", 50),
        (("properties", "order_id"), "minLength", 3),
        (("properties", "order_id"), "pattern", "^[0-9]+$"),
        (("properties", "lines"), "maxItems", 100),
        (("properties", "lines"), "minItems", 2),
        (("$defs", "PurchaseLine", "properties", "quantity"), "maximum", 1000),
    ],
)
def test_narrowing(where: tuple[str, ...], key: str, value: Any) -> None:
    def narrow(s: dict[str, Any]) -> None:
        node = s
        for part in where:
            node = node[part]
        node[key] = value

    problems = _problems(narrow)
    assert len(problems) >= 1 and all(key in p for p in problems), problems


def test_restricting_map_keys() -> None:
    schema = json.loads(render_schema_file(EVENT_TYPES["loyalty.ImprovementShipped.v1"]))
    new = copy.deepcopy(schema)
    new["properties"]["messages"]["propertyNames"] = {"pattern": "^[a-z]{2}$"}
    assert check_compatible(schema, new) == ["messages: propertyNames changed from 'none' to {'pattern': '^[a-z]{2}$'}"]


def test_closing_the_object() -> None:
    assert _problems(lambda s: s.update(additionalProperties=False)) == [
        "<root>: object closed to additional properties"
    ]


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True, text=True).stdout


@pytest.mark.parametrize("ce_type", sorted(EVENT_TYPES))
def test_current_model_is_compatible_with_every_committed_revision(ce_type: str) -> None:
    """FULL_TRANSITIVE: the current model against the working-tree file and every revision in git history."""
    model = EVENT_TYPES[ce_type]
    rel = f"contracts/schemas/{schema_name(model)}.json"
    current = event_schema(model)
    revisions: dict[str, str] = {}
    path = REPO / rel
    if path.is_file():
        revisions["working tree"] = path.read_text()
    for commit in _git("log", "--format=%H", "--", rel).split():
        try:
            revisions[commit[:10]] = _git("show", f"{commit}:{rel}")
        except subprocess.CalledProcessError:
            continue  # the commit deleted the file
    assert revisions, f"{rel} was never generated; run python -m loyalty_contracts.generate and commit it"
    for label, text in revisions.items():
        problems = check_compatible(json.loads(text), current)
        assert problems == [], f"{ce_type} breaks {rel}@{label}: {problems}; a breaking change needs a v2"
