"""Validation of Istio objects against Istio's own CRD schemas (tests/schemas/istio/), for every test.

Istio ships its CRDs as Kubernetes "structural OpenAPI". This helper turns each served version's
`openAPIV3Schema` into a JSON Schema that `jsonschema` understands (`nullable` -> an added null type,
`x-kubernetes-int-or-string` -> integer or string, other `x-kubernetes-*` keys dropped, apiVersion/kind/
metadata added at the top). Strict mode also sets `additionalProperties: false` on every object that has
`properties` and does not preserve unknown fields: the API server would prune an unknown field silently,
so a typo such as `wieght` would vanish in a cluster; here it is an error. CEL rules
(`x-kubernetes-validations`) are not evaluated, and nothing bounds weights: the project's own
controller.adapters.istio.validate checks those.

API: `istio_errors(obj, strict=True) -> list[str]` and `assert_valid_istio(obj)`.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import jsonschema
import yaml

from tests.support.paths import SCHEMAS

CRD_FILE = SCHEMAS / "istio" / "customresourcedefinitions.gen.yaml"
SUPPORTED_KINDS = ("VirtualService", "DestinationRule", "Gateway")


@functools.cache
def _crds() -> dict[str, dict[str, Any]]:
    """kind -> CRD document, parsed once per session (CSafeLoader: ~10x faster than safe_load)."""
    with CRD_FILE.open() as f:
        docs = [d for d in yaml.load_all(f, Loader=yaml.CSafeLoader) if d]
    return {d["spec"]["names"]["kind"]: d for d in docs}


def _translate(node: Any, strict: bool) -> Any:
    """Structural OpenAPI -> JSON Schema, recursively."""
    if isinstance(node, list):
        return [_translate(n, strict) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "description"):
            continue
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {k: _translate(v, strict) for k, v in value.items()}
        else:
            out[key] = _translate(value, strict)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else [*out["type"], "null"]
    if (
        strict
        and "properties" in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
        and "additionalProperties" not in node
    ):
        out["additionalProperties"] = False
    return out


def _with_envelope(schema: dict[str, Any], group: str, version: str, kind: str, strict: bool) -> dict[str, Any]:
    schema = copy.deepcopy(schema)
    props = schema.setdefault("properties", {})
    props["apiVersion"] = {"type": "string", "enum": [f"{group}/{version}"]}
    props["kind"] = {"type": "string", "enum": [kind]}
    props["metadata"] = {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "namespace": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
    if strict:
        schema["additionalProperties"] = False
    return schema


@functools.cache
def _validator(api_version: str, kind: str, strict: bool) -> jsonschema.Draft7Validator | None:
    crd = _crds().get(kind)
    if crd is None or "/" not in api_version:
        return None
    group, version = api_version.split("/", 1)
    if crd["spec"]["group"] != group:
        return None
    for v in crd["spec"]["versions"]:
        if v["name"] == version and v.get("served"):
            raw = v["schema"]["openAPIV3Schema"]
            schema = _with_envelope(_translate(raw, strict), group, version, kind, strict)
            jsonschema.Draft7Validator.check_schema(schema)
            return jsonschema.Draft7Validator(schema)
    return None


def istio_errors(obj: Any, strict: bool = True) -> list[str]:
    """Every schema error of `obj` as `path: message`; an empty list means Istio's schema accepts it."""
    if not isinstance(obj, dict):
        return [f"<root>: {obj!r} is not an object"]
    kind, api_version = obj.get("kind"), obj.get("apiVersion")
    if kind not in SUPPORTED_KINDS or not isinstance(api_version, str):
        return [f"<root>: kind {kind!r} is not one of {SUPPORTED_KINDS}"]
    validator = _validator(api_version, kind, strict)
    if validator is None:
        return [f"apiVersion: {api_version!r} is not a served version of {kind}"]
    errors = validator.iter_errors(obj)
    return sorted(f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errors)


def assert_valid_istio(obj: Any) -> None:
    """Fail the test unless Istio's strict schema accepts `obj`."""
    errors = istio_errors(obj, strict=True)
    name = obj.get("metadata", {}).get("name") if isinstance(obj, dict) else None
    assert not errors, f"{obj.get('kind') if isinstance(obj, dict) else obj} {name}: " + "; ".join(errors)
