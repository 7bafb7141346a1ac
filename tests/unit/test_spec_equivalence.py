"""Prove that openapi/tes.yaml is schema-equivalent to the GA4GH TES 1.1 reference.

Both documents are normalised: local ``$ref``s are inlined, prose and
vendor-extension keys are dropped, response codes become strings, parameter
lists become maps keyed by ``(in, name)`` and ``required`` lists are sorted.
The reference points at the GA4GH service-info schemas by URL; those refs are
mapped to our local copies (see ``EXTERNAL_SCHEMA_MAP``).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
OUR_SPEC = REPO_ROOT / "openapi" / "tes.yaml"
REFERENCE_SPEC = (
    Path(__file__).resolve().parents[3] / "shared" / "reference" / "tes-1.1-openapi.yaml"
)

SERVICE_INFO_URL = (
    "https://raw.githubusercontent.com/ga4gh-discovery/ga4gh-service-info/v1.0.0/service-info.yaml"
)
SCHEMA_PREFIX = "#/components/schemas/"

# Fragment name in the external service-info document -> our local $ref.
EXTERNAL_SCHEMA_MAP: dict[str, str] = {
    "Service": SCHEMA_PREFIX + "Service",
    "ServiceType": SCHEMA_PREFIX + "ServiceType",
}
# Schemas we define only because the reference reaches them over the network.
OUR_EXTRA_SCHEMAS = frozenset({"Service", "ServiceType", "ServiceOrganization"})

# Annotation keywords that carry prose or examples, not structure.
DROPPED_KEYS = frozenset({"description", "summary", "example", "examples", "title"})
# Maps whose keys are names chosen by the author, never keywords to drop.
NAME_MAP_KEYS = frozenset(
    {"properties", "schemas", "parameters", "paths", "content", "headers", "responses"}
)
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


def _load(path: Path) -> dict[str, Any]:
    """Read a YAML document and check it is a mapping."""
    with path.open(encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    assert isinstance(data, dict), f"{path} is not a YAML mapping"
    return data


def _pointer_get(doc: dict[str, Any], ref: str) -> Any:
    """Follow a local JSON pointer such as ``#/components/schemas/tesTask``."""
    assert ref.startswith("#/"), f"not a local ref: {ref}"
    node: Any = doc
    for raw in ref[2:].split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and token in node, f"unresolvable ref: {ref}"
        node = node[token]
    return node


class Normaliser:
    """Turn an OpenAPI document (or part of it) into a canonical, prose-free tree."""

    def __init__(self, doc: dict[str, Any], external_doc: dict[str, Any]) -> None:
        """Resolve local refs in ``doc``; mapped external refs resolve in ``external_doc``."""
        self.doc = doc
        self.external_doc = external_doc

    def _target(self, ref: str) -> tuple[dict[str, Any], str]:
        """Return the document and local pointer a ``$ref`` designates."""
        if ref.startswith("#/"):
            return self.doc, ref
        base, sep, fragment = ref.partition("#")
        assert sep and base == SERVICE_INFO_URL, f"unexpected external ref: {ref}"
        assert fragment.startswith(SCHEMA_PREFIX[1:]), f"unexpected fragment: {ref}"
        name = fragment[len(SCHEMA_PREFIX) - 1 :]
        assert name in EXTERNAL_SCHEMA_MAP, f"no local mapping for external schema {name!r}"
        return self.external_doc, EXTERNAL_SCHEMA_MAP[name]

    def normalise(
        self,
        node: Any,
        *,
        doc: dict[str, Any] | None = None,
        parent_key: str | None = None,
        stack: tuple[str, ...] = (),
    ) -> Any:
        """Return the canonical form of ``node``."""
        current = self.doc if doc is None else doc
        if isinstance(node, list):
            items = [self.normalise(v, doc=current, stack=stack) for v in node]
            if parent_key == "parameters":
                return self._parameters_by_key(items)
            if parent_key == "required" and all(isinstance(v, str) for v in items):
                return sorted(items)
            return items
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            ref = node["$ref"]
            target_doc, pointer = self._target(ref) if current is self.doc else (current, ref)
            key = f"{id(target_doc)}:{pointer}"
            if key in stack:
                return {"$cycle": pointer}
            target = _pointer_get(target_doc, pointer)
            return self.normalise(
                target, doc=target_doc, parent_key=parent_key, stack=(*stack, key)
            )
        is_name_map = parent_key in NAME_MAP_KEYS
        result: dict[str, Any] = {}
        for raw_key, value in node.items():
            key = str(raw_key)
            if not is_name_map and (key in DROPPED_KEYS or key.startswith("x-")):
                continue
            # Inside a name map, children are objects keyed by name; their own
            # parent context is the map entry, not the map.
            child_parent = None if is_name_map else key
            result[key] = self.normalise(value, doc=current, parent_key=child_parent, stack=stack)
        return result

    @staticmethod
    def _parameters_by_key(params: list[Any]) -> dict[str, Any]:
        """Key an operation's parameter list by ``in:name`` (order is not significant)."""
        keyed: dict[str, Any] = {}
        for param in params:
            assert isinstance(param, dict), f"parameter is not a mapping: {param!r}"
            keyed[f"{param.get('in')}:{param.get('name')}"] = param
        return keyed


def diff(expected: Any, actual: Any, path: str = "") -> Iterator[str]:
    """Yield one ``/json/pointer: explanation`` line per difference between two trees."""

    def child(key: object) -> str:
        return f"{path}/{str(key).replace('~', '~0').replace('/', '~1')}"

    if isinstance(expected, dict) and isinstance(actual, dict):
        for key in sorted(expected.keys() - actual.keys(), key=str):
            yield f"{child(key)}: missing in ours (reference has {expected[key]!r:.80})"
        for key in sorted(actual.keys() - expected.keys(), key=str):
            yield f"{child(key)}: extra in ours ({actual[key]!r:.80})"
        for key in sorted(expected.keys() & actual.keys(), key=str):
            yield from diff(expected[key], actual[key], child(key))
    elif isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            yield f"{path or '/'}: length {len(expected)} in reference, {len(actual)} in ours"
        for index, (left, right) in enumerate(zip(expected, actual, strict=False)):
            yield from diff(left, right, child(index))
    elif type(expected) is not type(actual) or expected != actual:
        yield f"{path or '/'}: reference {expected!r} != ours {actual!r}"


def _assert_same(expected: Any, actual: Any, where: str) -> None:
    """Fail with the location of the first difference (and all of them) if trees differ."""
    found = list(diff(expected, actual, where))
    assert not found, f"first difference at {found[0]}\nall differences:\n" + "\n".join(found)


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    """Load the published GA4GH TES 1.1 OpenAPI document."""
    if not REFERENCE_SPEC.is_file():
        message = f"reference spec not found at {REFERENCE_SPEC} (needs ../shared beside repo)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI always has shared/ beside the clone: never skip there
        pytest.skip(message)
    return _load(REFERENCE_SPEC)


@pytest.fixture(scope="module")
def ours() -> dict[str, Any]:
    """Load the project's own OpenAPI document."""
    return _load(OUR_SPEC)


@pytest.fixture(scope="module")
def norm_reference(reference: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    """Normalise the reference; its service-info refs resolve into our local copies."""
    result = Normaliser(reference, external_doc=ours).normalise(reference)
    assert isinstance(result, dict)
    return result


@pytest.fixture(scope="module")
def norm_ours(ours: dict[str, Any]) -> dict[str, Any]:
    """Normalise our spec."""
    result = Normaliser(ours, external_doc=ours).normalise(ours)
    assert isinstance(result, dict)
    return result


def _operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """Map ``(path, method)`` to the normalised operation object."""
    return {
        (path, method): op
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in HTTP_METHODS
    }


def test_same_paths_and_methods(norm_reference: dict[str, Any], norm_ours: dict[str, Any]) -> None:
    """Both specs expose the same paths, each with the same HTTP methods."""
    assert set(norm_ours["paths"]) == set(norm_reference["paths"])
    for path, item in norm_reference["paths"].items():
        ref_methods = set(item) & HTTP_METHODS
        our_methods = set(norm_ours["paths"][path]) & HTTP_METHODS
        assert our_methods == ref_methods, f"methods differ at {path}"


def test_same_operation_ids_and_tags(
    norm_reference: dict[str, Any], norm_ours: dict[str, Any]
) -> None:
    """Every operation has the reference's operationId and tags."""
    ours_ops = _operations(norm_ours)
    for key, op in _operations(norm_reference).items():
        assert ours_ops[key].get("operationId") == op.get("operationId"), key
        assert ours_ops[key].get("tags") == op.get("tags"), key


def test_same_parameters(norm_reference: dict[str, Any], norm_ours: dict[str, Any]) -> None:
    """Parameters match by name and location, including required flags and schemas."""
    ours_ops = _operations(norm_ours)
    for (path, method), op in _operations(norm_reference).items():
        where = f"/paths/{path.replace('/', '~1')}/{method}/parameters"
        _assert_same(op.get("parameters", {}), ours_ops[path, method].get("parameters", {}), where)


def test_view_parameter_is_shared_component(
    reference: dict[str, Any], ours: dict[str, Any]
) -> None:
    """Operations that take ``view`` use the shared components/parameters/view entry."""
    view_ref = {"$ref": "#/components/parameters/view"}

    def users(doc: dict[str, Any]) -> set[str]:
        return {
            op["operationId"]
            for item in doc["paths"].values()
            for method, op in item.items()
            if method in HTTP_METHODS and view_ref in op.get("parameters", [])
        }

    assert users(ours) == users(reference) == {"ListTasks", "GetTask"}
    assert "view" in ours["components"]["parameters"]


def test_same_request_bodies(norm_reference: dict[str, Any], norm_ours: dict[str, Any]) -> None:
    """Request bodies agree on required-ness and on each media type's schema."""
    ours_ops = _operations(norm_ours)
    for (path, method), op in _operations(norm_reference).items():
        where = f"/paths/{path.replace('/', '~1')}/{method}/requestBody"
        _assert_same(op.get("requestBody"), ours_ops[path, method].get("requestBody"), where)


def test_same_responses(norm_reference: dict[str, Any], norm_ours: dict[str, Any]) -> None:
    """Responses agree on status codes (int or str) and on each media type's schema."""
    ours_ops = _operations(norm_ours)
    for (path, method), op in _operations(norm_reference).items():
        where = f"/paths/{path.replace('/', '~1')}/{method}/responses"
        assert set(op["responses"]) == set(ours_ops[path, method]["responses"]), where
        _assert_same(op["responses"], ours_ops[path, method]["responses"], where)


def test_same_schema_names(reference: dict[str, Any], ours: dict[str, Any]) -> None:
    """Ours has every reference schema, plus only the locally-copied service-info ones."""
    ref_names = set(reference["components"]["schemas"])
    our_names = set(ours["components"]["schemas"])
    assert ref_names <= our_names, f"missing schemas: {sorted(ref_names - our_names)}"
    extra = our_names - ref_names
    assert extra <= OUR_EXTRA_SCHEMAS, f"unexpected extra schemas: {sorted(extra)}"
    assert {"Service", "ServiceType"} <= extra


def test_same_components(norm_reference: dict[str, Any], norm_ours: dict[str, Any]) -> None:
    """Every reference schema and parameter, fully resolved, equals ours."""
    for section in ("schemas", "parameters"):
        for name, schema in norm_reference["components"][section].items():
            _assert_same(
                schema, norm_ours["components"][section][name], f"/components/{section}/{name}"
            )
    assert set(norm_reference["components"]) == set(norm_ours["components"])


def test_whole_documents_match(norm_reference: dict[str, Any], norm_ours: dict[str, Any]) -> None:
    """Paths and components, normalised, are identical apart from the extra schemas."""
    ours_trimmed = copy.deepcopy({k: norm_ours[k] for k in ("paths", "components")})
    for name in OUR_EXTRA_SCHEMAS:
        ours_trimmed["components"]["schemas"].pop(name, None)
    ref_trimmed = {k: norm_reference[k] for k in ("paths", "components")}
    _assert_same(ref_trimmed, ours_trimmed, "")
    assert norm_ours["openapi"] == norm_reference["openapi"] == "3.0.1"
    assert norm_ours["servers"] == norm_reference["servers"]


def test_service_info_schemas_follow_ga4gh(norm_ours: dict[str, Any]) -> None:
    """Our local Service and ServiceType equal GA4GH service-info v1.0.0."""
    string: dict[str, Any] = {"type": "string"}
    uri: dict[str, Any] = {"type": "string", "format": "uri"}
    when: dict[str, Any] = {"type": "string", "format": "date-time"}
    service_type = {
        "type": "object",
        "required": ["artifact", "group", "version"],
        "properties": {"group": string, "artifact": string, "version": string},
    }
    service = {
        "type": "object",
        "required": ["id", "name", "organization", "type", "version"],
        "properties": {
            "id": string,
            "name": string,
            "type": service_type,
            "description": string,
            "organization": {
                "type": "object",
                "required": ["name", "url"],
                "properties": {"name": string, "url": uri},
            },
            "contactUrl": uri,
            "documentationUrl": uri,
            "createdAt": when,
            "updatedAt": when,
            "environment": string,
            "version": string,
        },
    }
    schemas = norm_ours["components"]["schemas"]
    _assert_same(service_type, schemas["ServiceType"], "/components/schemas/ServiceType")
    _assert_same(service, schemas["Service"], "/components/schemas/Service")


def test_our_info_block(ours: dict[str, Any]) -> None:
    """Title, version and licence are the ones the project publishes."""
    info = ours["info"]
    assert info["title"] == "kueue-tes — GA4GH Task Execution Service"
    assert info["version"] == "1.1.0"
    assert info["license"]["name"] == "Apache 2.0"
    assert ours["servers"] == [{"url": "/ga4gh/tes/v1"}]


def test_no_external_refs_in_ours(ours: dict[str, Any]) -> None:
    """Our spec only uses local refs, so it loads without network access."""

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                yield node["$ref"]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    external = [r for r in refs(ours) if not r.startswith("#/")]
    assert not external, f"external refs: {external}"


def test_our_spec_is_valid_openapi(ours: dict[str, Any]) -> None:
    """openapi-spec-validator accepts our document as OpenAPI 3.0."""
    pytest.importorskip("openapi_spec_validator")
    from openapi_spec_validator import validate

    validate(ours)


def test_diff_detects_changes(norm_ours: dict[str, Any]) -> None:
    """The comparison is not vacuous: mutations of our spec are reported by location."""
    assert list(diff(norm_ours, copy.deepcopy(norm_ours))) == []

    mutated = copy.deepcopy(norm_ours)
    mutated["components"]["schemas"]["tesState"]["enum"][-1] = "CANCELLING"
    found = list(diff(norm_ours, mutated))
    assert found == [
        "/components/schemas/tesState/enum/10: reference 'CANCELING' != ours 'CANCELLING'"
    ]

    mutated = copy.deepcopy(norm_ours)
    del mutated["components"]["schemas"]["tesTask"]["properties"]["logs"]["readOnly"]
    mutated["paths"]["/tasks/{id}:cancel"]["post"]["responses"]["201"] = {}
    found = list(diff(norm_ours, mutated))
    assert "/components/schemas/tesTask/properties/logs/readOnly: missing in ours" in "\n".join(
        found
    )
    assert any(f.startswith("/paths/~1tasks~1{id}:cancel/post/responses/201: extra") for f in found)

    # The normaliser keeps a property literally named "description" (tesInput has one).
    assert "description" in norm_ours["components"]["schemas"]["tesInput"]["properties"]
