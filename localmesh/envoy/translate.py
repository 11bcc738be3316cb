"""Istio VirtualServices and DestinationRules plus local endpoints -> Envoy v3 resources, as istiod builds them.

This module owns the whole translation, without I/O: the objects the project's renderer writes (their shape is
`controller.adapters.istio.validate`'s) and the endpoints of each service version become

- one route configuration (named after the listener port, as istiod names sidecar routes): a virtual host per
  VirtualService host, whose domains are the host's names (`svc.ns.svc.cluster.local`, `svc.ns.svc`, `svc.ns`,
  `svc`; an outside or wildcard host as written) with the port ignored in matching (`ignore_port_in_host_matching`,
  as istiod sets it for sidecars, so `svc:port` matches too), holding the VirtualService's routes in order
  (`localmesh.envoy.routes`); services that have endpoints or a DestinationRule but no VirtualService get istiod's
  default virtual host (every request to the whole service);
- one STATIC cluster per (service, subset, port), named as istiod names them, `outbound|<port>|<subset>|<fqdn>`
  (no subset: `outbound|<port>||<fqdn>`), holding the endpoints the subset's DestinationRule labels select;
  the port is the destination's `port.number`, else the listener's (as istiod does for a multi-port service);
  its statistics are named after the VERSION it serves instead of the subset (`alt_stat_name`,
  `outbound|<port>|<version>|<fqdn>`, see `stat_name`), so that they map onto Istio's `destination_version`
  (`localmesh.envoy.metrics`) and a subset re-pointed to another version counts it under another name;
- the HTTP listener (`http_listener`) with an HttpConnectionManager running the fault and router filters.

Validation stays with the translation: the project's validator runs first (every structural rule, weight sum and
subset reference), on the objects without the route fields it leaves to the translation (timeout, retries, fault,
mirror, mirrorPercentage); those are checked in `localmesh.envoy.policies`. Whatever cannot be translated raises
`UntranslatableConfig` naming the object, the path inside it and the reason. Envoy resources are plain JSON-ready
dicts, without `@type` at the top level.
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from controller.adapters.istio.experiment import hashed_on
from controller.adapters.istio.validate import InvalidRouteConfig, service_name_of, validate_objects
from localmesh.endpoints import Endpoint
from localmesh.envoy.policies import ISTIO_DEFAULT_RETRIES, Refusal, envoy_duration, retry_policy
from localmesh.envoy.routes import Scope, envoy_routes

__all__ = [
    "ISTIO_DEFAULT_RETRIES",
    "UNKNOWN_VERSION",
    "ClusterTarget",
    "Options",
    "Resources",
    "UntranslatableConfig",
    "attributed_version",
    "cluster_name",
    "http_listener",
    "route_config_name",
    "stat_name",
    "translate",
]

Obj = dict[str, Any]
# The HTTPRoute fields Envoy obeys that the project's validator refuses (checked in localmesh.envoy.policies).
_ENVOY_ONLY_FIELDS = ("timeout", "retries", "fault", "mirror", "mirrorPercentage")
_UNLIMITED = 4_294_967_295  # istiod's circuit breaker thresholds: no limit
# A cluster's version when it has neither a `version` subset label nor endpoints (Istio's word for a missing label).
UNKNOWN_VERSION = "unknown"
_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_HTTP_FILTERS = (
    {"name": "envoy.filters.http.fault",
     "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}},
    {"name": "envoy.filters.http.router",
     "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
)


class UntranslatableConfig(InvalidRouteConfig):
    """Objects Envoy cannot be configured from: `obj_ref` (kind namespace/name), `path` inside it, `message`."""


@dataclass(frozen=True)
class Options:
    """How the translation places what it builds.

    `port`/`address`: the HTTP listener (loopback by default). `default_retries`: the retry policy, in Istio's
    `retries` form, of routes that set none; istiod applies meshConfig.defaultHttpRetryPolicy
    (`ISTIO_DEFAULT_RETRIES`), the default here is none. `connect_timeout_s`: istiod's
    default 10 s. `upstream_idle_timeout_s`: how long Envoy keeps an idle upstream connection (None: Envoy's
    1 h); set it below the upstreams' own keep-alive timeout so that Envoy never reuses a connection the upstream
    is closing.
    """

    port: int
    address: str = "127.0.0.1"
    default_retries: Mapping[str, Any] | None = None
    connect_timeout_s: float = 10.0
    upstream_idle_timeout_s: float | None = None


@dataclass(frozen=True)
class ClusterTarget:
    """What one Envoy cluster serves: a service (its FQDN and port), the subset (`""`: the whole service) with
    the labels it selects by, the versions of the endpoints it holds, the one version its requests count for
    (`version`, see `attributed_version`) and the name its statistics carry (`stat_name`: Envoy's statistics
    name clusters only, so this is how a cluster's series map back to Istio's destination labels)."""

    service: str
    namespace: str
    host: str
    port: int
    subset: str
    labels: Mapping[str, str]
    versions: tuple[str, ...]
    version: str
    stat_name: str
    # The request header whose hash picks the endpoint (a subset's consistentHash.httpHeaderName); None: least
    # request, as istiod's default.
    hash_header: str | None = None


@dataclass(frozen=True)
class Resources:
    """The translation: clusters (CDS), the route configuration (RDS) and, per cluster, what it serves."""

    clusters: tuple[Obj, ...]
    route_config: Obj
    targets: Mapping[str, ClusterTarget]


def cluster_name(port: int, subset: str, host: str) -> str:
    """istiod's outbound cluster name (`model.BuildSubsetKey`)."""
    return f"outbound|{port}|{subset}|{host}"


def stat_name(port: int, version: str, host: str, instance: int = 1) -> str:
    """The name a cluster's statistics carry (Envoy's `alt_stat_name`): istiod's cluster name with the version in
    place of the subset, `outbound|<port>|<version>|<fqdn>`. `instance` > 1 appends `~<instance>` to the version:
    a running Envoy gives every cluster instance a name no other instance had (`localmesh.envoy.instances`), so
    that no counter is ever shared or restarted under a name a scrape has seen. `~` and `+` cannot occur in a
    Kubernetes label value, so the version stays readable from the name."""
    return f"outbound|{port}|{version if instance == 1 else f'{version}~{instance}'}|{host}"


def attributed_version(labels: Mapping[str, str], versions: Sequence[str]) -> str:
    """The version a cluster's requests count for: the subset's `version` label (it selects only that version),
    else the one version of its endpoints; `unknown` without either; the versions joined by `+` when its
    endpoints have several (Envoy counts per cluster, not per endpoint, so those requests belong to no single
    version and no release query selects them: the project's routes always name a one-version subset)."""
    if "version" in labels:
        return labels["version"]
    distinct = sorted(set(versions))
    return "+".join(distinct) if distinct else UNKNOWN_VERSION


def route_config_name(options: Options) -> str:
    return str(options.port)


def _ref(obj: Any) -> str:
    """`Kind namespace/name`, as the project's validator names objects."""
    meta = obj.get("metadata", {}) if isinstance(obj, dict) else {}
    kind = obj.get("kind", "?") if isinstance(obj, dict) else "?"
    return f"{kind} {meta.get('namespace', 'default')}/{meta.get('name', '?')}"


def _without_envoy_only_fields(obj: Any) -> Any:
    """`obj` with the route fields only Envoy obeys taken out (list positions kept, so paths stay the same)."""
    if not (isinstance(obj, dict) and obj.get("kind") == "VirtualService" and isinstance(obj.get("spec"), dict)
            and isinstance(obj["spec"].get("http"), list)):
        return obj
    stripped = copy.copy(obj)
    stripped["spec"] = {**obj["spec"], "http": [
        {k: v for k, v in r.items() if k not in _ENVOY_ONLY_FIELDS} if isinstance(r, dict) else r
        for r in obj["spec"]["http"]]}
    return stripped


def _validated(objects: list[Any]) -> None:
    try:
        validate_objects([_without_envoy_only_fields(o) for o in objects])
    except InvalidRouteConfig as exc:
        raise UntranslatableConfig(exc.obj_ref, exc.path, exc.message) from None


def _namespace(obj: Mapping[str, Any]) -> str:
    return str(obj.get("metadata", {}).get("namespace") or "default")


def _service_fqdn(host: str, namespace: str) -> tuple[str, str, str]:
    """(service, namespace, FQDN) of a service host: its own namespace part, else the object's namespace."""
    service = service_name_of(host) or host
    short = host.lower().removesuffix(".svc.cluster.local").removesuffix(".svc")
    ns = short.split(".")[1] if "." in short else namespace
    return service, ns, f"{service}.{ns}.svc.cluster.local"


class _Clusters:
    """The clusters the routes name (and istiod's default ones), with the endpoints each selects."""

    def __init__(self, objects: list[Any], endpoints: Sequence[Endpoint], port: int) -> None:
        self.port, self.endpoints = port, tuple(endpoints)
        self.subsets: dict[str, dict[str, Mapping[str, str]]] = {}
        self.hashing: dict[tuple[str, str], str] = {}  # (service, subset) -> the header its endpoints hash on
        self.namespaces: dict[str, str] = {e.service: e.namespace for e in reversed(self.endpoints)}
        for obj in objects:
            if obj["kind"] == "DestinationRule":
                service, ns, _ = _service_fqdn(obj["spec"]["host"], _namespace(obj))
                self.subsets[service] = {s["name"]: s["labels"] for s in obj["spec"].get("subsets", [])}
                self.hashing.update({(service, s["name"]): header.lower() for s in obj["spec"].get("subsets", [])
                                     if (header := hashed_on(s)) is not None})
                self.namespaces[service] = ns
        self.wanted: dict[str, tuple[str, str, str, int, str]] = {}  # name -> service, ns, fqdn, port, subset
        for service in sorted(self.namespaces):
            for subset in ["", *self.subsets.get(service, {})]:
                self.add(service, self.namespaces[service], port, subset)

    def add(self, service: str, namespace: str, port: int, subset: str) -> str:
        fqdn = f"{service}.{namespace}.svc.cluster.local"
        name = cluster_name(port, subset, fqdn)
        self.wanted.setdefault(name, (service, namespace, fqdn, port, subset))
        return name

    def namer(self, namespace: str) -> Callable[[Mapping[str, Any], str], str]:
        """The cluster of an Istio Destination in an object of `namespace` (refusing what no cluster can be)."""

        def cluster_of(dest: Mapping[str, Any], path: str) -> str:
            _check_destination(dest, path)
            service, ns, _ = _service_fqdn(dest["host"], namespace)
            subset = dest.get("subset", "")
            if subset and subset not in self.subsets.get(service, {}):
                raise Refusal(f"{path}.subset", f"{subset!r} is not defined by a DestinationRule for {service!r}")
            return self.add(service, ns, int(dest.get("port", {}).get("number", self.port)), subset)

        return cluster_of

    def build(self, options: Options) -> tuple[tuple[Obj, ...], dict[str, ClusterTarget]]:
        clusters, targets = [], {}
        for name, (service, ns, fqdn, port, subset) in sorted(self.wanted.items()):
            labels = self.subsets.get(service, {}).get(subset, {}) if subset else {}
            chosen = [e for e in self.endpoints
                      if e.service == service and all(e.labels.get(k) == v for k, v in labels.items())]
            versions = tuple(sorted({e.version for e in chosen}))
            version = attributed_version(labels, versions)
            targets[name] = ClusterTarget(service, ns, fqdn, port, subset, dict(labels), versions, version,
                                          stat_name(port, version, fqdn), self.hashing.get((service, subset)))
            clusters.append(_cluster(name, targets[name], chosen, options))
        return tuple(clusters), targets


def _check_destination(dest: Any, path: str) -> None:
    """A Destination's shape (a mirror's is not checked by the project's validator)."""
    if not isinstance(dest, dict) or not isinstance(dest.get("host"), str):
        raise Refusal(path, f"{dest!r} is not a Destination with a host")
    for key in dest:
        if key not in ("host", "subset", "port"):
            raise Refusal(f"{path}.{key}", "not translated: a Destination has host, subset and port")
    if service_name_of(dest["host"]) is None:
        raise Refusal(f"{path}.host", f"{dest['host']!r} is not a Kubernetes service: no local endpoints")
    number = dest.get("port", {}).get("number") if isinstance(dest.get("port", {}), dict) else None
    if "port" in dest and (isinstance(number, bool) or not isinstance(number, int) or not 0 < number < 65536):
        raise Refusal(f"{path}.port", f"{dest['port']!r} is not {{number: 1..65535}}")
    if "subset" in dest and (not isinstance(dest["subset"], str) or not dest["subset"]):
        raise Refusal(f"{path}.subset", f"{dest['subset']!r} is not a subset name")


def _endpoint(e: Endpoint) -> Obj:
    try:
        ipaddress.ip_address(e.host)
    except ValueError:
        raise UntranslatableConfig(f"Endpoint {e.namespace}/{e.workload}", "address",
                                   f"{e.host!r} is not an IP address, which Envoy's STATIC clusters need") from None
    return {"endpoint": {"address": {"socket_address": {"address": e.host, "port_value": e.port}}}}


def _cluster(name: str, target: ClusterTarget, endpoints: Sequence[Endpoint], options: Options) -> Obj:
    """A STATIC cluster as istiod shapes an outbound one (least request, no circuit-breaker limits)."""
    istio: Obj = {"default_original_port": target.port,
                  "services": [{"host": target.host, "name": target.service, "namespace": target.namespace}]}
    if target.subset:
        istio["subset"] = target.subset
    cluster: Obj = {
        "name": name, "alt_stat_name": target.stat_name, "type": "STATIC",
        "lb_policy": "RING_HASH" if target.hash_header else "LEAST_REQUEST",
        "connect_timeout": envoy_duration(round(options.connect_timeout_s * 10**9)),
        "circuit_breakers": {"thresholds": [{"max_connections": _UNLIMITED, "max_pending_requests": _UNLIMITED,
                                             "max_requests": _UNLIMITED, "max_retries": _UNLIMITED,
                                             "track_remaining": True}]},
        "load_assignment": {"cluster_name": name,
                            "endpoints": [{"lb_endpoints": [_endpoint(e) for e in endpoints]}] if endpoints else []},
        "metadata": {"filter_metadata": {"istio": istio}},
    }
    if options.upstream_idle_timeout_s is not None:
        cluster["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "common_http_protocol_options": {
                "idle_timeout": envoy_duration(round(options.upstream_idle_timeout_s * 10**9))},
            "explicit_http_config": {"http_protocol_options": {}}}}
    return cluster


def _host_names(host: str, namespace: str) -> tuple[str, list[str]]:
    """(canonical name, domains) of a VirtualService host: a service's four names, any other host as written."""
    if service_name_of(host) is None:
        return host.lower(), [host.lower()]
    service, ns, fqdn = _service_fqdn(host, namespace)
    return fqdn, [fqdn, f"{service}.{ns}.svc", f"{service}.{ns}", service]


def _virtual_hosts(obj: Mapping[str, Any], clusters: _Clusters, options: Options, seen: set[str],
                   default_retry: Obj | None) -> list[Obj]:
    """The virtual hosts of one validated VirtualService: one per distinct host, all with its routes."""
    ns = _namespace(obj)
    api = obj["apiVersion"]
    scope = Scope(config=f"/apis/{api}/namespaces/{ns}/virtual-service/{obj['metadata']['name']}",
                  cluster_of=clusters.namer(ns), default_retry_policy=default_retry)
    routes = [r for i, spec in enumerate(obj["spec"].get("http", [])) for r in envoy_routes(scope, spec, i)]
    vhosts = []
    for host in obj["spec"]["hosts"]:
        name, domains = _host_names(host, ns)
        fresh = [d for d in domains if d not in seen]
        seen.update(fresh)
        if fresh:
            vhosts.append({"name": f"{name}:{options.port}", "domains": fresh, "routes": routes})
    return vhosts


def _default_virtual_host(service: str, clusters: _Clusters, options: Options, seen: set[str],
                          default_retry: Obj | None) -> Obj | None:
    """istiod's virtual host for a service without a VirtualService: every request to all its endpoints."""
    name, domains = _host_names(service, clusters.namespaces[service])
    fresh = [d for d in domains if d not in seen]
    seen.update(fresh)
    if not fresh:
        return None
    action: Obj = {"cluster": clusters.add(service, clusters.namespaces[service], options.port, ""), "timeout": "0s"}
    if default_retry is not None:
        action["retry_policy"] = default_retry
    return {"name": f"{name}:{options.port}", "domains": fresh,
            "routes": [{"name": "default", "match": {"prefix": "/"}, "route": action}]}


def _default_retry_policy(options: Options) -> Obj | None:
    if options.default_retries is None:
        return None
    try:
        return retry_policy(options.default_retries, "default_retries")
    except Refusal as refusal:
        raise UntranslatableConfig("Options", refusal.path, refusal.reason) from None


def translate(objects: Iterable[Mapping[str, Any]], endpoints: Sequence[Endpoint], options: Options) -> Resources:
    """Envoy's clusters and route configuration for `objects` (Istio VirtualServices, DestinationRules; Gateways
    are accepted and ignored: the local mesh has no gateway) and `endpoints`; raises UntranslatableConfig."""
    objs = list(objects)
    _validated(objs)
    default_retry = _default_retry_policy(options)
    clusters = _Clusters(objs, endpoints, options.port)
    seen: set[str] = set()
    vhosts: list[Obj] = []
    routed: set[str] = set()
    for obj in (o for o in objs if o["kind"] == "VirtualService"):
        try:
            vhosts += _virtual_hosts(obj, clusters, options, seen, default_retry)
        except Refusal as refusal:
            raise UntranslatableConfig(_ref(obj), refusal.path, refusal.reason) from None
        routed |= {s for s in (service_name_of(h) for h in obj["spec"]["hosts"]) if s is not None}
    for service in sorted(set(clusters.namespaces) - routed):
        vhost = _default_virtual_host(service, clusters, options, seen, default_retry)
        vhosts += [vhost] if vhost is not None else []
    built, targets = clusters.build(options)
    _hash_policies(vhosts, targets)
    route_config = {"name": route_config_name(options), "virtual_hosts": vhosts, "validate_clusters": False,
                    "ignore_port_in_host_matching": True}
    return Resources(built, route_config, targets)


def _hash_policies(vhosts: list[Obj], targets: Mapping[str, ClusterTarget]) -> None:
    """A route whose every cluster hashes on one header hashes requests by it, as istiod gives a route the
    consistent hash its destinations share (a ring-hash cluster without one picks endpoints at random)."""
    for route in (r for vhost in vhosts for r in vhost["routes"] if "route" in r):
        action = route["route"]
        shares = action.get("weighted_clusters", {}).get("clusters", [])
        names = [action["cluster"]] if "cluster" in action else [c["name"] for c in shares]
        headers = {targets[n].hash_header if n in targets else None for n in names}
        if len(headers) == 1 and (header := headers.pop()) is not None:
            action["hash_policy"] = [{"header": {"header_name": header}}]


def http_listener(options: Options, routes: Mapping[str, Any]) -> Obj:
    """The HTTP listener on options.address:port. `routes` is the connection manager's route specifier: the route
    configuration inline (`{"route_config": ...}`) or where to discover it (`{"rds": ...}`)."""
    manager = {"@type": _HCM, "stat_prefix": f"outbound_{options.address}_{options.port}", "codec_type": "AUTO",
               "normalize_path": True, "http_filters": copy.deepcopy(list(_HTTP_FILTERS)), **routes}
    return {
        "name": f"{options.address}_{options.port}",
        "address": {"socket_address": {"address": options.address, "port_value": options.port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                        "typed_config": manager}]}],
    }
