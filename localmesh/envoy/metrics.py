"""Istio's standard metrics from Envoy's own statistics, for a Prometheus scrape and for a direct one.

This module owns the mapping, without I/O. Envoy, with the bootstrap's Istio tag rules (`process.STATS_TAGS`) and
clusters whose statistics are named after the version they serve (`translate.stat_name`, one name per cluster
instance: `localmesh.envoy.instances`), exports on its admin `/stats/prometheus`

    envoy_cluster_upstream_rq{cluster_name="outbound|8000|v2|shop.default.svc.cluster.local", response_code="200"}
    envoy_cluster_upstream_rq_time_bucket{cluster_name="outbound|8000|v2|shop.default.svc.cluster.local", le="5"}

(and `_sum`, `_count`), which become the series the controller's queries read

    istio_requests_total{reporter="destination", destination_service_name="shop",
        destination_service_namespace="default", destination_version="v2", response_code="200", cluster_name=...}
    istio_request_duration_milliseconds_bucket{..., le="5"}   (and _sum, _count)

- `metric_relabel_configs()`: the rules, as a Prometheus scrape job's `metric_relabel_configs` (`scrape_job` builds
  the whole job). Only those two families are kept; of the counter, only the series with a `response_code` (the
  per-class `response_code_class` series count the same requests again), and only clusters named
  `outbound|<port>|<version>[~<n>]|<service>.<namespace>.svc.cluster.local`; Envoy's `external`/`internal`
  copies are other families, so they go too. The service, namespace and version are read from the stat name;
  `~<n>` (a later instance of the version) is not part of the version.
- `cluster_name` stays on every series: two instances of one version are two series, each born with its
  cluster instance and only growing, so no series ever restarts (which `analysis.counters` would read as a
  restart of everything scraped from Envoy).
- `istio_samples(text)`: the same rules applied to a scrape's text (`relabel`, Prometheus' relabelling for the
  actions used here), parsed with prometheus_client; `istio_snapshot` gives the `CounterSnapshot` that
  `analysis.counters.snapshot_counts` reads, `istio_exposition` the Istio-named text an endpoint can serve
  in place of a router's `/metrics`.

What the counts mean: `upstream_rq_<code>` counts the responses of the upstream (one per attempt, retries
included, like a destination sidecar's reporter="destination"), not Envoy's local replies (fault aborts, no
healthy upstream), which no destination saw either. Latency is the upstream request's (Envoy to backend), in
Envoy's default bounds, equal to Istio's. Histograms are merged every stats flush (`process.Envoy`'s
`stats_flush_interval_s`), so buckets may lag the counter by one flush. A cluster whose endpoints run several
versions counts them under the version `v1+v2`, which no release query selects.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple
from urllib.parse import urlencode

from prometheus_client.parser import text_string_to_metric_families

from analysis.counters import CounterSnapshot, LabelSet, labelset

__all__ = [
    "ENVOY_FAMILIES",
    "ISTIO_BUCKETS",
    "ISTIO_REQUESTS",
    "STATS_FILTER",
    "STATS_PATH",
    "STAT_NAME",
    "IstioSample",
    "istio_exposition",
    "istio_samples",
    "istio_snapshot",
    "metric_relabel_configs",
    "relabel",
    "scrape_job",
    "stats_path",
]

Obj = dict[str, Any]
ISTIO_REQUESTS = "istio_requests_total"
ISTIO_BUCKETS = "istio_request_duration_milliseconds_bucket"
# The families the mapping reads (their names in the exposition, as `# TYPE` declares them).
ENVOY_FAMILIES = ("envoy_cluster_upstream_rq", "envoy_cluster_upstream_rq_time")
STATS_PATH = "/stats/prometheus"
# Envoy's own filter on stat names (`/stats/prometheus?filter=`): the per-code counters and the latency histogram
# of the outbound clusters, without their `external`/`internal` copies and per-class counters (measured: 50 lines,
# 5.6 kB, instead of 1,710 lines, 145 kB, for one service's three clusters). The relabelling does not depend on it:
# it maps an unfiltered scrape the same way.
STATS_FILTER = r"^cluster\.outbound\|[0-9]+\|[^|]+\|[^|]+\.svc\.cluster\.local\.upstream_rq(_[0-9]{3}|_time)$"
# An Istio stat name (`translate.stat_name`): version (without the instance's `~n`), service, namespace.
STAT_NAME = r"outbound\|[0-9]+\|([^|~]+)(?:~[0-9]+)?\|([^|.]+)\.([^|.]+)\.svc\.cluster\.local"
_REQUESTS = "envoy_cluster_upstream_rq"
_LATENCY = "envoy_cluster_upstream_rq_time_(bucket|sum|count)"
_DEFAULTS: Mapping[str, Any] = {"separator": ";", "regex": "(.*)", "replacement": "$1", "action": "replace"}


class IstioSample(NamedTuple):
    """One sample of a scrape after the mapping: its metric name, labels and value."""

    name: str
    labels: Mapping[str, str]
    value: float


def metric_relabel_configs() -> list[Obj]:
    """Prometheus `metric_relabel_configs` turning Envoy's cluster statistics into Istio's series (a fresh list
    of plain dicts each call, ready to be put in a scrape configuration)."""
    stat = ["cluster_name"]
    return [
        {"source_labels": ["__name__"], "regex": f"{_REQUESTS}|{_LATENCY}", "action": "keep"},
        {"source_labels": ["__name__", "response_code"], "separator": ";", "regex": f"{_REQUESTS};",
         "action": "drop"},  # the response_code_class series: the same requests counted per class
        {"source_labels": stat, "regex": STAT_NAME, "action": "keep"},
        {"source_labels": stat, "regex": STAT_NAME, "target_label": "destination_version", "replacement": "${1}"},
        {"source_labels": stat, "regex": STAT_NAME, "target_label": "destination_service_name",
         "replacement": "${2}"},
        {"source_labels": stat, "regex": STAT_NAME, "target_label": "destination_service_namespace",
         "replacement": "${3}"},
        {"target_label": "reporter", "replacement": "destination"},
        {"source_labels": ["__name__"], "regex": _REQUESTS, "target_label": "__name__",
         "replacement": ISTIO_REQUESTS},
        {"source_labels": ["__name__"], "regex": _LATENCY, "target_label": "__name__",
         "replacement": "istio_request_duration_milliseconds_${1}"},
    ]


def scrape_job(targets: Sequence[str], job_name: str = "envoy") -> Obj:
    """A Prometheus scrape job of Envoy admin interfaces (`host:port`): the filtered `/stats/prometheus`, mapped
    by `metric_relabel_configs`."""
    return {"job_name": job_name, "metrics_path": STATS_PATH, "params": {"filter": [STATS_FILTER]},
            "static_configs": [{"targets": list(targets)}], "metric_relabel_configs": metric_relabel_configs()}


def stats_path() -> str:
    """The admin path (with its query) a direct scrape reads: the statistics the mapping needs, filtered."""
    return f"{STATS_PATH}?{urlencode({'filter': STATS_FILTER})}"


_EXPANSION = re.compile(r"\$(?:\$|\{(\w+)\}|(\w+))")


def _expand(template: str, match: re.Match[str]) -> str:
    """Go's `regexp.Expand`, as Prometheus fills a replacement: `$1`, `${1}`, `${name}`; `$$` is a `$`; an
    unknown group is empty."""

    def group(ref: re.Match[str]) -> str:
        key = ref.group(1) or ref.group(2)
        if key is None:
            return "$"
        try:
            return match.group(int(key) if key.isdigit() else key) or ""
        except IndexError:  # no such group
            return ""

    return _EXPANSION.sub(group, template)


def relabel(labels: Mapping[str, str], configs: Iterable[Mapping[str, Any]]) -> dict[str, str] | None:
    """`labels` (with `__name__`) after Prometheus relabelling `configs`, or None when a rule drops the series.

    Prometheus' semantics for the actions the mapping uses (`replace`, `keep`, `drop`, `labeldrop`,
    `labelkeep`): the source labels' values joined by `separator` (a missing label is empty), the regex anchored
    at both ends, a replacement that expands to nothing removes the target label."""
    out = dict(labels)
    for config in configs:
        rule = {**_DEFAULTS, **config}
        regex = re.compile(f"^(?:{rule['regex']})$")
        action = rule["action"]
        if action in ("labeldrop", "labelkeep"):
            out = {k: v for k, v in out.items() if bool(regex.match(k)) == (action == "labelkeep")}
            continue
        value = str(rule["separator"]).join(out.get(name, "") for name in rule.get("source_labels", []))
        match = regex.match(value)
        if action in ("keep", "drop"):
            if (match is None) == (action == "keep"):
                return None
        elif action == "replace":
            if match is not None:
                target = _expand(str(rule["target_label"]), match)
                result = _expand(str(rule["replacement"]), match)
                if result:
                    out[target] = result
                else:
                    out.pop(target, None)
        else:
            raise ValueError(f"relabel action {action!r} is not supported here")
    return out


def _families(text: str, wanted: Sequence[str]) -> Iterator[tuple[str, str]]:
    """(name, text) of each family of the exposition named in `wanted`, as its `# TYPE` line names it: the parser
    renames a counter's samples to `<name>_total`, which would merge Envoy's `upstream_rq` (per code) with its
    `upstream_rq_total` counter."""
    name, lines = "", list[str]()
    for line in [*text.splitlines(), "# TYPE -"]:  # a last heading closes the last family
        if line.startswith("# TYPE "):
            if name in wanted and lines:
                yield name, "\n".join(lines) + "\n"
            name, lines = line.split()[2], []
        lines.append(line)


def _envoy_samples(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    for name, block in _families(text, ENVOY_FAMILIES):
        for family in text_string_to_metric_families(block):
            for sample in family.samples:
                # a counter's samples keep their exposition name; a histogram's carry their suffix
                written = name if family.type == "counter" else sample.name
                yield written, dict(sample.labels), float(sample.value)


def istio_samples(text: str) -> list[IstioSample]:
    """The Istio-named samples of an Envoy `/stats/prometheus` text (filtered or not): `metric_relabel_configs`
    applied to every sample of the families it reads. Raises ValueError when the text does not parse."""
    configs = metric_relabel_configs()
    out = []
    for name, labels, value in _envoy_samples(text):
        mapped = relabel({"__name__": name, **labels}, configs)
        if mapped is not None:
            metric = mapped.pop("__name__")
            out.append(IstioSample(metric, mapped, value))
    return out


def istio_snapshot(text: str, taken_at: float) -> CounterSnapshot:
    """The Istio counters of one Envoy scrape, as `analysis.counters.snapshot_counts` reads them."""
    requests: dict[LabelSet, float] = {}
    buckets: dict[LabelSet, float] = {}
    for sample in istio_samples(text):
        if sample.name == ISTIO_REQUESTS:
            requests[labelset(sample.labels)] = sample.value
        elif sample.name == ISTIO_BUCKETS:
            buckets[labelset(sample.labels)] = sample.value
    return CounterSnapshot(taken_at, requests, buckets)


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def istio_exposition(samples: Iterable[IstioSample]) -> str:
    """Samples in the Prometheus text format, under the `# TYPE` lines of Istio's families (what a router's
    `/metrics` serves, so `controller.adapters.local.direct_metrics` reads it unchanged)."""
    families: dict[str, list[str]] = {}
    for sample in samples:
        family, kind = (sample.name, "counter") if sample.name == ISTIO_REQUESTS else (
            sample.name.rsplit("_", 1)[0], "histogram")
        lines = families.setdefault(f"# TYPE {family} {kind}", [])
        labels = ",".join(f'{k}="{_label_value(v)}"' for k, v in sorted(sample.labels.items()))
        lines.append(f"{sample.name}{{{labels}}} {sample.value:.17g}")
    return "".join(f"{head}\n" + "".join(f"{line}\n" for line in lines) for head, lines in families.items())
