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
                merged["required"] += [
                    r for r in part.get("required", []) if r not in merged["required"]
                ]
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


def _minimal(node: Any) -> Any:
    # The MINIMAL view is {id, state} by the spec's own definition of views, although the
    # tesTask schema lists executors as required; every TES server and client agrees on this.
    if isinstance(node, dict):
        node = {key: _minimal(value) for key, value in node.items()}
        if "executors" in node.get("properties", {}):
            node["required"] = [r for r in node.get("required", []) if r != "executors"]
        return node
    if isinstance(node, list):
        return [_minimal(item) for item in node]
    return node


def schema(name: str, minimal: bool = False) -> dict[str, Any]:
    """Return the closed, self-contained JSON schema of a component (e.g. ``tesTask``)."""
    schemas = _schemas()
    full = _inline(copy.deepcopy(schemas[name]), schemas)
    closed: dict[str, Any] = _close(_merge_all_of(full))
    return _minimal(closed) if minimal else closed  # type: ignore[no-any-return]


def check(name: str, body: Any, minimal: bool = False) -> None:
    """Fail unless ``body`` conforms to component ``name`` with no field beyond the spec's.

    ``minimal``: the body is in the MINIMAL view, where tasks carry only id and state.
    """
    jsonschema.validate(body, schema(name, minimal), format_checker=jsonschema.FormatChecker())
