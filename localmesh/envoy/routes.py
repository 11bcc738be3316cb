"""One Istio HTTP route in Envoy's terms: its matches, its destinations, its header operations and policies.

This module owns how istiod turns a VirtualService's `http[i]` into Envoy `Route`s
(`pilot/pkg/networking/core/route/route.go`): one Envoy route per match block (a route without matches takes
every request), in order; a single destination becomes `cluster` with its header operations appended to the
route's, several become `weighted_clusters` (zero weights left out) each carrying its own header operations;
`set` overwrites, `add` appends, `remove` removes, and `host`/`:authority` become a host rewrite. Header
matchers are sorted by name, then `:method` and `:authority`; an empty string match means "present";
`withoutHeaders` inverts and treats a missing header as empty. Two deliberate differences from istiod, both kept
from the project's first local mesh: `ignoreUriCase` also applies to a uri regex (`(?i)`), and an empty prefix
means "anything". Regexes are RE2's (Envoy's engine): lookaround and backreferences are refused here rather than
rejected by Envoy later. Everything is pure.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from localmesh.envoy.policies import (
    Refusal,
    fault_filter_config,
    mirror_fraction,
    retry_policy,
    route_timeout,
)

__all__ = ["HeaderOperations", "Scope", "envoy_routes", "header_operations"]

Obj = dict[str, Any]
# Groups RE2 does not have (Python's `re` does): lookahead, lookbehind, named backreference, atomic group.
_NOT_RE2_GROUPS = ("(?=", "(?!", "(?<=", "(?<!", "(?P=", "(?>")
_PSEUDO = (("method", ":method"), ("authority", ":authority"))


@dataclass(frozen=True)
class Scope:
    """What translating one VirtualService's routes needs besides the routes: the object's config path (istiod
    puts it in each route's metadata), how an Istio Destination (with its path, for refusals) names its Envoy
    cluster, and the Envoy retry policy of routes that set no `retries` (None: no retries)."""

    config: str
    cluster_of: Callable[[Mapping[str, Any], str], str]
    default_retry_policy: Obj | None = None


def _key_path(path: str, key: str) -> str:
    """`path.key`, or `path["key"]` for a key that is not an identifier (as the project's validator writes it)."""
    return f"{path}.{key}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) else f'{path}["{key}"]'


def _not_re2(regex: str) -> str | None:
    """What of `regex` (valid for Python's `re`) RE2 lacks, outside escapes and character classes; None if nothing."""
    i, in_class = 0, False
    while i < len(regex):
        c = regex[i]
        if c == "\\":
            nxt = regex[i + 1:i + 2]
            if (nxt.isdigit() and nxt != "0") or nxt == "Z":
                return f"the escape \\{nxt}"
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":  # a leading ^ and a first ] belong to the class
            in_class = True
            i += 2 if regex[i + 1:i + 2] == "^" else 1
            i += 1 if regex[i:i + 1] == "]" else 0
            continue
        elif c == "(" and (group := next((g for g in _NOT_RE2_GROUPS if regex.startswith(g, i)), None)):
            return f"the group {group}...)"
        i += 1
    return None


def _re2(regex: str, path: str) -> dict[str, str]:
    if not regex:
        raise Refusal(path, "an empty regex: Envoy needs at least one character")
    lacking = _not_re2(regex)
    if lacking is not None:
        raise Refusal(path, f"{regex!r} uses {lacking}, which RE2 (Envoy's regex engine) does not have "
                            "(no lookaround, backreferences, atomic groups or \\Z)")
    return {"regex": regex}


def _string_matcher(spec: Mapping[str, str], path: str) -> Obj | None:
    """An Istio StringMatch as Envoy's StringMatcher; None when it matches any value (present match)."""
    if "exact" in spec:
        return {"exact": spec["exact"]}
    if spec.get("prefix"):
        return {"prefix": spec["prefix"]}
    if "regex" in spec:
        return {"safe_regex": _re2(spec["regex"], f"{path}.regex")}
    return None


def _header_matcher(name: str, spec: Mapping[str, str], path: str, without: bool = False) -> Obj:
    """A HeaderMatcher; `without` (withoutHeaders) inverts it, a missing header then counting as an empty one
    (so a request without the header is taken), except for a presence match, which it turns into absence."""
    matcher = _string_matcher(spec, path)
    out: Obj = {"name": name.lower()}
    if matcher is None:
        out["present_match"] = True
    else:
        out["string_match"] = matcher
        if without:
            out["treat_missing_header_as_empty"] = True
    if without:
        out["invert_match"] = True
    return out


def _query_matcher(name: str, spec: Mapping[str, str], path: str) -> Obj:
    matcher = _string_matcher(spec, path)
    return {"name": name, "present_match": True} if matcher is None else {"name": name, "string_match": matcher}


def _path_specifier(uri: Mapping[str, str], ignore_case: bool, path: str) -> Obj:
    if "exact" in uri:
        return {"path": uri["exact"]}
    if "regex" in uri:
        regex = _re2(uri["regex"], f"{path}.regex")["regex"]
        return {"safe_regex": {"regex": f"(?i){regex}" if ignore_case else regex}}
    return {"prefix": uri.get("prefix") or "/"}


def route_match(match: Mapping[str, Any] | None, path: str) -> Obj:
    """An Istio HTTPMatchRequest (None: match everything) as Envoy's RouteMatch."""
    if match is None:
        return {"prefix": "/"}
    if "gateways" in match:
        raise Refusal(f"{path}.gateways", "the local mesh has no gateways, so it cannot tell a gateway's requests "
                                          "from the mesh's")
    out = _path_specifier(match.get("uri", {}), bool(match.get("ignoreUriCase")), f"{path}.uri")
    headers = [_header_matcher(k, v, _key_path(f"{path}.headers", k)) for k, v in match.get("headers", {}).items()]
    headers += [_header_matcher(k, v, _key_path(f"{path}.withoutHeaders", k), without=True)
                for k, v in match.get("withoutHeaders", {}).items()]
    headers.sort(key=lambda h: str(h["name"]))
    headers += [_header_matcher(pseudo, match[key], f"{path}.{key}") for key, pseudo in _PSEUDO if key in match]
    out["case_sensitive"] = not match.get("ignoreUriCase", False)
    if headers:
        out["headers"] = headers
    params = [_query_matcher(k, v, _key_path(f"{path}.queryParams", k))
              for k, v in match.get("queryParams", {}).items()]
    if params:
        out["query_parameters"] = params
    return out


@dataclass
class HeaderOperations:
    """Istio header operations of one level, in Envoy's fields; `authority` is a `host` set (a host rewrite)."""

    request_headers_to_add: list[Obj] = field(default_factory=list)
    request_headers_to_remove: list[str] = field(default_factory=list)
    response_headers_to_add: list[Obj] = field(default_factory=list)
    response_headers_to_remove: list[str] = field(default_factory=list)
    authority: str | None = None

    def extend(self, other: HeaderOperations) -> None:
        """Append `other`'s operations after these (a single destination's after its route's, as istiod does)."""
        self.request_headers_to_add += other.request_headers_to_add
        self.request_headers_to_remove += other.request_headers_to_remove
        self.response_headers_to_add += other.response_headers_to_add
        self.response_headers_to_remove += other.response_headers_to_remove
        self.authority = self.authority or other.authority

    def fields(self) -> Obj:
        """The non-empty Envoy fields (for a Route or a weighted cluster; the authority is the caller's)."""
        return {k: v for k, v in vars(self).items() if v and k != "authority"}


def _internal(name: str) -> bool:
    return name.startswith(":") or name.lower() == "host"


def _to_add(values: Mapping[str, str], append: bool) -> list[Obj]:
    action = "APPEND_IF_EXISTS_OR_ADD" if append else "OVERWRITE_IF_EXISTS_OR_ADD"
    return [{"header": {"key": k.lower(), "value": values[k]}, "append_action": action,
             **({"keep_empty_value": True} if values[k] == "" else {})}
            for k in sorted(values) if not _internal(k)]


def header_operations(spec: Mapping[str, Any] | None) -> HeaderOperations:
    """Istio `headers` ({request, response} x {set, add, remove}) as Envoy's header fields."""
    request, response = (spec or {}).get("request", {}), (spec or {}).get("response", {})
    hosts = [v for op in ("add", "set") for k, v in request.get(op, {}).items() if _internal(k)]
    return HeaderOperations(
        request_headers_to_add=_to_add(request.get("set", {}), False) + _to_add(request.get("add", {}), True),
        request_headers_to_remove=[k.lower() for k in request.get("remove", []) if not _internal(k)],
        response_headers_to_add=_to_add(response.get("set", {}), False) + _to_add(response.get("add", {}), True),
        response_headers_to_remove=[k.lower() for k in response.get("remove", []) if not _internal(k)],
        authority=hosts[-1] if hosts else None,  # `set` wins over `add`, as in istiod
    )


def _weighted(scope: Scope, route: list[Mapping[str, Any]], path: str) -> Obj:
    clusters = []
    for j, dest in enumerate(route):
        if dest.get("weight", 0) == 0:
            continue  # istiod leaves zero-weight destinations out of a split
        ops = header_operations(dest.get("headers"))
        entry = {"name": scope.cluster_of(dest["destination"], f"{path}.route[{j}].destination"),
                 "weight": dest["weight"], **ops.fields()}
        if ops.authority:
            entry["host_rewrite_literal"] = ops.authority
        clusters.append(entry)
    return {"clusters": clusters}


def _action(scope: Scope, spec: Mapping[str, Any], path: str, ops: HeaderOperations) -> Obj:
    """The RouteAction of `spec` (a validated HTTPRoute); a single destination's header operations join `ops`."""
    action: Obj = {"timeout": route_timeout(spec.get("timeout"), f"{path}.timeout")}
    if len(spec["route"]) == 1:
        only = spec["route"][0]
        action["cluster"] = scope.cluster_of(only["destination"], f"{path}.route[0].destination")
        ops.extend(header_operations(only.get("headers")))
    else:
        action["weighted_clusters"] = _weighted(scope, spec["route"], path)
    if ops.authority:
        action["host_rewrite_literal"] = ops.authority
    policy = retry_policy(spec["retries"], f"{path}.retries") if "retries" in spec else scope.default_retry_policy
    if policy is not None:
        action["retry_policy"] = policy
    if "mirrorPercentage" in spec and "mirror" not in spec:
        raise Refusal(f"{path}.mirrorPercentage", "has no mirror to apply to")
    if "mirror" in spec:
        fraction = mirror_fraction(spec.get("mirrorPercentage"), f"{path}.mirrorPercentage")
        if fraction is not None:
            action["request_mirror_policies"] = [{"cluster": scope.cluster_of(spec["mirror"], f"{path}.mirror"),
                                                  "runtime_fraction": fraction, "trace_sampled": False}]
    return action


def envoy_routes(scope: Scope, spec: Mapping[str, Any], index: int) -> list[Obj]:
    """The Envoy routes of `spec`, the VirtualService's validated `http[index]`: one per match block, in order."""
    path = f"spec.http[{index}]"
    ops = header_operations(spec.get("headers"))
    action = _action(scope, spec, path, ops)
    extra: Obj = ops.fields()
    if "fault" in spec:
        extra["typed_per_filter_config"] = {"envoy.filters.http.fault": fault_filter_config(spec["fault"],
                                                                                            f"{path}.fault")}
    metadata = {"filter_metadata": {"istio": {"config": scope.config}}}
    matches: list[Mapping[str, Any] | None] = list(spec.get("match") or [None])
    body = {"route": action, "metadata": metadata, **extra}
    routes = []
    for k, match in enumerate(matches):
        name = str(spec.get("name", ""))
        if match is not None and match.get("name"):
            name = f"{name}.{match['name']}"
        # Each route gets dicts of its own, so that a caller changing one changes no other.
        routes.append({"name": name, "match": route_match(match, f"{path}.match[{k}]"),
                       **(copy.deepcopy(body) if k else body)})
    return routes
