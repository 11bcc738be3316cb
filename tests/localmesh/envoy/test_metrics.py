"""Istio's standard metrics from Envoy's own statistics (`localmesh.envoy.metrics`).

Unit: the mapping on Envoy text captured around a promotion (`captured/`: a 50/50 release with 500s, then `stable`
re-pointed to v2), the relabelling's semantics, the filter and the scrape job. Live: a real Envoy in front of two
backends (v1, v2), read directly (`istio_snapshot` + `analysis.counters.snapshot_counts`) and through a real
Prometheus (the project's `PrometheusProcess` scraping Envoy's admin with `scrape_job`'s relabelling, read with
`PrometheusSource`): the counts per version and code equal the requests sent and the backends' own counts, and a
promotion (re-pointed subset, removed subset, a version coming back) keeps every count with its version.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest

from analysis.counters import CounterSnapshot, snapshot_counts
from analysis.observations import ISTIO_BUCKETS_MS, MetricsQuery, VersionCounts
from controller.adapters.local.direct_metrics import parse_snapshot
from controller.adapters.prometheus.metrics import PrometheusSource
from controller.adapters.prometheus.server import PrometheusProcess
from localmesh.envoy.metrics import (
    ISTIO_BUCKETS,
    ISTIO_REQUESTS,
    STATS_FILTER,
    IstioSample,
    istio_exposition,
    istio_samples,
    istio_snapshot,
    metric_relabel_configs,
    relabel,
    scrape_job,
    stats_path,
)
from localmesh.envoy.process import Envoy
from tests.localmesh.envoy.support import (
    Backend,
    Client,
    Obj,
    destination_rule,
    lane_route,
    release,
    split,
    stat,
    to,
    virtual_service,
)
from tests.support.tools import require_tool

CAPTURED = Path(__file__).parent / "captured"
PROMETHEUS_PACKAGE = "apt-get install --no-install-recommends prometheus"
SHOP = "shop.default.svc.cluster.local"
SCRAPE_S = 0.5
UP_AT = 'timestamp(up{job="envoy"})'  # when Envoy's last scrape started


def captured(name: str) -> str:
    return (CAPTURED / f"{name}.txt").read_text()


def query(service: str) -> MetricsQuery:
    return MetricsQuery(namespace="default", services=(service,), versions=("v1", "v2"))


def requests_of(samples: list[IstioSample]) -> dict[tuple[str, str], float]:
    return {(s.labels["destination_version"], s.labels["response_code"]): s.value
            for s in samples if s.name == ISTIO_REQUESTS}


# --------------------------------------------------------------------------------------------------------------
# The mapping on captured text


def test_each_request_is_kept_once_under_istios_names_and_labels() -> None:
    samples = istio_samples(captured("before_promotion"))
    requests = [s for s in samples if s.name == ISTIO_REQUESTS]
    assert sorted((s.labels["cluster_name"], s.labels["response_code"], s.value) for s in requests) == [
        (f"outbound|8000|v1|{SHOP}", "200", 4), (f"outbound|8000|v1|{SHOP}", "500", 1),
        (f"outbound|8000|v2|{SHOP}", "200", 2), (f"outbound|8000|v2|{SHOP}", "500", 2)]
    assert dict(requests[0].labels) == {
        "reporter": "destination", "destination_service_name": "shop", "destination_service_namespace": "default",
        "destination_version": "v1", "response_code": "200", "cluster_name": f"outbound|8000|v1|{SHOP}"}
    names = Counter(s.name for s in samples)
    assert names == {ISTIO_REQUESTS: 4, ISTIO_BUCKETS: 2 * len(ISTIO_BUCKETS_MS),
                     "istio_request_duration_milliseconds_sum": 2, "istio_request_duration_milliseconds_count": 2}
    v1 = sorted((float(s.labels["le"]), s.value) for s in samples
                if s.name == ISTIO_BUCKETS and s.labels["destination_version"] == "v1")
    assert tuple(le for le, _ in v1) == ISTIO_BUCKETS_MS and v1[-1][1] == 5


def test_a_window_across_a_promotion_counts_each_version_apart_and_nothing_twice() -> None:
    before = istio_snapshot(captured("before_promotion"), 10.0)
    after = istio_snapshot(captured("after_promotion"), 20.0)
    since_zero = snapshot_counts(query("shop"), CounterSnapshot(0.0), before)
    assert (since_zero.counts[("shop", "v1")].requests, since_zero.counts[("shop", "v1")].errors) == (5, 1)
    assert (since_zero.counts[("shop", "v2")].requests, since_zero.counts[("shop", "v2")].errors) == (4, 2)
    assert all(sum(c.buckets) == c.requests for c in since_zero.counts.values())
    # `stable` now selects v2 under a stat name of its own (`v2~2`): its 3 x 200 and one 503 are v2's; v1's
    # cluster went with its series, which counts nothing (neither negative nor a restart of everything).
    window = snapshot_counts(query("shop"), before, after)
    assert window.counts[("shop", "v1")] == VersionCounts.empty(len(ISTIO_BUCKETS_MS))
    assert (window.counts[("shop", "v2")].requests, window.counts[("shop", "v2")].errors) == (4, 1)
    assert sum(window.counts[("shop", "v2")].buckets) == 4
    assert {s.labels["cluster_name"] for s in istio_samples(captured("after_promotion"))} == {
        f"outbound|8000|v2|{SHOP}", f"outbound|8000|v2~2|{SHOP}"}


def test_the_istio_text_reads_back_as_the_same_snapshot() -> None:
    for name in ("before_promotion", "after_promotion"):
        text = captured(name)
        assert parse_snapshot(istio_exposition(istio_samples(text)), 1.0) == istio_snapshot(text, 1.0)


def test_clusters_outside_the_mesh_are_dropped_and_a_mixed_one_belongs_to_no_version() -> None:
    text = "\n".join([
        "# TYPE envoy_cluster_upstream_rq counter",
        'envoy_cluster_upstream_rq{response_code="200",cluster_name="xds-grpc"} 7',
        f'envoy_cluster_upstream_rq{{response_code="200",cluster_name="outbound|8000|v1+v2|{SHOP}"}} 5',
        f'envoy_cluster_upstream_rq{{response_code="503",cluster_name="outbound|9080|v2~12|{SHOP}"}} 2',
        f'envoy_cluster_upstream_rq{{response_code_class="5xx",cluster_name="outbound|9080|v2~12|{SHOP}"}} 2',
        "# TYPE envoy_cluster_upstream_rq_total counter",
        f'envoy_cluster_upstream_rq_total{{cluster_name="outbound|9080|v2~12|{SHOP}"}} 2',
        "# TYPE envoy_cluster_internal_upstream_rq counter",
        f'envoy_cluster_internal_upstream_rq{{response_code="503",cluster_name="outbound|9080|v2~12|{SHOP}"}} 2', ""])
    assert requests_of(istio_samples(text)) == {("v1+v2", "200"): 5, ("v2", "503"): 2}
    counts = snapshot_counts(query("shop"), CounterSnapshot(0.0), istio_snapshot(text, 1.0)).counts
    assert (counts[("shop", "v1")].requests, counts[("shop", "v2")].requests, counts[("shop", "v2")].errors) == (
        0, 2, 2)


def test_relabel_follows_prometheus() -> None:
    series = {"__name__": "m", "a": "x", "b": "y"}
    assert relabel(series, [{"source_labels": ["a", "b"], "regex": "x;y", "action": "keep"}]) == series
    assert relabel(series, [{"source_labels": ["a"], "regex": "x.", "action": "keep"}]) is None  # anchored
    assert relabel(series, [{"source_labels": ["a", "c"], "regex": "x;", "action": "drop"}]) is None  # missing: ""
    joined = relabel(series, [{"source_labels": ["a", "b"], "separator": "|", "regex": "(.)\\|(?P<second>.)",
                               "target_label": "c", "replacement": "${1}-$second-$$"}])
    assert joined is not None and joined["c"] == "x-y-$"
    emptied = relabel(series, [{"source_labels": ["b"], "target_label": "a", "regex": "y", "replacement": "$9"}])
    assert emptied == {"__name__": "m", "b": "y"}  # an empty result removes the target label
    assert relabel(series, [{"source_labels": ["b"], "target_label": "a", "regex": "nope"}]) == series
    assert relabel(series, [{"regex": "a|b", "action": "labeldrop"}]) == {"__name__": "m"}
    with pytest.raises(ValueError, match="hashmod"):
        relabel(series, [{"action": "hashmod"}])


def test_envoys_filter_selects_the_statistics_the_mapping_reads() -> None:
    def selected(name: str) -> bool:  # Envoy's `/stats?filter=` is a partial match, like re.search
        return re.search(STATS_FILTER, name) is not None

    base = f"cluster.outbound|8000|v2~3|{SHOP}"
    assert selected(f"{base}.upstream_rq_200") and selected(f"{base}.upstream_rq_time")
    assert not any(selected(f"{base}.{s}") for s in ("external.upstream_rq_200", "internal.upstream_rq_503",
                                                     "upstream_rq_2xx", "upstream_rq_total", "upstream_rq_timeout"))
    assert not selected("cluster.xds-grpc.upstream_rq_200") and stats_path().startswith("/stats/prometheus?filter=")


def test_the_scrape_job_is_a_configuration_prometheus_accepts(tmp_path: Path) -> None:
    job = scrape_job(["127.0.0.1:9901"])
    assert job["metric_relabel_configs"] == metric_relabel_configs() and job["metrics_path"] == "/stats/prometheus"
    promtool = require_tool("promtool", install=PROMETHEUS_PACKAGE)
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({"scrape_configs": [job]}))
    checked = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True,
                             timeout=30, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


# --------------------------------------------------------------------------------------------------------------
# A real Envoy, read directly and through a real Prometheus


class EnvoyPrometheus(PrometheusProcess):
    """The project's local Prometheus (`controller.adapters.prometheus.server`: loopback, temp storage, stopped
    by PID) scraping with `scrape_job`: Envoy's filtered statistics, relabelled."""

    def __init__(self, targets: list[str], scrape_interval_s: float) -> None:
        super().__init__([], jobs=[scrape_job(targets)], scrape_interval_s=scrape_interval_s)

    def scraped_after(self, instant: float) -> bool:
        """Whether Envoy's last scrape started after `instant` (and is stored: `up` goes in with the samples)."""
        url = f"{self.url}/api/v1/query?query={quote(UP_AT)}"
        with urllib.request.urlopen(url, timeout=2) as answer:
            result = json.loads(answer.read())["data"]["result"]
        return bool(result) and float(result[0]["value"][1]) > instant


@pytest.fixture(scope="module")
def prometheus(envoy: Envoy) -> Iterator[EnvoyPrometheus]:
    require_tool("prometheus", install=PROMETHEUS_PACKAGE)
    started = EnvoyPrometheus([urlsplit(envoy.admin_url).netloc], scrape_interval_s=SCRAPE_S)
    started.start()
    pid = started.pid
    yield started
    started.stop()
    assert pid is not None and started.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # exited and reaped


@pytest.fixture(scope="module")
def source(prometheus: EnvoyPrometheus) -> Iterator[PrometheusSource]:
    made = PrometheusSource.from_config({"url": prometheus.url, "retries": 0, "timeout_seconds": 5})
    yield made
    made.close()


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def scrape(envoy: Envoy) -> CounterSnapshot:
    taken_at = time.time()
    status, text = envoy.admin_get(stats_path())
    assert status == 200
    return istio_snapshot(text, taken_at)


def send(envoy: Envoy, service: str, count: int) -> Counter[tuple[str, str]]:
    """`count` requests to `service` through Envoy, every fifth to `/status/500`: (version, code) -> requests."""
    client, sent = Client(envoy.options.port), Counter[tuple[str, str]]()
    try:
        for i in range(count):
            status, body, _ = client.get("/status/500" if i % 5 == 0 else "/", host=service)
            assert body is not None
            sent[(body["version"], str(status))] += 1
    finally:
        client.close()
    return sent


def codes(before: CounterSnapshot, after: CounterSnapshot, service: str) -> Counter[tuple[str, str]]:
    """(version, code) -> requests between two scrapes of one process (a series gone since counts nothing)."""
    found = Counter[tuple[str, str]]()
    for key, value in after.requests.items():
        labels = dict(key)
        if labels["destination_service_name"] == service and value > before.requests.get(key, 0):
            found[(labels["destination_version"], labels["response_code"])] += int(value - before.requests.get(key, 0))
    return found


def flushed(envoy: Envoy, before: CounterSnapshot, service: str, requests: int) -> Callable[[], bool]:
    """Whether the histograms of `service` hold `requests` more than in `before` (merged every stats flush)."""

    def check() -> bool:
        now = scrape(envoy).buckets
        return requests == sum(v - before.buckets.get(k, 0) for k, v in now.items()
                               if ("le", "+Inf") in k and ("destination_service_name", service) in k)

    return check


def expected(sent: Counter[tuple[str, str]]) -> dict[str, tuple[int, int]]:
    """version -> (requests, 5xx) of what was sent."""
    return {v: (sum(n for (w, _), n in sent.items() if w == v),
                sum(n for (w, code), n in sent.items() if w == v and code.startswith("5"))) for v in ("v1", "v2")}


def observed(counts: dict[tuple[str, str], VersionCounts], service: str) -> dict[str, tuple[int, int]]:
    assert all(sum(c.buckets) == c.requests for c in counts.values()), counts  # after the flush: every request
    return {v: (counts[(service, v)].requests, counts[(service, v)].errors) for v in ("v1", "v2")}


@pytest.mark.timeout(40)
def test_counts_per_version_and_code_equal_the_requests_sent_directly_and_through_prometheus(
        envoy: Envoy, backends: dict[str, Backend], prometheus: EnvoyPrometheus, source: PrometheusSource) -> None:
    service = "ledger"
    envoy.apply(release(40, service), [b.endpoint(service) for b in backends.values()])
    start, served = time.time(), {v: b.requests for v, b in backends.items()}
    before = scrape(envoy)
    sent = send(envoy, service, 300)
    wait_for(flushed(envoy, before, service, 300), 5, "the histograms' merge")
    flushed_at, after = time.time(), scrape(envoy)
    print(f"sent through Envoy: {dict(sent)}")
    assert sum(sent.values()) == 300 and {code for _, code in sent} == {"200", "500"} and len(sent) == 4

    direct = snapshot_counts(query(service), before, after)
    assert observed(dict(direct.counts), service) == expected(sent)
    assert codes(before, after, service) == sent
    assert {v: b.requests - served[v] for v, b in backends.items()} == {v: n for v, (n, _) in expected(sent).items()}
    # Envoy's filter changes nothing but the size of the scrape
    everything = {(s.name, frozenset(s.labels.items()), s.value) for s in istio_samples(envoy.prometheus_stats())}
    assert everything == {(s.name, frozenset(s.labels.items()), s.value) for s in istio_samples(
        envoy.admin_get(stats_path())[1])}

    wait_for(lambda: prometheus.scraped_after(flushed_at), 5, "a scrape after the merge")
    window = source.window(query(service), start, time.time())
    assert window.counts == direct.counts and not window.absent


def re_pointed(service: str, canary: str | None, weight: int = 0) -> list[Obj]:
    """`stable` re-pointed to v2; the canary subset at `canary` (None: removed) taking `weight`% of the split."""
    rule = destination_rule({"stable": "v2", **({"canary": canary} if canary else {})}, service)
    if canary is None:
        return [rule, virtual_service([{"name": "stable", "route": [to("stable", lane="stable", service=service)]}],
                                      (service,), service)]
    return [rule, virtual_service([lane_route(service), split(weight, service)], (service,), service)]


@pytest.mark.timeout(40)
def test_a_promotion_keeps_every_count_with_its_version_and_no_counter_restarts(
        envoy: Envoy, backends: dict[str, Backend], prometheus: EnvoyPrometheus, source: PrometheusSource) -> None:
    service, port = "orders", envoy.options.port
    eps = [b.endpoint(service) for b in backends.values()]
    phases = [("50/50 release", release(50, service)), ("all in the canary lane", release(100, service)),
              ("stable re-pointed to v2", re_pointed(service, "v2")), ("canary removed", re_pointed(service, None)),
              ("v1 back as the canary", re_pointed(service, "v1", 50))]
    envoy.apply(phases[0][1], eps)
    served = {v: b.requests for v, b in backends.items()}
    snapshots, instants, sent = [scrape(envoy)], [time.time()], []
    for name, objects in phases:
        envoy.apply(objects, eps)
        sent.append(send(envoy, service, 60))
        wait_for(flushed(envoy, snapshots[-1], service, 60), 5, f"the histograms' merge after {name}")
        flushed_at = time.time()
        snapshots.append(scrape(envoy))
        wait_for(lambda: prometheus.scraped_after(flushed_at), 5, f"a scrape after {name}")  # noqa: B023
        instants.append(time.time())
    print("sent per phase:", [dict(s) for s in sent])
    assert [sorted({v for v, _ in s}) for s in sent] == [["v1", "v2"], ["v2"], ["v2"], ["v2"], ["v1", "v2"]]

    for (name, _), phase, before, after, start, end in zip(phases, sent, snapshots[:-1], snapshots[1:],
                                                           instants[:-1], instants[1:], strict=True):
        assert codes(before, after, service) == phase, name
        assert observed(dict(snapshot_counts(query(service), before, after).counts), service) == expected(phase), name
        assert observed(dict(source.window(query(service), start, end).counts), service) == expected(phase), name
        dropped = {k for k in before.requests.keys() & after.requests.keys() if after.requests[k] < before.requests[k]}
        assert not dropped, f"{name}: counters restarted: {dropped}"
    whole = source.window(query(service), instants[0], instants[-1])
    assert observed(dict(whole.counts), service) == expected(sum(sent, Counter[tuple[str, str]]()))
    assert {v: b.requests - served[v] for v, b in backends.items()} == {v: n for v, (n, _) in observed(
        dict(whole.counts), service).items()}
    counted = {dict(k)["cluster_name"] for s in snapshots for k, v in s.requests.items()
               if dict(k)["destination_service_name"] == service}
    assert counted == {stat(port, "v1", service), stat(port, "v2", service), stat(port, "v2", service, 2),
                       stat(port, "v1", service, 2)}


class Sender:
    """`send` on a thread until stopped (at most 20 s): (version, code) -> requests, and any failure."""

    def __init__(self, envoy: Envoy, service: str) -> None:
        self.sent, self.failures = Counter[tuple[str, str]](), list[str]()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(envoy.options.port, service))
        self._thread.start()

    def _run(self, port: int, service: str) -> None:
        client, deadline, i = Client(port), time.monotonic() + 20, 0
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                path = "/status/500" if i % 5 == 0 else "/"
                try:
                    status, body, _ = client.get(path, host=service)
                except OSError as exc:
                    self.failures.append(repr(exc))
                    client.close()
                    client = Client(port)
                    continue
                if body is None or status != (500 if path != "/" else 200):
                    self.failures.append(f"{path}: {status}")
                else:
                    self.sent[(body["version"], str(status))] += 1
                i += 1
        finally:
            client.close()

    def stop(self) -> Counter[tuple[str, str]]:
        self._stop.set()
        self._thread.join(25)
        return self.sent


@pytest.mark.timeout(40)
def test_endpoints_changed_under_load_keep_the_clusters_series_and_every_count(
        envoy: Envoy, backends: dict[str, Backend]) -> None:
    service, port = "stock", envoy.options.port
    extra = Backend("v1")  # a second pod of v1, for a while
    try:
        eps = [b.endpoint(service) for b in backends.values()]
        envoy.apply(release(50, service), eps)
        served = {"v1": backends["v1"].requests + extra.requests, "v2": backends["v2"].requests}
        before = scrape(envoy)
        sender = Sender(envoy, service)
        try:
            wait_for(lambda: sum(sender.sent.values()) >= 100, 10, "traffic")
            envoy.apply(release(50, service), [*eps, extra.endpoint(service)])
            wait_for(lambda: extra.requests >= 50, 10, "traffic to the new endpoint")
            envoy.apply(release(50, service), eps)
            mark = sum(sender.sent.values())
            wait_for(lambda: sum(sender.sent.values()) >= mark + 100, 10, "traffic after the endpoint left")
        finally:
            sent = sender.stop()
        total = sum(sent.values())
        wait_for(flushed(envoy, before, service, total), 5, "the histograms' merge")
        after = scrape(envoy)
    finally:
        extra.stop()
    print(f"endpoint changes under load: {dict(sent)}, {len(sender.failures)} failed")
    assert sender.failures == []
    assert codes(before, after, service) == sent
    counts = dict(snapshot_counts(query(service), before, after).counts)
    assert observed(counts, service) == expected(sent)
    assert {"v1": backends["v1"].requests + extra.requests - served["v1"],
            "v2": backends["v2"].requests - served["v2"]} == {v: n for v, (n, _) in expected(sent).items()}
    # one instance per version throughout: an endpoint change updates the cluster in place
    assert {dict(k)["cluster_name"] for k in after.requests if ("destination_service_name", service) in k} == {
        stat(port, "v1", service), stat(port, "v2", service)}
