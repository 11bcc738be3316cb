"""The Kubernetes commands of `canary`: run the controller, start a release, show a release.

    canary controller [--namespace NS | --all-namespaces] [--prometheus-url URL] [--prometheus-scrape-interval S]
                      [--prometheus-pod-label LABEL]
                      [--kubeconfig FILE]
                      [--health-port 8080] [--identity ID] [--lease-namespace NS] [--lease-name NAME]
                      [--no-leader-election]
                      [--business-metric NAME] [--business-metric-numerator PROMQL]
                      [--business-metric-denominator PROMQL] [--business-metric-squares PROMQL]
                      [--business-metric-units PROMQL] [--business-metric-user-sums 'PROMQL;PROMQL;PROMQL;PROMQL']
                      [--no-business-metrics] [--log-format text|json]
                      [--slack-webhook-file F] [--notify-url URL] [--notify-secret-file F] [--webhook-allow-host H]

The controller calls (hooks, notifications) in-cluster Services and the `--webhook-allow-host` hosts only,
and its releases' hooks sign with Kubernetes Secrets (`secretRef`), never with files (docs/hooks.md).
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
import socket
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from controller.adapters.kubernetes.client import DEPLOYMENTS, RELEASES, ApiConflict, KubeApi, Obj
from controller.adapters.kubernetes.health import HealthServer, Telemetry
from controller.adapters.kubernetes.leader import DEFAULT_LEASE, LeaseElector
from controller.adapters.kubernetes.running import Controller, ControllerConfig
from controller.adapters.kubernetes.secrets import KubeSecrets
from controller.adapters.kubernetes.workloads import ReplicaPolicy
from controller.adapters.signals import stop_on_signals
from controller.cli import flags
from controller.cli import outgoing as notifications
from controller.core.operations import (
    ONE_SHOT_CLEARED,
    Refused,
    Running,
    merge_patch,
    next_revision_stable,
    plan,
)
from controller.core.spec.release import (
    SEARCH_STACK,
    InvalidSpec,
    ReleaseSpec,
    parse_release,
    version_order,
    version_room,
)
from controller.core.status import ReleaseStatus, main_and_own, versions_described
from controller.logs import configure_logging
from controller.ports import BusinessMetrics, PortError
from controller.present.view import LIST_HEADER, list_row, panel, progress_lines, render_history, table

if TYPE_CHECKING:
    from controller.adapters.prometheus.business import CustomMetrics
    from controller.adapters.prometheus.metrics import PrometheusSource

log = logging.getLogger("canary.kubernetes")
# The search stack's business counters (searchstack/telemetry.py), one query per (service, version): the
# per-pair placeholders make the series' own label names irrelevant, so a scrape config that adds pod
# labels (Istio's addon Prometheus maps `namespace`, `app`, `version`) cannot split or rename them.
DEFAULT_BUSINESS_METRIC = "click-through"
DEFAULT_BUSINESS_NUMERATOR = "searchstack_clicks_total{namespace={namespace},service={service},version={version}}"
DEFAULT_BUSINESS_DENOMINATOR = (
    "searchstack_impressions_total{namespace={namespace},service={service},version={version}}")
CONTROLLER_NAMESPACE = "stack-canary-system"
_NOT_IN_VERSION = re.compile(r"[^a-z0-9-]+")


class SystemClock:
    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))


def _logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, else ~/.kube/config)")
    p.add_argument("--context", help="kubeconfig context")
    p.add_argument("--server", help=argparse.SUPPRESS)  # a plain-HTTP API server (tests, benchmarks)


def connect(args: argparse.Namespace, telemetry: Telemetry | None = None) -> KubeApi:
    """The API the `connection_args` name; PortError "no Kubernetes API to talk to" when there is none."""
    observer = telemetry.api_call if telemetry else None
    if args.server:
        return KubeApi.for_url(args.server, observer)
    return KubeApi.connect(args.kubeconfig, args.context, observer)


# --------------------------------------------------------------------------------------------------
# canary controller
# --------------------------------------------------------------------------------------------------
def _controller_parser() -> argparse.ArgumentParser:
    # A short usage line: a bad flag is two lines in the pod's log, not a screenful.
    p = argparse.ArgumentParser(prog="canary controller", usage="%(prog)s [options]  (--help lists them)",
                                description="Run the StackRelease controller.",
                                epilog="A default from an environment variable is checked as the flag's value is.")
    where = p.add_mutually_exclusive_group()
    where.add_argument("-n", "--namespace", type=flags.namespace, help="watch releases in this namespace only")
    where.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (default)")
    _prometheus_args(p)
    _business_args(p)
    _process_args(p)
    p.add_argument("--canary-replicas", type=flags.whole(1), metavar="N",
                   help="fixed canary replicas, 1 or more (default: proportional to weight)")
    p.add_argument("--log-level", default="info", help="debug, info (default), warning or error")
    p.add_argument("--log-format", default=flags.env("LOG_FORMAT", "text"), type=flags.one_of("text", "json"),
                   metavar="{text,json}",
                   help="json: one object per line with release, namespace, phase and step ($LOG_FORMAT)")
    notifications.add_arguments(p)
    connection_args(p)
    return p


def _process_args(p: argparse.ArgumentParser) -> None:
    """The process: its health endpoints, its name and Lease, how many releases it ticks at once, how often."""
    p.add_argument("--health-port", type=flags.whole(0, 65535, "a port number (0 to 65535)"), default=8080,
                   help="/healthz, /readyz, /metrics (default 8080; 0: any free)")
    p.add_argument("--health-host", default="0.0.0.0", help="address to serve them on (default 0.0.0.0: all)")
    p.add_argument("--identity", default=os.environ.get("POD_NAME") or socket.gethostname(),
                   help="this replica's name in the Lease (default: $POD_NAME or the host name)")
    p.add_argument("--lease-namespace", type=flags.namespace, default=flags.env("POD_NAMESPACE", CONTROLLER_NAMESPACE),
                   help=f"the namespace of the Lease (default: $POD_NAMESPACE, the controller's own, or "
                        f"{CONTROLLER_NAMESPACE})")
    p.add_argument("--lease-name", type=flags.lease_name, default=flags.env("LEADER_ELECTION_LEASE", DEFAULT_LEASE),
                   help="the Lease the replicas elect a leader on (default: $LEADER_ELECTION_LEASE or "
                        f"{DEFAULT_LEASE}; the controller's Role may update that Lease only)")
    p.add_argument("--no-leader-election", action="store_true", help="a single replica: always write")
    p.add_argument("--workers", type=flags.whole(1, 256), default=4,
                   help="releases ticked in parallel (1 to 256; default 4)")
    p.add_argument("--resync", type=flags.seconds(1, 86400), default=30.0,
                   help="seconds between full resyncs (1 to 86400; default 30)")


def _business_args(p: argparse.ArgumentParser) -> None:
    """The A/B experiments' primary metric, as PromQL templates (docs/metrics.md)."""
    p.add_argument("--business-metric", default=flags.env("BUSINESS_METRIC", DEFAULT_BUSINESS_METRIC),
                   help="the A/B primary metric's name, as in primaryMetric.name (default: $BUSINESS_METRIC or "
                        f"{DEFAULT_BUSINESS_METRIC})")
    p.add_argument("--business-metric-numerator",
                   default=flags.env("BUSINESS_METRIC_NUMERATOR", DEFAULT_BUSINESS_NUMERATOR),
                   help="PromQL template of its successes counter (default: $BUSINESS_METRIC_NUMERATOR or "
                        "searchstack_clicks_total per namespace, service, version)")
    p.add_argument("--business-metric-denominator",
                   default=flags.env("BUSINESS_METRIC_DENOMINATOR", DEFAULT_BUSINESS_DENOMINATOR),
                   help="PromQL template of its trials counter (default: $BUSINESS_METRIC_DENOMINATOR or "
                        "searchstack_impressions_total per namespace, service, version)")
    p.add_argument("--business-metric-squares", default=flags.env("BUSINESS_METRIC_SQUARES"),
                   help="makes the metric a mean: PromQL template of the sum of squared values (the numerator "
                        "is then the sum of values, the denominator their count); e.g. "
                        "searchstack_click_value_squares_total ($BUSINESS_METRIC_SQUARES)")
    p.add_argument("--business-metric-units", default=flags.env("BUSINESS_METRIC_UNITS"),
                   help="PromQL template of a counter of users assigned per version, the units of the sample-"
                        "ratio check (search stack: searchstack_assignments_total{...}); default: "
                        "$BUSINESS_METRIC_UNITS, else none")
    p.add_argument("--business-metric-user-sums", default=flags.env("BUSINESS_METRIC_USER_SUMS"),
                   help="users as the unit: four PromQL templates separated by ';' of counters of the sums over "
                        "users of Y^2, N^2, Y*N and of the users (Y, N: a user's numerator and denominator "
                        "totals); default: $BUSINESS_METRIC_USER_SUMS, else the search stack's searchstack_user_* "
                        "counters for its two metrics, else none (docs/experiments.md, \"Users as the unit\")")
    p.add_argument("--no-business-metrics", action="store_true",
                   help="no business source: an A/B experiment's looks are errors (it rolls back)")


def _prometheus_args(p: argparse.ArgumentParser) -> None:
    """Where Prometheus is, how often it scrapes, the pod label, and the files of its credentials."""
    p.add_argument("--prometheus-url", type=flags.http_url,
                   default=flags.env("PROMETHEUS_URL", "http://prometheus.istio-system:9090"),
                   help="Prometheus with Istio's metrics (default: $PROMETHEUS_URL or the Istio addon)")
    p.add_argument("--prometheus-scrape-interval", type=flags.seconds(0, 3600),
                   default=flags.env("PROMETHEUS_SCRAPE_INTERVAL", 15.0),
                   help="seconds between Prometheus's scrapes of the proxies, 0 to 3600 (default: "
                        "$PROMETHEUS_SCRAPE_INTERVAL or 15, the Istio addon's): windows are read twice that plus "
                        "5 s behind, on scrape boundaries, so that no scrape lands after a window was counted; 0: "
                        "read at once")
    p.add_argument("--prometheus-pod-label", default=flags.env("PROMETHEUS_POD_LABEL", "pod", empty_is_unset=False),
                   help="the label naming the pod a series was scraped from (default: $PROMETHEUS_POD_LABEL or "
                        "pod, as Prometheus' Kubernetes pod discovery sets it; '' when there is none): the "
                        "judge learns from the stable pods how much identical code differs from pod to pod")
    p.add_argument("--prometheus-bearer-token-file", default=flags.env("PROMETHEUS_BEARER_TOKEN_FILE"),
                   help="a file holding the token Prometheus wants (default: $PROMETHEUS_BEARER_TOKEN_FILE; the "
                        "pod's own: /var/run/secrets/kubernetes.io/serviceaccount/token), read again for each "
                        "query, so a rotated token is used")
    p.add_argument("--prometheus-basic-auth-user", default=flags.env("PROMETHEUS_BASIC_AUTH_USER"),
                   help="basic auth instead: the user name (default: $PROMETHEUS_BASIC_AUTH_USER) ...")
    p.add_argument("--prometheus-basic-auth-password-file", default=flags.env("PROMETHEUS_BASIC_AUTH_PASSWORD_FILE"),
                   help="... and a file holding the password (default: $PROMETHEUS_BASIC_AUTH_PASSWORD_FILE)")
    p.add_argument("--prometheus-ca-file", default=flags.env("PROMETHEUS_CA_FILE"),
                   help="the CA bundle an https:// Prometheus's certificate is checked against (default: "
                        "$PROMETHEUS_CA_FILE, else the system's)")


def prometheus_config(args: argparse.Namespace) -> dict[str, Any]:
    """The controller's Prometheus config: Istio's metrics, plus the business metric as a custom metric."""
    config: dict[str, Any] = {"url": args.prometheus_url, "pod_label": args.prometheus_pod_label}
    if args.prometheus_scrape_interval > 0:
        config["scrape_interval_seconds"] = args.prometheus_scrape_interval
    config |= _prometheus_credentials(args)
    if args.no_business_metrics:
        return config
    from controller.adapters.prometheus.business import mean_metric_config, units_metric_config, user_sums_metric_config

    name, numerator, denominator = (args.business_metric, args.business_metric_numerator,
                                    args.business_metric_denominator)
    if args.business_metric_squares:
        custom = mean_metric_config(name, numerator, args.business_metric_squares, denominator)
    else:
        custom = {name: {"kind": "counter_pair", "numerator": numerator, "denominator": denominator}}
    if args.business_metric_units:
        custom |= units_metric_config(name, args.business_metric_units, denominator)
    user_sums = _user_sums_templates(args)
    if user_sums is not None:
        custom |= user_sums_metric_config(name, *user_sums)
    config["custom_metrics"] = custom
    return config


def _prometheus_credentials(args: argparse.Namespace) -> dict[str, Any]:
    """The files Prometheus's credentials and CA are read from, each checked readable now: a controller that
    could never query fails at start with the file's name, not at its first release with a metrics outage.
    The values stay in the files (read again for each query), never on the command line."""
    config: dict[str, Any] = {}
    token, user, password = (args.prometheus_bearer_token_file, args.prometheus_basic_auth_user,
                             args.prometheus_basic_auth_password_file)
    if bool(user) != bool(password):
        raise ValueError("--prometheus-basic-auth-user and --prometheus-basic-auth-password-file go together")
    if token and user:
        raise ValueError("Prometheus takes a bearer token or basic auth, not both")
    if token:
        config["bearer_token_file"] = _readable(token, "--prometheus-bearer-token-file")
    if user:
        config["basic_auth"] = {"username": user,
                                "password_file": _readable(password, "--prometheus-basic-auth-password-file")}
    if args.prometheus_ca_file:
        config["ca_file"] = _readable(args.prometheus_ca_file, "--prometheus-ca-file")
    return config


def _readable(path: str, flag: str) -> str:
    try:
        with open(path, "rb"):
            return path
    except OSError as error:
        raise ValueError(f"{flag}: cannot read {path}: {error.strerror}") from None


def _user_sums_templates(args: argparse.Namespace) -> tuple[str, str, str, str] | None:
    """The per-user sums' templates (Y^2, N^2, Y N, users): `--business-metric-user-sums`, else the search
    stack's when the metric is its click-through or value per click (default counters), else none."""
    from controller.adapters.prometheus.business import CLICK_VALUE, USER_SUMS, USER_VALUE_SUMS

    if args.business_metric_user_sums:
        try:
            return _user_sums_given(args)
        except ValueError as exc:  # `canary controller` checks the flag before this (exit 2); other callers stop
            raise SystemExit(str(exc)) from None
    numerator, denominator = args.business_metric_numerator, args.business_metric_denominator
    if args.business_metric_squares:
        if (numerator, args.business_metric_squares, denominator) == CLICK_VALUE:
            return USER_VALUE_SUMS[0], USER_VALUE_SUMS[1], USER_VALUE_SUMS[2], USER_VALUE_SUMS[3]
        return None
    if (numerator, denominator) == (DEFAULT_BUSINESS_NUMERATOR, DEFAULT_BUSINESS_DENOMINATOR):
        return USER_SUMS[0], USER_SUMS[1], USER_SUMS[2], USER_SUMS[3]
    return None


def _user_sums_given(args: argparse.Namespace) -> tuple[str, str, str, str] | None:
    """`--business-metric-user-sums` as its four templates; a ValueError that names the flag (and the variable
    it came from) when they are not four."""
    text = args.business_metric_user_sums
    if not text:
        return None
    parts = tuple(t.strip() for t in text.split(";"))
    if len(parts) != 4 or not all(parts):
        raise ValueError(f"--business-metric-user-sums {text!r}{flags.source(text)}: four PromQL templates "
                         "separated by ';', none empty (sum of Y^2; sum of N^2; sum of Y*N; users)")
    return parts[0], parts[1], parts[2], parts[3]


def business_source(args: argparse.Namespace, metrics: CustomMetrics) -> BusinessMetrics | None:
    """The A/B experiments' primary metric over `metrics` (a `PrometheusSource`), unless turned off."""
    from controller.adapters.prometheus.business import PrometheusBusinessMetrics

    return None if args.no_business_metrics else PrometheusBusinessMetrics(metrics)


def controller_main(argv: Sequence[str]) -> int:
    args = _controller_parser().parse_args(list(argv))
    # The analysis edge: only the process needs it.
    from controller.adapters.prometheus.in_flight import PrometheusInFlight
    from controller.adapters.prometheus.metrics import PrometheusSource

    telemetry = Telemetry()
    try:
        configure_logging(args.log_level, json=args.log_format == "json")
        _user_sums_given(args)
        api = connect(args, telemetry)
        # The cluster's rules: in-cluster Services plus the allow-list, hooks' keys from Kubernetes Secrets.
        outgoing = notifications.from_args(args, secrets=KubeSecrets(api))
    except Exception as exc:  # a bad flag, URL or file, or the API client's config: say which and stop
        print(f"canary controller: {exc}", file=sys.stderr)
        return 2
    try:
        metrics = PrometheusSource.from_config(prometheus_config(args))
    except Exception as exc:  # config errors of the Prometheus client: say which and stop
        outgoing.close()
        print(f"canary controller: {exc}", file=sys.stderr)
        return 2
    clock = SystemClock()
    elector = None if args.no_leader_election else LeaseElector(
        api, args.lease_namespace, args.identity, clock, name=args.lease_name, local_clock=time.monotonic)
    config = ControllerConfig(namespace=args.namespace, identity=args.identity, resync_period=args.resync,
                              workers=args.workers, replica_policy=ReplicaPolicy(args.canary_replicas),
                              metrics_delay=metrics.provider.config.settle_delay)
    controller = Controller(api, config, metrics, clock, elector, telemetry, business_source(args, metrics),
                            notifier=outgoing.notifier, hooks=outgoing.hooks, history=metrics,
                            in_flight=PrometheusInFlight(metrics.provider, clock.now))
    try:
        health = _health_server(telemetry, controller, args.health_host, args.health_port).start()
    except ValueError as exc:  # the port in use, an address not of this host: one line, not a traceback
        metrics.close()
        outgoing.close()
        print(f"canary controller: {exc}", file=sys.stderr)
        return 2
    log.info("controller %s watching %s; health on :%d; metrics from Prometheus at %s (scraping every %g s)",
             args.identity, args.namespace or "all namespaces", health.port, args.prometheus_url,
             args.prometheus_scrape_interval)
    threading.Thread(target=_probe_prometheus, args=(metrics, args.prometheus_url, clock), daemon=True,
                     name="prometheus-probe").start()
    try:
        with stop_on_signals() as stop:
            controller.run(stop)
    finally:
        health.stop()
        metrics.close()
        outgoing.close()
    return 0


def _probe_prometheus(metrics: PrometheusSource, url: str, clock: SystemClock) -> None:
    """Say once, at start, whether Prometheus answers, so a wrong URL or credential shows in the first lines of
    the log rather than only in each release's decisions (which hold, as a metrics outage never promotes)."""
    from controller.adapters.prometheus.client import PrometheusUnavailable

    try:
        metrics.provider.instant("vector(1)", clock.now(), "the start-up check")
    except PrometheusUnavailable as exc:
        log.warning("Prometheus at %s does not answer: %s; releases analysing hold their weight until it does",
                    url, exc.reason)
    else:
        log.info("Prometheus at %s answers", url)


def _health_server(telemetry: Telemetry, controller: Controller, host: str, port: int) -> HealthServer:
    """The health endpoints' server, bound now: a ValueError naming the flag when it cannot bind."""
    try:
        return HealthServer(telemetry, controller.healthy, controller.synced.is_set, host, port)
    except OSError as exc:  # socket.gaierror too: a --health-host that does not resolve
        raise ValueError(flags.bind_problem(exc, f"--health-host {host}", f"--health-port {port}")) from None


# --------------------------------------------------------------------------------------------------
# canary start
# --------------------------------------------------------------------------------------------------
def _start_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="canary start", description="Create or update a StackRelease.")
    p.add_argument("release", help="name of the StackRelease")
    p.add_argument("-n", "--namespace", default="default", help="its namespace (default: default)")
    p.add_argument("--image", action="append", default=[], metavar="SERVICE=REPO:TAG", required=True,
                   help="new image of a service (repeat for each changed service; a service once)")
    p.add_argument("--version", help="the new version's label (default: the first --image's tag, made a DNS label: "
                                     "2.1 -> 2-1; needed when that image has no tag, is :latest or is named by its "
                                     "digest only, as such a tag names no version)")
    p.add_argument("--stable-version", help="the version the stack runs (default: read from the Deployments: the "
                                            "one most services run); a service that runs another keeps its own")
    p.add_argument("--services", help="comma-separated stack services (default: the search stack)")
    p.add_argument("--steps", type=_weights, help="canary weights, e.g. 10,25,50 (default: the CRD's)")
    p.add_argument("--interval", help="analysis interval, e.g. 60s")
    connection_args(p)
    return p


def parse_images(pairs: Sequence[str]) -> dict[str, str]:
    images: dict[str, str] = {}
    for pair in pairs:
        service, sep, image = pair.partition("=")
        if not sep or not service or not image:
            raise ValueError(f"--image {pair!r} is not SERVICE=REPO:TAG")
        if service in images:
            raise ValueError(f"--image: {service} is given twice ({images[service]} and {image}); give each "
                             "service once")
        images[service] = image
    return images


def _weights(text: str) -> list[int]:
    try:
        return [int(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not whole-number weights separated by ',', e.g. 10,25,50"
                                         ) from None


def new_version(given: str | None, images: dict[str, str], services: Sequence[str]) -> str:
    """The new version's label: `--version`, else the first image's tag (`version_of`). An image without a tag
    (that is `latest`), tagged `latest` or named by its digest only is refused: its version would be `latest`
    for every release, or a hash no one recognises."""
    if given:
        return given
    service, image = next(iter(images.items()))
    name = image.split("@", 1)[0]  # REPO:TAG@DIGEST: the tag names the version
    tag = name.rsplit("/", 1)[-1].partition(":")[2]
    if not tag or tag.lower() == "latest":
        why = "is tagged latest" if tag else "is named by its digest only" if "@" in image else "has no tag (latest)"
        raise ValueError(f"--image {service}={image} {why}, which names no version: tag the image (REPO:TAG) or "
                         "give --version V")
    return version_of(name, services)


def version_of(image: str, services: Sequence[str] = SEARCH_STACK) -> str:
    """A version from an image reference's tag (or digest), made what the spec accepts: a lower-case DNS
    label (`1.2.3_RC1` -> `1-2-3-rc1`) short enough for the Deployments `<service>-<version>`."""
    ref = image.rsplit("/", 1)[-1]
    tag = ref.split("@", 1)[1].split(":", 1)[-1][:12] if "@" in ref else ref.partition(":")[2] or "latest"
    room, _ = version_room(services)
    return _NOT_IN_VERSION.sub("-", tag.lower())[:room].strip("-") or "new"


def stack_deployments(api: KubeApi, namespace: str, services: Sequence[str]) -> list[Obj]:
    """The Deployments of the stack's services (one LIST, by their `app` label), for the readings below."""
    return list(api.list(DEPLOYMENTS, namespace, f"app in ({','.join(services)})").get("items", []))


def running_versions(deployments: list[Obj], services: Sequence[str], main: str | None = None
                     ) -> tuple[str | None, dict[str, str]]:
    """What the stack runs: the version most of its services run (or `main`, given), and the services that run
    another, each with its own (the version of its scaled-up Deployment with the most pods ready, from their `app`
    and `version` labels). A stack an earlier release changed in part runs several."""
    per_service = {s: versions[0] for s, versions in what_runs(deployments, services).items()}
    return main_and_own(per_service, main) if per_service else (main, {})


def what_runs(deployments: list[Obj], services: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """The versions each service runs: those of its scaled-up Deployments (from their `app` and `version` labels),
    the one with the most pods ready first (then the most replicas, then the later-numbered: v10 before v9); a
    service with none is left out."""
    found: dict[str, list[tuple[int, int, str]]] = {}
    for d in deployments:
        labels = d["metadata"].get("labels") or {}
        service, version, replicas = labels.get("app"), labels.get("version"), d.get("spec", {}).get("replicas", 1)
        if isinstance(service, str) and service in services and version and replicas > 0:
            ready = (d.get("status") or {}).get("readyReplicas") or 0
            found.setdefault(service, []).append((ready, replicas, version))
    return {s: tuple(v for *_, v in sorted(found[s], key=lambda x: (x[0], x[1], version_order(x[2])), reverse=True))
            for s in services if s in found}


def stack_running(api: KubeApi, namespace: str, spec: Mapping[str, Any]) -> Running:
    """What the stack of a release's `spec` runs now (`Running`): each service's versions, most pods ready first,
    and the image of each (service, version) that is scaled up."""
    services = (spec.get("stack") or {}).get("services") or SEARCH_STACK
    deployments = stack_deployments(api, namespace, services)
    runs = what_runs(deployments, services)
    images = {(service, version): image for service, versions in runs.items() for version in versions
              for image in running_images(deployments, [service], version).values()}
    return Running(runs, images)


def running_images(deployments: list[Obj], services: Sequence[str], version: str,
                   versions: Mapping[str, str] | None = None) -> dict[str, str]:
    """The image of each service's `<service>-<version>` Deployment (its container named like the service); a
    service in `versions` on its own version."""
    images: dict[str, str] = {}
    for d in deployments:
        labels = d["metadata"].get("labels") or {}
        service = labels.get("app")
        if not isinstance(service, str) or service not in services or \
                labels.get("version") != (versions or {}).get(service, version):
            continue
        containers = d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
        chosen = next((c for c in containers if c.get("name") == service), containers[0] if containers else None)
        if chosen and chosen.get("image"):
            images[service] = chosen["image"]
    return images


def _update_release(api: KubeApi, args: argparse.Namespace, existing: Obj, images: dict[str, str]) -> int:
    """New images for an existing release. In flight they apply to the running release; on a finished one
    they start its next revision: the version serving now becomes the stable one."""
    status = ReleaseStatus.from_storage(existing.get("status"))
    where = f"{args.namespace}/{args.release}"
    canary: Obj = {"images": images, **({"version": args.version} if args.version else {})}
    spec: Obj = {"canary": canary}
    serving = next_revision_stable(status, existing.get("spec") or {})
    if serving is not None:
        old_canary = existing.get("spec", {}).get("canary") or {}
        services = (existing.get("spec", {}).get("stack") or {}).get("services") or SEARCH_STACK
        # What runs now: a later release of the stack may have changed services since this one finished.
        serving = stack_running(api, args.namespace, existing.get("spec") or {}).over(serving)
        canary["version"] = new_version(args.version, images, services)
        canary["images"] = {**{k: None for k in old_canary.get("images") or {} if k not in images}, **images}
        runs = [s for s in images if serving.of(s) == canary["version"]]
        if runs:
            print(f"canary start: {canary['version']} is what {where} serves now on {', '.join(runs)}; give "
                  "another --version", file=sys.stderr)
            return 2
        spec.update(ONE_SHOT_CLEARED, stable=serving.stable_field(existing.get("spec", {}).get("stable") or {}))
        # Refuse locally what the controller would refuse, with the same messages.
        parse_release({**existing, "spec": merge_patch(existing.get("spec") or {}, spec)})
    api.patch(RELEASES, args.namespace, args.release, {"spec": spec})
    if serving is None:
        print(f"updated {where} (phase {status.phase.value})")
    else:
        print(f"{where} had finished ({status.phase.value}): revision {status.revision + 1} releases "
              f"{canary['version']} beside {serving.described()}")
    return 0


def release_object(args: argparse.Namespace, images: dict[str, str], stable: str, services: list[str]) -> Obj:
    spec: dict[str, Any] = {
        "stack": {"entry": services[0], "services": services},
        "stable": {"version": stable},
        "canary": {"version": new_version(args.version, images, services), "images": images},
    }
    canary: dict[str, Any] = {}
    if args.steps:
        canary["steps"] = [{"weight": w} for w in args.steps]
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
        api = connect(args)
        existing = api.get_or_none(RELEASES, args.namespace, args.release)
        if existing is not None:
            return _update_release(api, args, existing, images)
        # A stack an earlier release changed in part: each service that runs another version keeps its own.
        deployments = stack_deployments(api, args.namespace, services)
        stable, own = running_versions(deployments, services, args.stable_version)
        if stable is None:
            print(f"canary start: no running version of {', '.join(services)} in {args.namespace}; "
                  "give --stable-version", file=sys.stderr)
            return 2
        body = release_object(args, images, stable, services)
        if own:
            body["spec"]["stable"]["versions"] = own
        stable_images = running_images(deployments, services, stable, own)
        if stable_images:  # informational: `canary history` shows what each new image replaced
            body["spec"]["stable"]["images"] = stable_images
        parse_release(body)  # refuse locally what the controller would refuse, with the same messages
        api.create(RELEASES, args.namespace, body)
    except (ValueError, InvalidSpec) as exc:
        print(f"canary start: {exc}", file=sys.stderr)
        return 2
    except PortError as exc:
        print(f"canary start: {exc.reason}", file=sys.stderr)
        return 1
    print(f"created {args.namespace}/{args.release}: {versions_described(stable, own)} -> "
          f"{body['spec']['canary']['version']}")
    return 0


# --------------------------------------------------------------------------------------------------
# canary get | status, list, history: reading releases
# --------------------------------------------------------------------------------------------------
def _get_parser(prog: str = "canary get") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, usage=_LOCAL_USAGE, description="Show a StackRelease: phase, step, "
                                "weights, versions, traffic per version, each check's e-value against its threshold, "
                                "decisions.")
    _release_args(p)
    p.add_argument("-w", "--watch", action="store_true",
                   help="then print each change (phase, step, decision) until it finishes (Ctrl-C stops)")
    p.add_argument("--json", action="store_true", help="the status as JSON")
    p.add_argument("--max-seconds", type=flags.number(0, above=True), default=24 * 3600.0, help=argparse.SUPPRESS)
    connection_args(p)
    _local_args(p)
    return p


# The commands on one release take a local release's --workdir DIR instead of RELEASE: `canary` hands those to
# the local mode before these parsers see them (controller.cli.main), so they are here for the help only.
_LOCAL_USAGE = "%(prog)s RELEASE [-n NAMESPACE] [options]\n       %(prog)s --workdir DIR [options]"


def _release_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("release", help="the StackRelease's name")
    p.add_argument("-n", "--namespace", default="default", help="its namespace (default: default)")


def _local_args(p: argparse.ArgumentParser) -> None:
    local = p.add_argument_group("a local release (canary run --local)")
    local.add_argument("--workdir", metavar="DIR", help="instead of RELEASE: the release in this work directory "
                       "(handled by the local mode; -n and the Kubernetes flags do not apply)")


def _parsed(p: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """The arguments of a command on a cluster's release; `--workdir` never gets here from `canary` (above)."""
    args = p.parse_args(list(argv))
    if args.workdir is not None:
        p.error(f"--workdir {args.workdir}: a local release, for `{p.prog} --workdir DIR` (the local mode)")
    return args


def render_status(obj: Obj, now: float, as_json: bool = False) -> str:
    status = ReleaseStatus.from_storage(obj.get("status"))
    if as_json:
        return json.dumps(status.for_storage(), sort_keys=True)
    try:
        spec = parse_release(obj)
    except InvalidSpec as exc:
        return f"{obj['metadata']['name']}: {status.phase.value}  invalid spec: {exc}"
    return "\n".join(panel(spec, status, now))


def get_main(argv: Sequence[str], prog: str = "canary get") -> int:
    args = _parsed(_get_parser(prog), argv)
    try:
        api = connect(args)
        obj = api.get_or_none(RELEASES, args.namespace, args.release)
        if obj is None:
            print(f"{prog}: no StackRelease {args.namespace}/{args.release}", file=sys.stderr)
            return 1
        print(render_status(obj, time.time(), args.json), flush=True)
        if args.watch:
            follow(api, args.namespace, args.release, obj, args.json, args.max_seconds)
    except PortError as exc:
        print(f"{prog}: {exc.reason}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


def status_main(argv: Sequence[str]) -> int:
    """`canary status`: the same as `canary get`."""
    return get_main(argv, prog="canary status")


def follow(api: KubeApi, namespace: str, name: str, obj: Obj, as_json: bool = False,
           max_seconds: float = 24 * 3600.0) -> None:
    """Print each change of the release (one line per phase/step change, each decision with its numbers)
    until it finishes; a watch, resumed when it ends. The final panel closes it."""
    deadline = time.monotonic() + max_seconds
    rv = obj["metadata"]["resourceVersion"]
    followed = False
    while not _final(obj) and time.monotonic() < deadline:
        followed = True
        for event in api.watch(RELEASES, namespace, rv, timeout_seconds=60):
            changed = event.get("object") or {}
            rv = changed.get("metadata", {}).get("resourceVersion", rv)
            if changed.get("metadata", {}).get("name") != name or event.get("type") == "BOOKMARK":
                continue
            obj = _print_change(obj, changed, as_json)
            if _final(obj):
                break
    if followed and not as_json and _final(obj):
        print(render_status(obj, time.time()), flush=True)


def _final(obj: Obj) -> bool:
    return ReleaseStatus.from_storage(obj.get("status")).phase.final and not _restart_pending(obj)


def _restart_pending(obj: Obj) -> bool:
    """A spec change the controller has not looked at yet (a retry or undo just sent): not final yet."""
    observed = (obj.get("status") or {}).get("observedGeneration", 0)
    return bool(observed) and observed != obj.get("metadata", {}).get("generation", observed)


def _print_change(old: Obj, new: Obj, as_json: bool) -> Obj:
    before = ReleaseStatus.from_storage(old.get("status"))
    after = ReleaseStatus.from_storage(new.get("status"))
    if as_json:
        if after != before:
            print(json.dumps(after.for_storage(), sort_keys=True), flush=True)
        return new
    try:
        spec = parse_release(new)
    except InvalidSpec as exc:
        print(f"{new['metadata']['name']}: invalid spec: {exc}", flush=True)
        return new
    for line in progress_lines(spec, before, after, time.time()):
        print(line, flush=True)
    return new


def _list_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="canary list", description="List StackReleases.")
    where = p.add_mutually_exclusive_group()
    where.add_argument("-n", "--namespace", default="default", help="the releases of this namespace (default: default)")
    where.add_argument("-A", "--all-namespaces", action="store_true", help="the releases of every namespace")
    connection_args(p)
    return p


def list_main(argv: Sequence[str]) -> int:
    args = _list_parser().parse_args(list(argv))
    namespace = None if args.all_namespaces else args.namespace
    try:
        items = connect(args).list(RELEASES, namespace).get("items", [])
    except PortError as exc:
        print(f"canary list: {exc.reason}", file=sys.stderr)
        return 1
    if not items:
        print(f"no StackReleases in {namespace or 'any namespace'}")
        return 0
    now = time.time()
    rows = [list_row(o["metadata"]["name"], o["metadata"].get("namespace", ""), _spec_or_none(o),
                     ReleaseStatus.from_storage(o.get("status")), _age(o, now))
            for o in sorted(items, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))]
    print("\n".join(table(LIST_HEADER, rows)))
    return 0


def _spec_or_none(obj: Obj) -> ReleaseSpec | None:
    try:
        return parse_release(obj)
    except InvalidSpec:
        return None


def _age(obj: Obj, now: float) -> float | None:
    created = obj.get("metadata", {}).get("creationTimestamp")
    try:
        return now - datetime.fromisoformat(str(created).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _history_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="canary history", usage=_LOCAL_USAGE, description="A release's revisions "
                                "and attempts: versions, images (model versions), outcomes, times, time to decision.")
    _release_args(p)
    p.add_argument("--json", action="store_true", help="the revisions as JSON")
    connection_args(p)
    _local_args(p)
    return p


def history_main(argv: Sequence[str]) -> int:
    args = _parsed(_history_parser(), argv)
    try:
        obj = connect(args).get_or_none(RELEASES, args.namespace, args.release)
    except PortError as exc:
        print(f"canary history: {exc.reason}", file=sys.stderr)
        return 1
    if obj is None:
        print(f"canary history: no StackRelease {args.namespace}/{args.release}", file=sys.stderr)
        return 1
    print(render_history(ReleaseStatus.from_storage(obj.get("status")), args.json))
    return 0


# --------------------------------------------------------------------------------------------------
# canary pause | resume | promote [--full] | abort | retry | undo | approve: a merge patch of the spec
# --------------------------------------------------------------------------------------------------
def _operate_parser(command: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"canary {command}", usage=_LOCAL_USAGE, description=OPERATE_HELP[command])
    _release_args(p)
    if command == "promote":
        p.add_argument("--full", action="store_true", help="promote now: skip every remaining step and its analysis")
    p.add_argument("-w", "--watch", action="store_true", help="then follow the release until it finishes")
    p.add_argument("--max-seconds", type=flags.number(0, above=True), default=24 * 3600.0, help=argparse.SUPPRESS)
    connection_args(p)
    _local_args(p)
    return p


OPERATE_HELP = {
    "pause": "Hold a release at its current step.",
    "resume": "Go on after a pause.",
    "promote": "Approve a manual gate, resume a pause, or skip the current step's analysis (--full: promote now).",
    "approve": "Approve promotion at a manual gate.",
    "abort": "Roll back now.",
    "retry": "Run a release that rolled back, was aborted or failed again, from the first step.",
    "undo": "A finished release: release the previous successful version again, through the canary steps.",
}


def operate_main(command: str, argv: Sequence[str]) -> int:
    """Read the release, plan the command against its phase, and send the spec as a merge patch carrying
    the resourceVersion read (a release that changed meanwhile is read and planned again)."""
    args = _parsed(_operate_parser(command), argv)
    where = f"{args.namespace}/{args.release}"
    try:
        api = connect(args)
        for _ in range(5):
            obj = api.get_or_none(RELEASES, args.namespace, args.release)
            if obj is None:
                print(f"canary {command}: no StackRelease {where}", file=sys.stderr)
                return 1
            status = ReleaseStatus.from_storage(obj.get("status"))
            # An undo starts from what the stack runs now, which a later release of it may have changed.
            running = stack_running(api, args.namespace, obj.get("spec") or {}) if command == "undo" else None
            outcome = plan(command, obj, status, getattr(args, "full", False), running)
            if isinstance(outcome, Refused):
                print(f"canary {command}: {outcome.message}", file=sys.stderr)
                return 2
            if outcome.patch:
                try:
                    obj = api.patch(RELEASES, args.namespace, args.release, {
                        "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                        "spec": dict(outcome.patch)})
                except ApiConflict:
                    continue
            print(f"{where}: {outcome.message}", flush=True)
            if args.watch:
                follow(api, args.namespace, args.release, obj, max_seconds=args.max_seconds)
            return 0
        print(f"canary {command}: {where} kept changing; try again", file=sys.stderr)
        return 1
    except PortError as exc:
        print(f"canary {command}: {exc.reason}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
