"""Compatibility gate between two JSON Schemas of the same event major version.

The rule (see contracts/README.md): within a major version, every published revision must be readable by
every reader of every other revision (FULL_TRANSITIVE) for the *shape* of the data:

- no field removed or renamed (a rename is a removal plus an addition);
- no type change: the set of JSON types of a field (including null) stays the same, so nullability does not
  change either;
- no new required field, no optional field becoming required, no required field becoming optional;
- no narrowing of what a field accepts: higher minimum / lower maximum, longer minLength / shorter maxLength,
  more minItems / fewer maxItems, a new or changed pattern, format or propertyNames, an enum value removed,
  a closed object that used to be open;
- adding an optional field is fine: readers ignore unknown fields (tolerant reader, open content model).

Adding an enum value or widening a bound is accepted, as the brief's rule allows; it is only safe once
every consumer of the topic runs a release that knows the new value (deploy consumers first).
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

_LOWER_BOUNDS = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties")
_UPPER_BOUNDS = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties")


class _Doc:
    """A schema document able to resolve its own local ``$ref``s."""

    def __init__(self, root: Schema) -> None:
        self.root = root

    def resolve(self, node: Any) -> Schema:
        seen = 0
        while isinstance(node, dict) and "$ref" in node:
            ref = node["$ref"]
            if not isinstance(ref, str) or not ref.startswith("#/"):
                raise ValueError(f"only local $refs are supported, got {ref!r}")
            target: Any = self.root
            for part in ref[2:].split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            siblings = {k: v for k, v in node.items() if k != "$ref"}
            node = {**target, **siblings}
            seen += 1
            if seen > 50:
                raise ValueError(f"$ref cycle at {ref!r}")
        return node if isinstance(node, dict) else {}


def _alternatives(doc: _Doc, node: Schema) -> list[Schema]:
    node = doc.resolve(node)
    for key in ("anyOf", "oneOf"):
        if key in node:
            out: list[Schema] = []
            for alt in node[key]:
                out.extend(_alternatives(doc, alt))
            return out
    return [node]


def _kind(node: Schema) -> str:
    t = node.get("type")
    if isinstance(t, list):
        return "|".join(sorted(str(x) for x in t))
    if t is None:
        if "enum" in node or "const" in node:
            return "enum"
        return "object" if "properties" in node else "any"
    return str(t)


def _enum_values(node: Schema) -> list[Any] | None:
    if "enum" in node:
        return list(node["enum"])
    if "const" in node:
        return [node["const"]]
    return None


def _compare(old_doc: _Doc, old: Any, new_doc: _Doc, new: Any, path: str, problems: list[str]) -> None:
    old_alts = _alternatives(old_doc, old)
    new_alts = _alternatives(new_doc, new)
    old_by_kind = {_kind(a): a for a in old_alts}
    new_by_kind = {_kind(a): a for a in new_alts}
    if set(old_by_kind) != set(new_by_kind):
        problems.append(
            f"{path}: type changed from {' | '.join(sorted(old_by_kind))} to {' | '.join(sorted(new_by_kind))}"
        )
        return
    for kind, old_node in old_by_kind.items():
        _compare_node(old_doc, old_node, new_doc, new_by_kind[kind], path, problems)


def _compare_node(old_doc: _Doc, old: Schema, new_doc: _Doc, new: Schema, path: str, problems: list[str]) -> None:
    old_values, new_values = _enum_values(old), _enum_values(new)
    if old_values is not None:
        if new_values is None:
            problems.append(f"{path}: enum restriction removed (old readers reject the new values)")
        else:
            removed = [v for v in old_values if v not in new_values]
            if removed:
                problems.append(f"{path}: enum value(s) removed: {', '.join(map(repr, removed))}")
    elif new_values is not None:
        problems.append(f"{path}: narrowed to the enum {new_values!r}")

    for key in _LOWER_BOUNDS:
        if key in new and (key not in old or new[key] > old[key]):
            problems.append(f"{path}: {key} narrowed from {old.get(key, 'none')} to {new[key]}")
    for key in _UPPER_BOUNDS:
        if key in new and (key not in old or new[key] < old[key]):
            problems.append(f"{path}: {key} narrowed from {old.get(key, 'none')} to {new[key]}")
    for key in ("pattern", "format", "multipleOf", "propertyNames"):
        if key in new and new.get(key) != old.get(key):
            problems.append(f"{path}: {key} changed from {old.get(key, 'none')!r} to {new[key]!r}")

    kind = _kind(old)
    if kind == "object":
        _compare_object(old_doc, old, new_doc, new, path, problems)
    elif kind == "array":
        if "items" in old or "items" in new:
            _compare(old_doc, old.get("items", {}), new_doc, new.get("items", {}), f"{path}[]", problems)


def _compare_object(old_doc: _Doc, old: Schema, new_doc: _Doc, new: Schema, path: str, problems: list[str]) -> None:
    prefix = f"{path}." if path else ""
    old_props: dict[str, Any] = old.get("properties", {})
    new_props: dict[str, Any] = new.get("properties", {})
    old_required = set(old.get("required", []))
    new_required = set(new.get("required", []))

    for name, old_field in old_props.items():
        if name not in new_props:
            problems.append(f"{prefix}{name}: field removed (or renamed)")
            continue
        _compare(old_doc, old_field, new_doc, new_props[name], f"{prefix}{name}", problems)
        if name in new_required and name not in old_required:
            problems.append(f"{prefix}{name}: optional field became required")
        if name in old_required and name not in new_required:
            problems.append(f"{prefix}{name}: required field became optional (old readers need it)")
    for name in new_props:
        if name not in old_props and name in new_required:
            problems.append(f"{prefix}{name}: new required field")

    old_extra, new_extra = old.get("additionalProperties", True), new.get("additionalProperties", True)
    if new_extra is False and old_extra is not False:
        problems.append(f"{path or '<root>'}: object closed to additional properties")
    elif isinstance(old_extra, dict) and isinstance(new_extra, dict):
        _compare(old_doc, old_extra, new_doc, new_extra, f"{prefix}*", problems)
    elif isinstance(new_extra, dict) and old_extra is True:
        problems.append(f"{path or '<root>'}: additional properties narrowed to a schema")


def check_compatible(old_schema: Schema, new_schema: Schema) -> list[str]:
    """Problems that make ``new_schema`` an incompatible revision of ``old_schema``; empty when compatible."""
    problems: list[str] = []
    old_doc, new_doc = _Doc(old_schema), _Doc(new_schema)
    _compare(old_doc, old_schema, new_doc, new_schema, "", problems)
    return problems
