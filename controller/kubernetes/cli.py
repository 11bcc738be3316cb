"""The Kubernetes commands of `canary`: run the controller, start a release, show a release.

    canary controller [--namespace NS | --all-namespaces] [--prometheus-url URL] [--kubeconfig FILE]
                      [--health-port 8080] [--identity ID] [--lease-namespace NS] [--no-leader-election]
                      [--business-metric NAME] [--business-metric-numerator PROMQL]
                      [--business-metric-denominator PROMQL] [--no-business-metrics]
    canary start RELEASE --image SERVICE=REPO:TAG ... [-n NS] [--version V] [--stable-version V]
    canary status RELEASE [-n NS] [--watch] [--json]

Each `*_main(argv)` takes the arguments after its sub-command and returns the exit code: 0 done, 1 could
not (API unreachable, release missing), 2 bad input. Kubeconfig, or the in-cluster service account
when run in a pod and no kubeconfig is given.

The controller's A/B experiments read their primary metric from the same Prometheus: `--business-metric`
names a counter-pair custom metric (numerator: successes, denominator: trials, PromQL templates as in
docs/metrics.md) that an experiment's `primaryMetric.name` refers to; the defaults are the search stack's
click-through, `searchstack_clicks_total` / `searchstack_impressions_total` {namespace, service, version}.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from controller.business import BusinessMetrics
from controller.kubernetes.client import DEPLOYMENTS, RELEASES, KubeApi, Obj
from controller.kubernetes.health import HealthServer, Telemetry
from controller.kubernetes.leader import LeaseElector
from controller.kubernetes.loop import Controller, ControllerConfig
from controller.kubernetes.workloads import ReplicaPolicy
from controller.ports import PortError
from controller.spec import SEARCH_STACK, InvalidSpec, parse_release
from controller.status import ReleaseStatus
from controller.view import decision_lines, headline

if TYPE_CHECKING:
    from controller.prometheus_business import CustomMetrics

log = logging.getLogger("canary.kubernetes")
# The search stack's business counters (searchstack/telemetry.py), one query per (service, version): the
# per-pair placeholders make the series' own label names irrelevant, so a scrape config that adds pod
# labels (Istio's addon Prometheus maps `namespace`, `app`, `version`) cannot split or rename them.
DEFAULT_BUSINESS_METRIC = "click-through"
DEFAULT_BUSINESS_NUMERATOR = "searchstack_clicks_total{namespace={namespace},service={service},version={version}}"
DEFAULT_BUSINESS_DENOMINATOR = (
    "searchstack_impressions_total{namespace={namespace},service={service},version={version}}")
CONTROLLER_NAMESPACE = "stack-canary-system"
_LABEL_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class SystemClock:
    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))


def _logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, else ~/.kube/config)")
    p.add_argument("--context", help="kubeconfig context")
    p.add_argument("--server", help=argparse.SUPPRESS)  # a plain-HTTP API server (tests, benchmarks)


def _connect(args: argparse.Namespace, telemetry: Telemetry | None = None) -> KubeApi:
    observer = telemetry.api_call if telemetry else None
    if args.server:
        return KubeApi.for_url(args.server, observer)
    return KubeApi.connect(args.kubeconfig, args.context, observer)


# --------------------------------------------------------------------------------------------------
# canary controller
# --------------------------------------------------------------------------------------------------
def _controller_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="canary controller", description="Run the StackRelease controller.")
    where = p.add_mutually_exclusive_group()
    where.add_argument("-n", "--namespace", help="watch releases in this namespace only")
    where.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (default)")
    p.add_argument("--prometheus-url", default=os.environ.get("PROMETHEUS_URL", "http://prometheus.istio-system:9090"),
                   help="Prometheus with Istio's metrics (default: $PROMETHEUS_URL or the Istio addon)")
    p.add_argument("--business-metric", default=os.environ.get("BUSINESS_METRIC", DEFAULT_BUSINESS_METRIC),
                   help="the A/B primary metric's name, as in primaryMetric.name (default: $BUSINESS_METRIC or "
                        f"{DEFAULT_BUSINESS_METRIC})")
    p.add_argument("--business-metric-numerator",
                   default=os.environ.get("BUSINESS_METRIC_NUMERATOR", DEFAULT_BUSINESS_NUMERATOR),
                   help="PromQL template of its successes counter (default: $BUSINESS_METRIC_NUMERATOR or "
                        "searchstack_clicks_total per namespace, service, version)")
    p.add_argument("--business-metric-denominator",
                   default=os.environ.get("BUSINESS_METRIC_DENOMINATOR", DEFAULT_BUSINESS_DENOMINATOR),
                   help="PromQL template of its trials counter (default: $BUSINESS_METRIC_DENOMINATOR or "
                        "searchstack_impressions_total per namespace, service, version)")
    p.add_argument("--no-business-metrics", action="store_true",
                   help="no business source: an A/B experiment's looks are errors (it rolls back)")
    p.add_argument("--health-port", type=int, default=8080, help="/healthz, /readyz, /metrics (0: any free)")
    p.add_argument("--health-host", default="0.0.0.0", help="address to serve them on")
    p.add_argument("--identity", default=os.environ.get("POD_NAME") or socket.gethostname(),
                   help="this replica's name in the Lease (default: $POD_NAME or the host name)")
    p.add_argument("--lease-namespace", default=os.environ.get("POD_NAMESPACE", CONTROLLER_NAMESPACE))
    p.add_argument("--lease-name", default="stack-canary-controller")
    p.add_argument("--no-leader-election", action="store_true", help="a single replica: always write")
    p.add_argument("--workers", type=int, default=4, help="releases ticked in parallel (default 4)")
    p.add_argument("--resync", type=float, default=30.0, help="seconds between full resyncs (default 30)")
    p.add_argument("--canary-replicas", type=int, help="fixed canary replicas (default: proportional to weight)")
    p.add_argument("--log-level", default="info")
    _connection_args(p)
    return p


def prometheus_config(args: argparse.Namespace) -> dict[str, Any]:
    """The controller's Prometheus config: Istio's metrics, plus the business metric as a custom metric."""
    config: dict[str, Any] = {"url": args.prometheus_url}
    if not args.no_business_metrics:
        config["custom_metrics"] = {args.business_metric: {
            "kind": "counter_pair", "numerator": args.business_metric_numerator,
            "denominator": args.business_metric_denominator,
        }}
    return config


def business_source(args: argparse.Namespace, metrics: CustomMetrics) -> BusinessMetrics | None:
    """The A/B experiments' primary metric over `metrics` (a `PrometheusSource`), unless turned off."""
    from controller.prometheus_business import PrometheusBusinessMetrics

    return None if args.no_business_metrics else PrometheusBusinessMetrics(metrics)


def controller_main(argv: Sequence[str]) -> int:
    args = _controller_parser().parse_args(list(argv))
    _logging(args.log_level)
    from controller.prometheus_source import PrometheusSource  # the analysis edge: only the process needs it

    telemetry = Telemetry()
    try:
        api = _connect(args, telemetry)
        metrics = PrometheusSource.from_config(prometheus_config(args))
    except Exception as exc:  # config errors of either client: say which and stop
        print(f"canary controller: {exc}", file=sys.stderr)
        return 2
    clock = SystemClock()
    elector = None if args.no_leader_election else LeaseElector(
        api, args.lease_namespace, args.identity, clock, name=args.lease_name)
    config = ControllerConfig(namespace=args.namespace, identity=args.identity, resync_period=args.resync,
                              workers=args.workers, replica_policy=ReplicaPolicy(args.canary_replicas))
    controller = Controller(api, config, metrics, clock, elector, telemetry, business_source(args, metrics))
    health = HealthServer(telemetry, controller.healthy, controller.synced.is_set, args.health_host,
                          args.health_port).start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("controller %s watching %s; health on :%d", args.identity, args.namespace or "all namespaces",
             health.port)
    try:
        controller.run(stop)
    finally:
        health.stop()
        metrics.close()
    return 0


# --------------------------------------------------------------------------------------------------
# canary start
# --------------------------------------------------------------------------------------------------
def _start_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="canary start", description="Create or update a StackRelease.")
    p.add_argument("release", help="name of the StackRelease")
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument("--image", action="append", default=[], metavar="SERVICE=REPO:TAG", required=True,
                   help="new image of a service (repeat for each changed service)")
    p.add_argument("--version", help="the new version's label (default: the first image's tag)")
    p.add_argument("--stable-version", help="the running version (default: read from the Deployments)")
    p.add_argument("--services", help="comma-separated stack services (default: the search stack)")
    p.add_argument("--steps", help="canary weights, e.g. 10,25,50 (default: the CRD's)")
    p.add_argument("--interval", help="analysis interval, e.g. 60s")
    _connection_args(p)
    return p


def parse_images(pairs: Sequence[str]) -> dict[str, str]:
    images: dict[str, str] = {}
    for pair in pairs:
        service, sep, image = pair.partition("=")
        if not sep or not service or not image:
            raise ValueError(f"--image {pair!r} is not SERVICE=REPO:TAG")
        images[service] = image
    return images


def version_of(image: str) -> str:
    """A label-safe version from an image reference's tag (or digest)."""
    ref = image.rsplit("/", 1)[-1]
    tag = ref.split("@", 1)[1].split(":", 1)[-1][:12] if "@" in ref else ref.partition(":")[2] or "latest"
    return _LABEL_SAFE.sub("-", tag).strip("-._")[:63] or "new"


def running_version(api: KubeApi, namespace: str, services: Sequence[str]) -> str | None:
    """The version label most of the stack's scaled-up Deployments carry."""
    listed = api.list(DEPLOYMENTS, namespace, f"app in ({','.join(services)})")
    votes: dict[str, int] = {}
    for d in listed.get("items", []):
        version = (d["metadata"].get("labels") or {}).get("version")
        if version and d.get("spec", {}).get("replicas", 1) > 0:
            votes[version] = votes.get(version, 0) + 1
    return max(votes, key=lambda v: votes[v]) if votes else None


def release_object(args: argparse.Namespace, images: dict[str, str], stable: str, services: list[str]) -> Obj:
    spec: dict[str, Any] = {
        "stack": {"entry": services[0], "services": services},
        "stable": {"version": stable},
        "canary": {"version": args.version or version_of(next(iter(images.values()))), "images": images},
    }
    canary: dict[str, Any] = {}
    if args.steps:
        canary["steps"] = [{"weight": int(w)} for w in args.steps.split(",")]
    if args.interval:
        canary["interval"] = args.interval
    if canary:
        spec["strategy"] = {"canary": canary}
    return {"apiVersion": RELEASES.api_version, "kind": "StackRelease",
            "metadata": {"name": args.release, "namespace": args.namespace}, "spec": spec}


def start_main(argv: Sequence[str]) -> int:
    args = _start_parser().parse_args(list(argv))
    services = args.services.split(",") if args.services else list(SEARCH_STACK)
    try:
        images = parse_images(args.image)
        api = _connect(args)
        existing = api.get_or_none(RELEASES, args.namespace, args.release)
        if existing is not None:
            patch: Obj = {"spec": {"canary": {"images": images, **({"version": args.version} if args.version else {})}}}
            api.patch(RELEASES, args.namespace, args.release, patch)
            phase = (existing.get("status") or {}).get("phase", "Pending")
            print(f"updated {args.namespace}/{args.release} (phase {phase})")
            if ReleaseStatus.from_storage(existing.get("status")).phase.final:
                print("note: the release is finished; start a new release (another name) to roll out again")
            return 0
        stable = args.stable_version or running_version(api, args.namespace, services)
        if stable is None:
            print(f"canary start: no running version of {', '.join(services)} in {args.namespace}; "
                  "give --stable-version", file=sys.stderr)
            return 2
        body = release_object(args, images, stable, services)
        parse_release(body)  # refuse locally what the controller would refuse, with the same messages
        api.create(RELEASES, args.namespace, body)
    except (ValueError, InvalidSpec) as exc:
        print(f"canary start: {exc}", file=sys.stderr)
        return 2
    except PortError as exc:
        print(f"canary start: {exc.reason}", file=sys.stderr)
        return 1
    print(f"created {args.namespace}/{args.release}: {stable} -> {body['spec']['canary']['version']}")
    return 0


# --------------------------------------------------------------------------------------------------
# canary status
# --------------------------------------------------------------------------------------------------
def _status_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="canary status", description="Show a StackRelease.")
    p.add_argument("release")
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument("--watch", action="store_true", help="follow it until it finishes (Ctrl-C stops)")
    p.add_argument("--json", action="store_true", help="the status as JSON")
    p.add_argument("--max-seconds", type=float, default=24 * 3600.0, help=argparse.SUPPRESS)
    _connection_args(p)
    return p


def render_status(obj: Obj, now: float, as_json: bool = False) -> str:
    status = ReleaseStatus.from_storage(obj.get("status"))
    if as_json:
        return json.dumps(status.for_storage(), sort_keys=True)
    try:
        spec = parse_release(obj)
    except InvalidSpec as exc:
        return f"{obj['metadata']['name']}: {status.phase.value}  invalid spec: {exc}"
    lines = [headline(spec, status, now), f"  {status.message}"]
    lines += [f"  {c.type}={c.status} {c.reason}: {c.message}".rstrip(": ") for c in status.conditions]
    for record in status.history[-3:]:
        lines += decision_lines(record, spec.stable.version, spec.canary.version)
    return "\n".join(lines)


def status_main(argv: Sequence[str]) -> int:
    args = _status_parser().parse_args(list(argv))
    try:
        api = _connect(args)
        obj = api.get_or_none(RELEASES, args.namespace, args.release)
        if obj is None:
            print(f"canary status: no StackRelease {args.namespace}/{args.release}", file=sys.stderr)
            return 1
        print(render_status(obj, time.time(), args.json), flush=True)
        if args.watch:
            _follow(api, args, obj)
    except PortError as exc:
        print(f"canary status: {exc.reason}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


def _follow(api: KubeApi, args: argparse.Namespace, obj: Obj) -> None:
    """Re-print on every change of the release until it finishes (watch, resumed when it ends)."""
    deadline = time.monotonic() + args.max_seconds
    rv = obj["metadata"]["resourceVersion"]
    while not ReleaseStatus.from_storage(obj.get("status")).phase.final and time.monotonic() < deadline:
        for event in api.watch(RELEASES, args.namespace, rv, timeout_seconds=60):
            changed = event.get("object") or {}
            rv = changed.get("metadata", {}).get("resourceVersion", rv)
            if changed.get("metadata", {}).get("name") != args.release or event.get("type") == "BOOKMARK":
                continue
            obj = changed
            print(render_status(obj, time.time(), args.json), flush=True)
            if ReleaseStatus.from_storage(obj.get("status")).phase.final:
                return
