"""The local mesh's endpoint registry and the files the router starts from.

This module owns what an endpoint of the local platform is (one process of a service version at host:port, with
its labels), reading a registry of them with every problem named by its entry, and reading the Istio objects and
endpoints a router is started with from JSON or YAML files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["Endpoint", "InvalidEndpoints", "load_endpoints", "load_objects", "parse_endpoints"]


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


def load_objects(path: Path) -> list[dict[str, Any]]:
    """Objects from a JSON/YAML file: `{"objects": [...]}`, a list, or a multi-document YAML stream."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    if len(docs) == 1 and isinstance(docs[0], dict) and "objects" in docs[0]:
        return list(docs[0]["objects"])
    if len(docs) == 1 and isinstance(docs[0], list):
        return list(docs[0])
    return docs


def load_endpoints(path: Path) -> list[dict[str, Any]]:
    """Endpoints from a JSON/YAML file: `{"endpoints": [...]}` or a bare list."""
    data = yaml.safe_load(path.read_text())
    entries = data.get("endpoints") if isinstance(data, dict) else data
    return list(entries or [])
