"""The local mesh router's compiled routing table: validated Istio objects + local endpoints -> decisions.

This module owns what the router decides for one request, without any I/O: which VirtualService route a
request matches (by host, then by the ordered `http` routes and their match conditions), which weighted
destination it takes, which endpoints that destination's subset selects (through the DestinationRule's
labels), round-robin among them, and which header operations apply. A `RouteTable` is immutable apart
from its round-robin cursors and is swapped whole when the config or the endpoints change.
"""

from __future__ import annotations

import bisect
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from controller.adapters.istio.validate import service_name_of

__all__ = [
    "Decision",
    "Endpoint",
    "HeaderOps",
    "InvalidEndpoints",
    "RouteTable",
    "compile_table",
    "parse_endpoints",
]

StrMatcher = Callable[[str], bool]


class InvalidEndpoints(ValueError):
    """An endpoint registry that cannot be used; the message names the entry."""


@dataclass(frozen=True)
class Endpoint:
    """One local instance of a service version, reachable at host:port."""

    service: str
    labels: Mapping[str, str]
    host: str
    port: int
    namespace: str = "default"

    @property
    def version(self) -> str:
        return self.labels.get("version", "unknown")

    @property
    def workload(self) -> str:
        return f"{self.service}-{self.version}"

    def for_storage(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "labels": dict(self.labels),
            "address": f"{self.host}:{self.port}",
            "namespace": self.namespace,
        }


def parse_endpoints(entries: Any, default_namespace: str = "default") -> tuple[Endpoint, ...]:
    """Endpoints from `[{service, labels: {version}, address: "127.0.0.1:port", namespace?}]`."""
    if not isinstance(entries, list):
        raise InvalidEndpoints(f"endpoints: expected a list, got {type(entries).__name__}")
    return tuple(_parse_endpoint(e, f"endpoints[{i}]", default_namespace) for i, e in enumerate(entries))


def _parse_endpoint(entry: Any, where: str, default_namespace: str) -> Endpoint:
    if not isinstance(entry, dict):
        raise InvalidEndpoints(f"{where}: expected an object")
    unknown = set(entry) - {"service", "labels", "address", "namespace"}
    if unknown:
        raise InvalidEndpoints(f"{where}: unknown field(s) {sorted(unknown)}")
    service, labels, address = entry.get("service"), entry.get("labels", {}), entry.get("address")
    if not isinstance(service, str) or not service:
        raise InvalidEndpoints(f"{where}.service: expected a non-empty string")
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise InvalidEndpoints(f"{where}.labels: expected an object of strings")
    namespace = entry.get("namespace", default_namespace)
    if not isinstance(namespace, str) or not namespace:
        raise InvalidEndpoints(f"{where}.namespace: expected a non-empty string")
    host, sep, port = address.rpartition(":") if isinstance(address, str) else ("", "", "")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidEndpoints(f"{where}.address: {address!r} is not host:port")
    return Endpoint(service, dict(labels), host.strip("[]"), int(port), namespace)


# ---------------------------------------------------------------------------------------------------
# Compiled pieces.


class EndpointPool:
    """The endpoints a destination selects, taken in turn (round robin)."""

    __slots__ = ("_next", "endpoints")

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        self.endpoints = tuple(endpoints)
        self._next = 0

    def pick(self) -> Endpoint | None:
        if not self.endpoints:
            return None
        i = self._next
        self._next = (i + 1) % len(self.endpoints)
        return self.endpoints[i]


@dataclass(frozen=True)
class HeaderOps:
    """Header operations of one level (route or destination), lower-case names: remove, set, then add."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: frozenset[str] = frozenset()

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None) -> HeaderOps | None:
        if not spec:
            return None
        return cls(
            set=tuple((k.lower(), v) for k, v in spec.get("set", {}).items()),
            add=tuple((k.lower(), v) for k, v in spec.get("add", {}).items()),
            remove=frozenset(k.lower() for k in spec.get("remove", [])),
        )

    def apply(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """A new header list (lower-case names) with these operations applied."""
        drop = self.remove | {k for k, _ in self.set}
        out = [(k, v) for k, v in headers if k not in drop] if drop else list(headers)
        out.extend(self.set)
        out.extend(self.add)
        return out


@dataclass(frozen=True)
class Destination:
    service: str
    subset: str | None
    pool: EndpointPool
    request_ops: HeaderOps | None
    response_ops: HeaderOps | None


@dataclass(frozen=True)
class Request:
    """What matching reads of a request: method, path (without query), raw query, lower-case headers."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]


Condition = Callable[[Request], bool]


@dataclass(frozen=True)
class Route:
    name: str
    matches: tuple[tuple[Condition, ...], ...]  # OR over matches, AND within one
    destinations: tuple[Destination, ...]
    cumulative_weights: tuple[int, ...]
    request_ops: HeaderOps | None
    response_ops: HeaderOps | None

    def matches_request(self, request: Request) -> bool:
        if not self.matches:
            return True
        return any(all(c(request) for c in conditions) for conditions in self.matches)

    def choose(self) -> Destination:
        if len(self.destinations) == 1:
            return self.destinations[0]
        # Envoy picks a weighted cluster at random per request; so do we.
        r = random.randrange(self.cumulative_weights[-1])
        return self.destinations[bisect.bisect_right(self.cumulative_weights, r)]


@dataclass(frozen=True)
class Decision:
    """Where a request goes. `endpoint` None means no healthy upstream (503) or no route (404)."""

    service: str
    endpoint: Endpoint | None
    request_ops: tuple[HeaderOps, ...] = ()
    response_ops: tuple[HeaderOps, ...] = ()
    no_route: bool = False


@dataclass
class RouteTable:
    """Routes per VirtualService host, and a pool of all endpoints per service for unrouted hosts."""

    service_routes: dict[str, tuple[Route, ...]] = field(default_factory=dict)
    outside_routes: dict[str, tuple[Route, ...]] = field(default_factory=dict)
    wildcard_routes: tuple[tuple[str, tuple[Route, ...]], ...] = ()
    service_pools: dict[str, EndpointPool] = field(default_factory=dict)
    known_services: frozenset[str] = frozenset()

    def routes_for(self, host: str) -> tuple[str | None, tuple[Route, ...] | None]:
        """(service name the host denotes, the VirtualService routes for it if any)."""
        service = service_name_of(host)
        routes = self.service_routes.get(service) if service is not None else self.outside_routes.get(host)
        if routes is None:
            for suffix, wildcard in self.wildcard_routes:
                if host.endswith(suffix):
                    return service, wildcard
        return service, routes

    def decide(self, host: str, request: Request) -> Decision:
        service, routes = self.routes_for(host)
        if routes is None:
            if service is None or service not in self.known_services:
                return Decision(service or host, None, no_route=True)
            return Decision(service, self.service_pools[service].pick())
        for route in routes:
            if route.matches_request(request):
                dest = route.choose()
                return Decision(
                    dest.service,
                    dest.pool.pick(),
                    tuple(o for o in (route.request_ops, dest.request_ops) if o is not None),
                    tuple(o for o in (route.response_ops, dest.response_ops) if o is not None),
                )
        return Decision(service or host, None, no_route=True)


# ---------------------------------------------------------------------------------------------------
# Compilation of validated objects.


def _string_matcher(spec: Mapping[str, str], ignore_case: bool = False) -> StrMatcher:
    if "exact" in spec:
        exact = spec["exact"].lower() if ignore_case else spec["exact"]
        return (lambda v: v.lower() == exact) if ignore_case else (lambda v: v == exact)
    if "prefix" in spec:
        prefix = spec["prefix"].lower() if ignore_case else spec["prefix"]
        return (lambda v: v.lower().startswith(prefix)) if ignore_case else (lambda v: v.startswith(prefix))
    if "regex" in spec:
        # Istio (RE2 through Envoy) matches a regex against the whole value.
        pattern = re.compile(spec["regex"], re.IGNORECASE if ignore_case else 0)
        return lambda v: pattern.fullmatch(v) is not None
    return lambda v: True


def _header_condition(name: str, spec: Mapping[str, str], present: bool) -> Condition:
    matcher, lname = _string_matcher(spec), name.lower()

    def condition(r: Request) -> bool:
        value = r.headers.get(lname)
        hit = value is not None and matcher(value)
        return hit if present else not hit

    return condition


def _query_condition(name: str, spec: Mapping[str, str]) -> Condition:
    matcher = _string_matcher(spec)

    def condition(r: Request) -> bool:
        return any(k == name and matcher(v) for k, v in parse_qsl(r.query, keep_blank_values=True))

    return condition


def _compile_match(match: Mapping[str, Any]) -> tuple[Condition, ...]:
    conditions: list[Condition] = []
    if "uri" in match:
        uri = _string_matcher(match["uri"], bool(match.get("ignoreUriCase")))
        conditions.append(lambda r: uri(r.path))
    if "method" in match:
        method = _string_matcher(match["method"])
        conditions.append(lambda r: method(r.method))
    if "authority" in match:
        authority = _string_matcher(match["authority"])
        conditions.append(lambda r: authority(r.headers.get("host", "")))
    conditions += [_header_condition(k, v, True) for k, v in match.get("headers", {}).items()]
    conditions += [_header_condition(k, v, False) for k, v in match.get("withoutHeaders", {}).items()]
    conditions += [_query_condition(k, v) for k, v in match.get("queryParams", {}).items()]
    return tuple(conditions)


def _ops(spec: Mapping[str, Any] | None, direction: str) -> HeaderOps | None:
    return HeaderOps.from_spec((spec or {}).get(direction))


class _PoolCache:
    """One pool per (service, subset), shared by every route that names it, so round robin is per subset."""

    def __init__(self, endpoints: Sequence[Endpoint], subsets: Mapping[str, Mapping[str, Mapping[str, str]]]):
        self._endpoints, self._subsets = endpoints, subsets
        self._pools: dict[tuple[str, str | None], EndpointPool] = {}

    def get(self, service: str, subset: str | None) -> EndpointPool:
        key = (service, subset)
        if key not in self._pools:
            labels = self._subsets.get(service, {}).get(subset, None) if subset is not None else {}
            selected = (
                []
                if labels is None
                else [
                    e
                    for e in self._endpoints
                    if e.service == service and all(e.labels.get(k) == v for k, v in labels.items())
                ]
            )
            self._pools[key] = EndpointPool(selected)
        return self._pools[key]


def _compile_route(index: int, spec: Mapping[str, Any], pools: _PoolCache) -> Route:
    destinations: list[Destination] = []
    weights: list[int] = []
    total = 0
    for d in spec["route"]:
        service = service_name_of(d["destination"]["host"]) or d["destination"]["host"]
        subset = d["destination"].get("subset")
        destinations.append(
            Destination(
                service,
                subset,
                pools.get(service, subset),
                _ops(d.get("headers"), "request"),
                _ops(d.get("headers"), "response"),
            )
        )
        total += d.get("weight", 100 if len(spec["route"]) == 1 else 0)
        weights.append(total)
    # Zero-weight destinations never win: bisect_right skips them because their cumulative bound repeats.
    return Route(
        name=spec.get("name", f"http[{index}]"),
        matches=tuple(_compile_match(m) for m in spec.get("match", [])),
        destinations=tuple(destinations),
        cumulative_weights=tuple(weights),
        request_ops=_ops(spec.get("headers"), "request"),
        response_ops=_ops(spec.get("headers"), "response"),
    )


def compile_table(objects: Iterable[Mapping[str, Any]], endpoints: Sequence[Endpoint]) -> RouteTable:
    """A table from objects that already passed validate_objects, and the endpoint registry."""
    objects = list(objects)
    subsets: dict[str, dict[str, Mapping[str, str]]] = {}
    for obj in objects:
        if obj["kind"] == "DestinationRule":
            service = service_name_of(obj["spec"]["host"]) or obj["spec"]["host"]
            subsets[service] = {s["name"]: s["labels"] for s in obj["spec"].get("subsets", [])}
    pools = _PoolCache(endpoints, subsets)
    table = RouteTable()
    wildcards: list[tuple[str, tuple[Route, ...]]] = []
    for obj in objects:
        if obj["kind"] != "VirtualService":
            continue
        routes = tuple(_compile_route(i, r, pools) for i, r in enumerate(obj["spec"].get("http", [])))
        for host in obj["spec"]["hosts"]:
            service = service_name_of(host)
            if service is not None:
                table.service_routes[service] = routes
            elif host.startswith("*"):
                wildcards.append((host[1:].lower(), routes))
            else:
                table.outside_routes[host.lower()] = routes
    # Longest suffix first, so `*.a.example.com` wins over `*.example.com` and over `*`.
    table.wildcard_routes = tuple(sorted(wildcards, key=lambda w: -len(w[0])))
    table.known_services = frozenset({e.service for e in endpoints} | set(subsets))
    table.service_pools = {s: pools.get(s, None) for s in table.known_services}
    return table
