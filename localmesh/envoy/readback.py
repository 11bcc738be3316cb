"""What a running Envoy says it runs, read out of its admin `/config_dump` and `/stats` into data.

This module owns reading Envoy's answer, without I/O: its `/stats` text (the `version_text` of each
configuration in effect is what `process.Envoy.apply` waits for), and the routes Envoy actually runs, per virtual
host, with each route's match and the clusters it sends to (weight, and the request headers each adds: the lane
header of a release's split). The controller reads the routing in effect from here, not from its own memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ClusterShare",
    "RouteInEffect",
    "VirtualHostInEffect",
    "parse_stats",
    "routes_in_effect",
    "routes_version",
]

Obj = dict[str, Any]


@dataclass(frozen=True)
class ClusterShare:
    """One cluster a route sends to: its weight (100 for a route's only cluster) and the request headers it adds."""

    cluster: str
    weight: int
    request_headers: Mapping[str, str]


@dataclass(frozen=True)
class RouteInEffect:
    """One Envoy route: its name, match (Envoy's RouteMatch, as JSON) and the clusters it sends to."""

    name: str
    match: Mapping[str, Any]
    clusters: tuple[ClusterShare, ...]

    @property
    def weights(self) -> dict[str, int]:
        """Cluster name -> weight."""
        return {c.cluster: c.weight for c in self.clusters}


@dataclass(frozen=True)
class VirtualHostInEffect:
    name: str
    domains: tuple[str, ...]
    routes: tuple[RouteInEffect, ...]


def parse_stats(text: str) -> dict[str, str]:
    """Envoy's plain-text `/stats` (`name: value` lines) as a dict; text readouts lose their quotes."""
    stats = {}
    for line in text.splitlines():
        name, sep, value = line.partition(": ")
        if sep:
            stats[name.strip()] = value.strip().strip('"')
    return stats


def _route_configs(dump: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Each dynamic route configuration entry ({version_info, route_config, ...}) of a whole config dump or of
    one filtered with `?resource=dynamic_route_configs`."""
    for section in dump.get("configs", []):
        kind = str(section.get("@type", ""))
        if kind.endswith(".RoutesConfigDump"):
            yield from section.get("dynamic_route_configs", [])
        elif kind.endswith(".RoutesConfigDump.DynamicRouteConfig"):
            yield section


def routes_version(dump: Mapping[str, Any], name: str) -> str | None:
    """The version_info of route configuration `name` in effect (None when Envoy has none of that name)."""
    return next((str(c.get("version_info", "")) for c in _route_configs(dump)
                 if c.get("route_config", {}).get("name") == name), None)


def _headers_added(entries: list[Mapping[str, Any]]) -> dict[str, str]:
    return {str(e["header"]["key"]): str(e["header"].get("value", "")) for e in entries if "header" in e}


def _shares(route: Mapping[str, Any]) -> tuple[ClusterShare, ...]:
    action = route.get("route", {})
    if "cluster" in action:
        return (ClusterShare(str(action["cluster"]), 100, {}),)
    return tuple(ClusterShare(str(c["name"]), int(c.get("weight", 0)),
                              _headers_added(c.get("request_headers_to_add", [])))
                 for c in action.get("weighted_clusters", {}).get("clusters", []))


def routes_in_effect(dump: Mapping[str, Any], name: str) -> tuple[VirtualHostInEffect, ...]:
    """The virtual hosts of route configuration `name` as Envoy runs it (empty when it has none)."""
    config: Mapping[str, Any] = next((c["route_config"] for c in _route_configs(dump)
                                      if c.get("route_config", {}).get("name") == name), {})
    return tuple(
        VirtualHostInEffect(
            name=str(vh.get("name", "")),
            domains=tuple(vh.get("domains", [])),
            routes=tuple(RouteInEffect(str(r.get("name", "")), r.get("match", {}), _shares(r))
                         for r in vh.get("routes", [])),
        )
        for vh in config.get("virtual_hosts", [])
    )
