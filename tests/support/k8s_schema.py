"""Offline validation of Kubernetes objects for the tests: core kinds and the project's custom resources.

- Core kinds (Deployment, Service, Role, CustomResourceDefinition ...) are checked with
  `kubernetes-validate --strict` at its newest supported Kubernetes version: an unknown field is an error,
  as with `kubectl apply` (whose server-side field validation is Strict by default since 1.27).
- Custom resources are checked against their CRD's own `openAPIV3Schema`, translated to JSON Schema the
  way the API server reads it: `exclusiveMinimum: true` (OpenAPI 3.0) becomes a numeric bound,
  `nullable` adds a null type, `x-kubernetes-list-type: set` means unique items, and in strict mode every
  object with `properties` and without `x-kubernetes-preserve-unknown-fields` refuses unknown fields.
  CEL rules are not evaluated (the project's CRD has none).
- `apply_defaults` does what the API server's structural defaulting does to a stored object, so a test can
  check that a defaulted release means what the undefaulted one meant.
- `structural_problems` checks the rules the API server enforces on a CRD schema before it accepts it
  ("structural schema"), which neither kubernetes-validate nor jsonschema knows.

API: `core_errors(obj)`, `custom_resource_errors(obj, crd)`, `apply_defaults(obj, crd)`,
`structural_problems(crd)`, `crd_version_schema(crd)`, `load_documents(path)`, `KUBERNETES_VERSION`.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

KUBERNETES_VERSION = kubernetes_validate.latest_version()
Obj = dict[str, Any]

# Keys the API server refuses inside allOf/anyOf/oneOf/not of a structural schema.
_JUNCTOR_FORBIDDEN = ("type", "default", "description", "nullable", "additionalProperties")
_JUNCTORS = ("allOf", "anyOf", "oneOf", "not")


def load_documents(path: Path) -> list[Obj]:
    """Every non-empty YAML document of a file."""
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d]


def core_errors(obj: Obj, version: str = KUBERNETES_VERSION) -> list[str]:
    """Strict schema errors of a core Kubernetes object; an empty list means it is valid."""
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path) or "<root>"
        return [f"{obj.get('kind')} {obj.get('metadata', {}).get('name')}: {where}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{obj.get('apiVersion')} {obj.get('kind')}: no schema in Kubernetes {version}"]
    return []


def crd_version_schema(crd: Obj, version: str | None = None) -> Obj:
    """The raw `openAPIV3Schema` of one served version (the storage version when not named)."""
    for v in crd["spec"]["versions"]:
        if (version is None and v.get("storage")) or v["name"] == version:
            schema: Obj = v["schema"]["openAPIV3Schema"]
            return schema
    raise KeyError(f"{crd['metadata']['name']} serves no version {version!r}")


def _translate(node: Any, strict: bool) -> Any:
    """Kubernetes structural OpenAPI (3.0 flavour) -> JSON Schema draft 7, recursively."""
    if isinstance(node, list):
        return [_translate(n, strict) for n in node]
    if not isinstance(node, dict):
        return node
    out: Obj = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "description", "default", "format"):
            continue
        if key in ("exclusiveMinimum", "exclusiveMaximum"):
            # OpenAPI 3.0 makes these booleans that qualify minimum/maximum; draft 7 wants the bound.
            if value:
                bound = node["minimum" if key == "exclusiveMinimum" else "maximum"]
                out[key] = bound
            continue
        if key == "properties":
            out[key] = {k: _translate(v, strict) for k, v in value.items()}
        else:
            out[key] = _translate(value, strict)
    if node.get("exclusiveMinimum"):
        out.pop("minimum", None)
    if node.get("exclusiveMaximum"):
        out.pop("maximum", None)
    if node.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if (strict and "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields")
            and "additionalProperties" not in node):
        out["additionalProperties"] = False
    return out


@functools.cache
def _validator(crd_json: str, strict: bool) -> jsonschema.Draft7Validator:
    crd = json.loads(crd_json)
    schema = _translate(crd_version_schema(crd), strict)
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    versions = [f"{group}/{v['name']}" for v in crd["spec"]["versions"] if v.get("served")]
    props = schema.setdefault("properties", {})
    props["apiVersion"] = {"type": "string", "enum": versions}
    props["kind"] = {"type": "string", "enum": [kind]}
    props["metadata"] = {"type": "object", "required": ["name"],
                         "properties": {"name": {"type": "string", "minLength": 1},
                                        "namespace": {"type": "string"}}}
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def custom_resource_errors(obj: Any, crd: Obj, strict: bool = True) -> list[str]:
    """Every schema error of a custom resource as `path: message`; empty means the CRD accepts it."""
    validator = _validator(json.dumps(crd, sort_keys=True), strict)
    return sorted(f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
                  for e in validator.iter_errors(obj))


def apply_defaults(obj: Obj, crd: Obj) -> Obj:
    """A copy of `obj` with the CRD's defaults filled in where the API server would fill them.

    As in the API server: a default applies to a missing field of an object that is present; a parent
    object is not created to hold a defaulted child unless the parent itself has a default.
    """
    out = copy.deepcopy(obj)
    _default_node(out, crd_version_schema(crd))
    return out


def _default_node(value: Any, schema: Obj) -> None:
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                _default_node(value[name], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name, item in value.items():
                if name not in schema.get("properties", {}):
                    _default_node(item, extra)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            _default_node(item, schema["items"])


def _walk(node: Any, path: str) -> Iterator[tuple[str, Obj]]:
    if not isinstance(node, dict):
        return
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}.*")


def _junctor_problems(node: Any, path: str) -> Iterator[str]:
    if isinstance(node, list):
        for i, n in enumerate(node):
            yield from _junctor_problems(n, f"{path}[{i}]")
        return
    if not isinstance(node, dict):
        return
    for key in node:
        if key in _JUNCTOR_FORBIDDEN or key.startswith("x-kubernetes-"):
            yield f"{path}: {key!r} is not allowed inside allOf/anyOf/oneOf/not"
    for key in (*_JUNCTORS, "properties", "items"):
        if key in node:
            yield from _junctor_problems(node[key], f"{path}.{key}")


def structural_problems(crd: Obj) -> list[str]:
    """Violations of the API server's structural-schema and defaulting rules, per served version."""
    problems: list[str] = []
    for version in crd["spec"]["versions"]:
        root = version["schema"]["openAPIV3Schema"]
        for path, node in _walk(root, version["name"]):
            int_or_string = node.get("x-kubernetes-int-or-string")
            if "type" not in node and not int_or_string and not node.get("x-kubernetes-preserve-unknown-fields"):
                problems.append(f"{path}: has no type")
            if int_or_string and node.get("anyOf") not in (None, [{"type": "integer"}, {"type": "string"}]):
                problems.append(f"{path}: int-or-string must be anyOf [integer, string]")
            if node.get("uniqueItems"):
                problems.append(f"{path}: uniqueItems is forbidden (use x-kubernetes-list-type: set)")
            for junctor in _JUNCTORS:
                if junctor in node and not (junctor == "anyOf" and int_or_string):
                    problems.extend(_junctor_problems(node[junctor], f"{path}.{junctor}"))
            if "default" in node:
                node_schema = {k: v for k, v in node.items() if k != "default"}
                errors = jsonschema.Draft7Validator(_translate(node_schema, strict=True)).iter_errors(
                    node["default"])
                problems.extend(f"{path}: default {node['default']!r}: {e.message}" for e in errors)
        if version.get("subresources", {}).get("status") is not None and "status" not in root.get(
                "properties", {}):
            problems.append(f"{version['name']}: status subresource without a status schema")
    return problems
