"""The cluster instances of one running Envoy: each with statistics of its own, its endpoints through EDS.

Envoy keeps a cluster's counters under its stat name, and the counters it creates on first use (one per response
code, `upstream_rq_<code>`) live only as long as the cluster *instance* that created them: they disappear when the
cluster is removed, or replaced because its configuration changed (a STATIC cluster is replaced whenever its
endpoints change), and the same name used again later counts from zero. A scrape would see that as a counter
reset, and `analysis.counters` reads a drop in any series of one scraped process as a restart of all of them. So
this module owns, for one Envoy process (without I/O: the process writes the files it says):

- endpoints through EDS, one file per instance: an endpoint change updates the instance in place (its counters go
  on; measured: a STATIC cluster given one more endpoint lost its `upstream_rq_200` and `upstream_rq_503`);
- a stat name per instance that no instance of this process had before (`translate.stat_name`): the
  translation's name (`outbound|<port>|<version>|<fqdn>`) the first time, `~2`, `~3`, ... after the version
  when that name was taken (two clusters of one version at once, such as `stable` and `canary` during a
  promotion, or a version coming back after its cluster went); a cluster whose configuration (endpoints aside)
  and version are unchanged keeps its instance and its name.

A series is thus born with its instance, only grows, and ends with it: it is never shared, never restarted, and
a subset re-pointed to another version counts it under a new name, so no counts mix.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localmesh.envoy.translate import Resources, stat_name

__all__ = ["Instance", "Instances", "Placement", "eds_cluster"]

Obj = dict[str, Any]
_FILE_UNSAFE = re.compile(r"[^A-Za-z0-9._~+-]")


def eds_cluster(cluster: Mapping[str, Any], eds_path: Path) -> Obj:
    """`cluster` (a translated STATIC cluster) as an EDS cluster whose endpoints come from the file `eds_path`."""
    out = {k: v for k, v in cluster.items() if k != "load_assignment"}
    out["type"] = "EDS"
    out["eds_cluster_config"] = {"eds_config": {"path_config_source": {"path": str(eds_path)},
                                                "resource_api_version": "V3"}}
    return out


@dataclass(frozen=True)
class Instance:
    """One cluster instance: the cluster as published (EDS), its endpoints (a ClusterLoadAssignment), the file they
    are read from, and the stat name the translation asked for (`base`: the version's name without `~n`)."""

    cluster: Obj
    assignment: Obj
    eds_path: Path
    base: str

    @property
    def name(self) -> str:
        return str(self.cluster["name"])

    @property
    def stat_name(self) -> str:
        return str(self.cluster["alt_stat_name"])


@dataclass(frozen=True)
class Placement:
    """A translation placed onto the instances in effect.

    `instances`: every cluster's instance, by cluster name. `started`: the clusters with a new instance (their EDS
    file must exist before the clusters are published); `refreshed`: the kept instances whose endpoints changed;
    `retired`: the instances in effect that `instances` no longer has (replaced or removed). `resources`: the
    translation as published, clusters in EDS form and targets with their instances' stat names.
    """

    instances: Mapping[str, Instance]
    started: tuple[str, ...]
    refreshed: tuple[str, ...]
    retired: tuple[Instance, ...]
    resources: Resources


class Instances:
    """The instances in effect in one Envoy process and every stat name it has used; EDS files go in `eds_dir`."""

    def __init__(self, eds_dir: Path) -> None:
        self.eds_dir = eds_dir
        self.live: dict[str, Instance] = {}
        self._used: set[str] = set()
        self._serial = 0

    def reset(self) -> None:
        """A new process runs no cluster; the names used stay used (a restarted Envoy's series are all new)."""
        self.live = {}

    def place(self, resources: Resources) -> Placement:
        """Each translated cluster's instance: the one in effect when only its endpoints changed, else a new one
        (its stat name marked used at once, so that even a configuration Envoy refuses never lends it out)."""
        instances: dict[str, Instance] = {}
        started: list[str] = []
        refreshed: list[str] = []
        for cluster in sorted(resources.clusters, key=lambda c: str(c["name"])):
            name, base = str(cluster["name"]), str(cluster["alt_stat_name"])
            assignment = dict(cluster["load_assignment"])
            kept = self._kept(cluster, base)
            if kept is not None:
                instances[name] = dataclasses.replace(kept, assignment=assignment)
                refreshed += [name] if assignment != kept.assignment else []
            else:
                instances[name] = self._new(cluster, base, resources)
                started.append(name)
        retired = tuple(old for name, old in sorted(self.live.items()) if name in started or name not in instances)
        targets = {name: dataclasses.replace(target, stat_name=instances[name].stat_name)
                   for name, target in resources.targets.items()}
        published = Resources(tuple(i.cluster for i in instances.values()), resources.route_config, targets)
        return Placement(instances, tuple(started), tuple(refreshed), retired, published)

    def _kept(self, cluster: Mapping[str, Any], base: str) -> Instance | None:
        """The instance in effect for `cluster` when it would run unchanged (same version, same configuration)."""
        old = self.live.get(str(cluster["name"]))
        if old is None or old.base != base:
            return None
        same = eds_cluster({**cluster, "alt_stat_name": old.stat_name}, old.eds_path)
        return old if same == old.cluster else None

    def _new(self, cluster: Mapping[str, Any], base: str, resources: Resources) -> Instance:
        """A new instance of `cluster`, under the first of its version's stat names this process has not used."""
        target = resources.targets[str(cluster["name"])]
        instance = 1
        while (name := stat_name(target.port, target.version, target.host, instance)) in self._used:
            instance += 1
        self._used.add(name)
        self._serial += 1
        path = self.eds_dir / f"{self._serial}-{_FILE_UNSAFE.sub('_', name)}.json"
        return Instance(eds_cluster({**cluster, "alt_stat_name": name}, path), dict(cluster["load_assignment"]),
                        path, base)
