"""Check response bodies against our TES spec, strictly: exactly the spec's fields.

The spec's objects allow extra properties; TES clients such as py-tes do not, so every object
schema with declared properties is closed here before validating.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

import jsonschema
import yaml

from tests.conftest import ROOT


def _close(node: Any) -> Any:
    if isinstance(node, dict):
        out = {key: _close(value) for key, value in node.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_close(item) for item in node]
    return node


def _merge_all_of(node: Any) -> Any:
    # allOf parts can't be closed one by one (each would forbid the other's fields): merge them.
    if isinstance(node, dict):
        node = {key: _merge_all_of(value) for key, value in node.items()}
        if "allOf" in node:
            merged: dict[str, Any] = {"type": "object", "properties": {}, "required": []}
            for part in node.pop("allOf"):
                merged["properties"].update(part.get("properties", {}))
                merged["required"] += part.get("required", [])
            node.update(merged)
        return node
    if isinstance(node, list):
        return [_merge_all_of(item) for item in node]
    return node


def _inline(node: Any, schemas: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            return _inline(schemas[name], schemas)
        return {key: _inline(value, schemas) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline(item, schemas) for item in node]
    return node


@cache
def _schemas() -> dict[str, Any]:
    spec = yaml.safe_load((ROOT / "openapi" / "tes.yaml").read_text())
    schemas: dict[str, Any] = spec["components"]["schemas"]
    return schemas


def schema(name: str) -> dict[str, Any]:
    """Return the closed, self-contained JSON schema of a component (e.g. ``tesTask``)."""
    schemas = _schemas()
    full = _inline(copy.deepcopy(schemas[name]), schemas)
    closed: dict[str, Any] = _close(_merge_all_of(full))
    return closed


def check(name: str, body: Any) -> None:
    """Fail unless ``body`` conforms to component ``name`` with no field beyond the spec's."""
    jsonschema.validate(body, schema(name), format_checker=jsonschema.FormatChecker())
