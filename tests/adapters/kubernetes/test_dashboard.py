"""The Grafana dashboard: valid JSON, every PromQL expression parses (promtool) and names only
metrics the controller exports, metrics it is assumed to export, or Istio's."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from controller.adapters.kubernetes.health import Telemetry
from tests.support.paths import REPO
from tests.support.tools import require_tool

DASHBOARD = REPO / "manifests" / "dashboards" / "stack-canary.json"

# Controller metrics the dashboard relies on that controller/adapters/kubernetes/health.py did not export when the
# dashboard was written. Keep this list short and true: drop a name here once Telemetry exports it.
ASSUMED: set[str] = set()  # every metric the dashboard uses is exported now
ISTIO = {"istio_requests_total", "istio_request_duration_milliseconds_bucket",
         "istio_request_duration_milliseconds_sum", "istio_request_duration_milliseconds_count"}
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values", "group",
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
    "rate", "irate", "increase", "delta", "idelta", "changes", "resets", "deriv", "histogram_quantile",
    "label_replace", "label_join", "abs", "clamp_min", "clamp_max", "vector", "scalar", "time", "absent",
    "sum_over_time", "avg_over_time", "max_over_time", "min_over_time", "count_over_time", "last_over_time",
    "label_values", "inf", "nan",
}


def _exported() -> set[str]:
    # Labelled metrics have no samples until first used: derive the series names from each family's type.
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",),
                "summary": ("_sum", "_count", "")}
    names = set()
    for family in Telemetry().registry.collect():
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            elif key == "query" and isinstance(value, dict) and isinstance(value.get("query"), str):
                yield value["query"]
            else:
                yield from _exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _exprs(item)


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords or label names."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # label lists
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables
    text = re.sub(r"label_values\(([^,()]*),[^)]*\)", r"\1", text)  # label_values(metric, label)
    words = set(re.findall(r"(?<![\w.])[A-Za-z_:][\w:]*", text))
    return {w for w in words if w.lower() not in PROMQL_WORDS and not re.fullmatch(r"\d+\w*", w)}


def test_dashboard_is_grafana_json() -> None:
    d = _dashboard()
    assert d["uid"] == "stack-canary" and d["title"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        grid = p["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24
        if p["type"] != "row":
            assert p["targets"], p["title"]
            assert all(t["expr"] for t in p["targets"])


def test_every_metric_is_known() -> None:
    allowed = _exported() | ASSUMED | ISTIO
    used = set().union(*(metric_names(e) for e in _exprs(_dashboard())))
    assert used, "no expressions found"
    assert used <= allowed, f"unknown metrics: {sorted(used - allowed)}"


def test_dashboard_covers_the_issue() -> None:
    used = set().union(*(metric_names(e) for e in _exprs(_dashboard())))
    for needed in ("stack_canary_release_phase", "stack_canary_release_canary_weight", "stack_canary_check_evalue",
                   "stack_canary_check_verdict", "stack_canary_decisions_total",
                   "stack_canary_time_to_decision_seconds_bucket", "stack_canary_reconcile_duration_seconds_bucket",
                   "stack_canary_reconcile_errors_total", "stack_canary_api_errors_total",
                   "stack_canary_metrics_query_errors_total", "istio_requests_total",
                   "istio_request_duration_milliseconds_bucket"):
        assert needed in used, needed


def test_assumed_list_is_not_stale() -> None:
    """Once Telemetry exports an assumed metric, it must leave ASSUMED (so the list stays the to-do)."""
    assert not (ASSUMED & _exported())


def test_metric_name_extraction() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, destination_version) (rate(istio_request_duration_milliseconds_bucket'
            '{reporter="destination", x=~"$ns"}[$__rate_interval]))) / on(a) group_left(b) foo_total offset 5m')
    assert metric_names(expr) == {"istio_request_duration_milliseconds_bucket", "foo_total"}
    assert metric_names('label_values(stack_canary_leader{a="b"}, pod)') == {"stack_canary_leader"}


def test_every_expression_parses(tmp_path: Path) -> None:
    require_tool("promtool", install="apt-get install --no-install-recommends prometheus")
    variables = {"$__rate_interval": "1m", "$namespace": ".*", "$release": ".*", "$app_namespace": ".*",
                 "$service": ".*", "$canary_version": "v2"}
    rules = []
    for i, expr in enumerate(e for e in _exprs(_dashboard()) if not e.startswith("label_values")):
        for name, value in sorted(variables.items(), key=lambda kv: -len(kv[0])):
            expr = expr.replace(name, value)
        rules.append({"record": f"dashboard:expr_{i}", "expr": expr})
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout
