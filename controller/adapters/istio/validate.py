"""The project's own validation of Istio VirtualService, DestinationRule and Gateway objects.

This module owns what a routing object must look like before anything uses it: the renderer's output is
checked here before it is written to the cluster, and the local mesh router refuses a config that fails
here. It is stricter than Istio's schema where the schema is blind (weights must be whole, non-negative
and sum to 100; regexes must compile; subset names are unique and carry labels) and it refuses, by name,
every field Istio knows but the local mesh router does not implement, so that local mode never silently
behaves differently from the mesh.

Objects are full Kubernetes-style dicts (apiVersion, kind, metadata, spec). Errors are raised as
`InvalidRouteConfig` with a path-style message, e.g.
`VirtualService search/master-search: spec.http[0].route[1].weight: -5 is negative`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = [
    "ISTIO_API_VERSIONS",
    "InvalidRouteConfig",
    "is_service_host",
    "service_name_of",
    "validate_destination_rule",
    "validate_gateway",
    "validate_object",
    "validate_objects",
    "validate_virtual_service",
]

ISTIO_API_VERSIONS = frozenset(
    {"networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"}
)
_TOP_LEVEL = frozenset({"apiVersion", "kind", "metadata", "spec", "status"})
_DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_SERVICE_SUFFIXES = (".svc.cluster.local", ".svc")


class InvalidRouteConfig(ValueError):
    """A routing object (or a set of them) that must not be used. `path` points at the offending part."""

    def __init__(self, obj_ref: str, path: str, message: str) -> None:
        super().__init__(f"{obj_ref}: {path}: {message}" if path else f"{obj_ref}: {message}")
        self.obj_ref = obj_ref
        self.path = path
        self.message = message


class _Problem(Exception):
    """Raised inside one object's check; the caller adds which object it was."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


Check = Callable[[Any, str], None]


# ---------------------------------------------------------------------------------------------------
# Hosts: how Kubernetes service names look, shared with the local router so both read hosts alike.


def service_name_of(host: str) -> str | None:
    """The Kubernetes service name a host denotes, or None for a host that is not a service's.

    `name`, `name.ns`, `name.ns.svc` and `name.ns.svc.cluster.local` all denote service `name`; any other
    dotted name (e.g. `search.example.com`) is an outside host. The local mesh runs one namespace, so the
    namespace part is not kept.
    """
    h = host.lower()
    for suffix in _SERVICE_SUFFIXES:
        if h.endswith(suffix):
            h = h[: -len(suffix)]
            return h.split(".")[0] if h.count(".") == 1 else None
    if h.count(".") <= 1 and "*" not in h:
        return h.split(".")[0]
    return None


def is_service_host(host: str) -> bool:
    return service_name_of(host) is not None


# ---------------------------------------------------------------------------------------------------
# Small checkers: each takes (value, path) and raises _Problem.


def _key_path(path: str, key: str) -> str:
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        return f"{path}.{key}" if path else key
    return f'{path}["{key}"]'


def _type_name(value: object) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _string(value: Any, path: str) -> None:
    if not isinstance(value, str):
        raise _Problem(path, f"{value!r} is {_type_name(value)}, expected a string")


def _nonempty_string(value: Any, path: str) -> None:
    _string(value, path)
    if not value:
        raise _Problem(path, "must not be empty")


def _boolean(value: Any, path: str) -> None:
    if not isinstance(value, bool):
        raise _Problem(path, f"{value!r} is {_type_name(value)}, expected a boolean")


def _integer(value: Any, path: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Problem(path, f"{value!r} is {_type_name(value)}, expected a whole number")


def _port_number(value: Any, path: str) -> None:
    _integer(value, path)
    if not 0 < value < 65536:
        raise _Problem(path, f"{value} is not a port number (1-65535)")


def _list_of(item: Check, nonempty: bool = False) -> Check:
    def check(value: Any, path: str) -> None:
        if not isinstance(value, list):
            raise _Problem(path, f"{value!r} is {_type_name(value)}, expected a list")
        if nonempty and not value:
            raise _Problem(path, "must not be empty")
        for i, v in enumerate(value):
            item(v, f"{path}[{i}]")

    return check


def _map_of(item: Check, key: Check | None = None) -> Check:
    def check(value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise _Problem(path, f"{value!r} is {_type_name(value)}, expected an object")
        for k, v in value.items():
            if key is not None:
                key(k, _key_path(path, str(k)))
            item(v, _key_path(path, str(k)))

    return check


def _header_name(value: Any, path: str) -> None:
    _nonempty_string(value, path)
    if not _HEADER_NAME.fullmatch(value):
        raise _Problem(path, f"{value!r} is not a valid HTTP header name")


def _object(
    fields: Mapping[str, Check],
    required: Iterable[str] = (),
    unsupported: Iterable[str] = (),
    kind: str = "",
) -> Check:
    """An object with known fields. Istio fields the local router lacks are refused by name."""
    unsupported_set = frozenset(unsupported)
    required_t = tuple(required)

    def check(value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise _Problem(path, f"{value!r} is {_type_name(value)}, expected an object")
        for k in value:
            if k in unsupported_set:
                raise _Problem(_key_path(path, str(k)), "not supported by the local mesh router")
            if k not in fields:
                raise _Problem(_key_path(path, str(k)), _unknown_field_message(str(k), fields, kind))
        for k in required_t:
            if k not in value or value[k] is None:
                raise _Problem(_key_path(path, k), "is required")
        for k, v in value.items():
            fields[k](v, _key_path(path, str(k)))

    return check


def _unknown_field_message(key: str, fields: Iterable[str], kind: str) -> str:
    where = f" in {kind}" if kind else ""
    close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown field{where}{hint}"


# ---------------------------------------------------------------------------------------------------
# Istio pieces.


def _regex(value: Any, path: str) -> None:
    _string(value, path)
    try:
        re.compile(value)
    except re.error as e:
        raise _Problem(path, f"{value!r} is not a valid regular expression: {e}") from None


_string_match_fields: dict[str, Check] = {"exact": _string, "prefix": _string, "regex": _regex}
_string_match_object = _object(_string_match_fields, kind="StringMatch")


def _string_match(value: Any, path: str) -> None:
    _string_match_object(value, path)
    if len(value) > 1:
        raise _Problem(path, f"has {sorted(value)}; a string match takes at most one of exact, prefix, regex")


def _header_value(value: Any, path: str) -> None:
    _string(value, path)
    if not all(" " <= c <= "~" or c == "\t" for c in value):
        raise _Problem(path, f"{value!r} has characters an HTTP header value cannot carry")


_header_values = _map_of(_header_value, key=_header_name)
_header_ops = _object(
    {"set": _header_values, "add": _header_values, "remove": _list_of(_header_name)}, kind="HeaderOperations"
)
_headers = _object({"request": _header_ops, "response": _header_ops}, kind="Headers")

_match_request = _object(
    {
        "name": _string,
        "uri": _string_match,
        "method": _string_match,
        "authority": _string_match,
        "headers": _map_of(_string_match, key=_header_name),
        "withoutHeaders": _map_of(_string_match, key=_header_name),
        "queryParams": _map_of(_string_match, key=_nonempty_string),
        "ignoreUriCase": _boolean,
        # The gateways a route applies to (`mesh`: the sidecars); the local mesh, which has no gateway, refuses
        # it in its translation.
        "gateways": _list_of(_nonempty_string, nonempty=True),
    },
    unsupported=("scheme", "port", "sourceLabels", "sourceNamespace", "statPrefix"),
    kind="HTTPMatchRequest",
)


def _destination_host(value: Any, path: str) -> None:
    _nonempty_string(value, path)
    if not is_service_host(value):
        raise _Problem(path, f"{value!r} is not a Kubernetes service: not supported by the local mesh router")


_destination = _object(
    {
        "host": _destination_host,
        "subset": _nonempty_string,
        "port": _object({"number": _port_number}, required=("number",), kind="PortSelector"),
    },
    required=("host",),
    kind="Destination",
)
_route_destination = _object(
    {"destination": _destination, "weight": _integer, "headers": _headers},
    required=("destination",),
    kind="HTTPRouteDestination",
)


def _percent(value: Any, path: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        raise _Problem(path, f"{value!r} is not a percentage in 0..100")


# Istio's `mirror` (a copy of each request, its answer dropped) and the share of requests copied.
_mirror_percentage = _object({"value": _percent}, required=("value",), kind="Percent")


def _weights(route: list[Any], path: str) -> None:
    """Weights are whole and non-negative; with several destinations they sum to exactly 100."""
    for i, d in enumerate(route):
        w = d.get("weight")
        if w is not None and w < 0:
            raise _Problem(f"{path}[{i}].weight", f"{w} is negative")
    if len(route) == 1:
        w = route[0].get("weight")
        if w is not None and w != 100:
            raise _Problem(f"{path}[0].weight", f"{w} on the only destination: it must be 100 or omitted")
        return
    total = sum(d.get("weight") or 0 for d in route)
    if total != 100:
        weights = [d.get("weight", 0) for d in route]
        raise _Problem(path, f"weights {weights} sum to {total}, not 100")


_http_route_object = _object(
    {
        "name": _string,
        "match": _list_of(_match_request),
        "route": _list_of(_route_destination, nonempty=True),
        "headers": _headers,
        "mirror": _destination,
        "mirrorPercentage": _mirror_percentage,
    },
    required=("route",),
    unsupported=(
        "redirect",
        "directResponse",
        "delegate",
        "rewrite",
        "timeout",
        "retries",
        "fault",
        "mirrors",
        "mirror_percent",
        "mirrorPercent",
        "corsPolicy",
    ),
    kind="HTTPRoute",
)


def _http_route(value: Any, path: str) -> None:
    _http_route_object(value, path)
    _weights(value["route"], f"{path}.route")


def _vs_host(value: Any, path: str) -> None:
    _nonempty_string(value, path)
    if value != "*" and not _DNS_NAME.fullmatch(value.removeprefix("*.")):
        raise _Problem(path, f"{value!r} is not a host name")


_vs_spec = _object(
    {
        "hosts": _list_of(_vs_host, nonempty=True),
        # The local router is the gateway and the mesh at once, and sees every namespace: see docs/router.md.
        "gateways": _list_of(_nonempty_string),
        "exportTo": _list_of(_nonempty_string),
        "http": _list_of(_http_route),
    },
    required=("hosts",),
    unsupported=("tcp", "tls"),
    kind="VirtualService",
)


def _subsets(value: Any, path: str) -> None:
    _list_of(_subset)(value, path)
    seen: dict[str, int] = {}
    for i, s in enumerate(value):
        if s["name"] in seen:
            raise _Problem(f"{path}[{i}].name", f"{s['name']!r} duplicates {path}[{seen[s['name']]}].name")
        seen[s["name"]] = i


def _labels(value: Any, path: str) -> None:
    _map_of(_string, key=_nonempty_string)(value, path)
    if not value:
        raise _Problem(path, "a subset needs at least one label, or it selects every endpoint")


# Of a subset's traffic policy, the local mesh translates one thing: the consistent hash on a request header
# that keeps a user on one endpoint of a variant (an experiment's `userHeader`, see `experiment.user_affinity`).
_consistent_hash = _object(
    {"httpHeaderName": _header_name},
    required=("httpHeaderName",),
    unsupported=("httpCookie", "useSourceIp", "httpQueryParameterName", "ringHash", "maglev", "minimumRingSize"),
    kind="ConsistentHashLB",
)
_subset_traffic_policy = _object(
    {"loadBalancer": _object({"consistentHash": _consistent_hash}, required=("consistentHash",),
                             unsupported=("simple", "localityLbSetting", "warmupDurationSecs", "warmup"),
                             kind="LoadBalancerSettings")},
    required=("loadBalancer",),
    unsupported=("connectionPool", "outlierDetection", "tls", "portLevelSettings", "tunnel", "proxyProtocol",
                 "retryBudget"),
    kind="TrafficPolicy",
)
_subset = _object(
    {"name": _nonempty_string, "labels": _labels, "trafficPolicy": _subset_traffic_policy},
    required=("name", "labels"),
    kind="Subset",
)
_dr_spec = _object(
    {"host": _destination_host, "subsets": _subsets, "exportTo": _list_of(_nonempty_string)},
    required=("host",),
    unsupported=("trafficPolicy", "workloadSelector"),
    kind="DestinationRule",
)

# The local router is its own ingress and ignores Gateways; they are checked only for shape and typos.
_gateway_server = _object(
    {
        "port": _object(
            {
                "number": _port_number,
                "protocol": _nonempty_string,
                "name": _string,
                "targetPort": _port_number,
            },
            kind="Port",
        ),
        "hosts": _list_of(_nonempty_string, nonempty=True),
        "name": _string,
        "bind": _string,
        "defaultEndpoint": _string,
        # Gateways have no effect locally (see above), so their TLS settings are only checked for shape.
        "tls": _map_of(lambda value, path: None),
    },
    required=("port", "hosts"),
    kind="Server",
)
_gateway_spec = _object({"selector": _map_of(_string), "servers": _list_of(_gateway_server)}, kind="Gateway")


# ---------------------------------------------------------------------------------------------------
# Whole objects.


def _ref(obj: Any, kind: str) -> str:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    if isinstance(meta, dict):
        return f"{kind} {meta.get('namespace', 'default')}/{meta.get('name', '?')}"
    return f"{kind} ?"


def _check_envelope(obj: Any, kind: str) -> None:
    if not isinstance(obj, dict):
        raise _Problem("", f"{obj!r} is {_type_name(obj)}, expected an object")
    for k in obj:
        if k not in _TOP_LEVEL:
            raise _Problem(_key_path("", str(k)), _unknown_field_message(str(k), _TOP_LEVEL, kind))
    if obj.get("apiVersion") not in ISTIO_API_VERSIONS:
        raise _Problem("apiVersion", f"{obj.get('apiVersion')!r} is not one of {sorted(ISTIO_API_VERSIONS)}")
    if obj.get("kind") != kind:
        raise _Problem("kind", f"{obj.get('kind')!r}, expected {kind!r}")
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        raise _Problem("metadata", "is required and must be an object")
    _nonempty_string(meta.get("name"), "metadata.name")
    if not _DNS_NAME.fullmatch(meta["name"]) or len(meta["name"]) > 253:
        raise _Problem("metadata.name", f"{meta['name']!r} is not a DNS-1123 name")
    if "namespace" in meta:
        _nonempty_string(meta["namespace"], "metadata.namespace")
    if "spec" not in obj:
        raise _Problem("spec", "is required")


def _validate(obj: Any, kind: str, spec_check: Check) -> None:
    try:
        _check_envelope(obj, kind)
        spec_check(obj["spec"], "spec")
    except _Problem as p:
        raise InvalidRouteConfig(_ref(obj, kind), p.path, p.message) from None


def validate_virtual_service(obj: Any) -> None:
    """Raise InvalidRouteConfig unless `obj` is a VirtualService the local mesh router can obey."""
    _validate(obj, "VirtualService", _vs_spec)


def validate_destination_rule(obj: Any) -> None:
    """Raise InvalidRouteConfig unless `obj` is a DestinationRule the local mesh router can obey."""
    _validate(obj, "DestinationRule", _dr_spec)


def validate_gateway(obj: Any) -> None:
    """Raise InvalidRouteConfig unless `obj` is a well-formed Gateway (the local router ignores Gateways)."""
    _validate(obj, "Gateway", _gateway_spec)


_VALIDATORS: dict[str, Callable[[Any], None]] = {
    "VirtualService": validate_virtual_service,
    "DestinationRule": validate_destination_rule,
    "Gateway": validate_gateway,
}


def validate_object(obj: Any) -> None:
    """Validate one object of any kind this module knows."""
    kind = obj.get("kind") if isinstance(obj, dict) else None
    validator = _VALIDATORS.get(kind) if isinstance(kind, str) else None
    if validator is None:
        message = f"{kind!r} is not one of {sorted(_VALIDATORS)}"
        raise InvalidRouteConfig(_ref(obj, str(kind)), "kind", message)
    validator(obj)


def validate_objects(objects: Any) -> None:
    """Validate a whole routing config: each object, and how they fit together.

    Across objects: no two objects share kind/namespace/name, no two VirtualServices claim the same host,
    no two DestinationRules the same service, and every subset a route names is defined by the
    DestinationRule of its service (Istio would answer such requests with 503; here it is refused early).
    """
    if not isinstance(objects, list):
        raise InvalidRouteConfig("config", "objects", f"is {_type_name(objects)}, expected a list")
    for obj in objects:
        validate_object(obj)
    _check_unique_names(objects)
    _check_unique_hosts(objects)
    subsets = _check_unique_rules(objects)
    for obj in objects:
        if obj["kind"] == "VirtualService":
            _check_subsets_defined(obj, subsets)


def _name_of(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = obj["metadata"]
    return obj["kind"], meta.get("namespace", "default"), meta["name"]


def _check_unique_names(objects: list[Any]) -> None:
    seen: set[tuple[str, str, str]] = set()
    for obj in objects:
        key = _name_of(obj)
        if key in seen:
            raise InvalidRouteConfig(_ref(obj, obj["kind"]), "metadata.name", "defined twice in one config")
        seen.add(key)


def _host_key(host: str) -> str:
    service = service_name_of(host)
    return f"service {service}" if service is not None else host.lower()


def _check_unique_hosts(objects: list[Any]) -> None:
    claimed: dict[str, str] = {}
    for obj in objects:
        if obj["kind"] != "VirtualService":
            continue
        ref = _ref(obj, "VirtualService")
        for i, host in enumerate(obj["spec"]["hosts"]):
            key = _host_key(host)
            if key in claimed and claimed[key] != ref:
                message = f"{host!r} is also routed by {claimed[key]}"
                raise InvalidRouteConfig(ref, f"spec.hosts[{i}]", message)
            claimed[key] = ref


def _check_unique_rules(objects: list[Any]) -> dict[str, set[str]]:
    """Subset names per service; refuses two DestinationRules for one service."""
    owner: dict[str, str] = {}
    subsets: dict[str, set[str]] = {}
    for obj in objects:
        if obj["kind"] != "DestinationRule":
            continue
        ref = _ref(obj, "DestinationRule")
        service = service_name_of(obj["spec"]["host"]) or ""
        if service in owner:
            raise InvalidRouteConfig(ref, "spec.host", f"service {service!r} also has {owner[service]}")
        owner[service] = ref
        subsets[service] = {s["name"] for s in obj["spec"].get("subsets", [])}
    return subsets


def _check_subsets_defined(vs: Mapping[str, Any], subsets: Mapping[str, set[str]]) -> None:
    for i, route in enumerate(vs["spec"].get("http", [])):
        for j, dest in enumerate(route["route"]):
            d = dest["destination"]
            if "subset" not in d:
                continue
            service = service_name_of(d["host"]) or ""
            if d["subset"] not in subsets.get(service, set()):
                raise InvalidRouteConfig(
                    _ref(vs, "VirtualService"),
                    f"spec.http[{i}].route[{j}].destination.subset",
                    f"{d['subset']!r} is not defined by a DestinationRule for service {service!r}",
                )
