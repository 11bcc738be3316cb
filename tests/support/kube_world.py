"""A cluster for the Kubernetes adapter tests: the emulator, a seeded search stack, controllers to drive.

`KubeWorld` owns one emulator (started by the caller's fixture, stopped in its teardown), seeds the
stable Deployments `<service>-v1`, creates StackReleases through the official client, and builds
`Controller`s on a fake clock with `RouteMetrics` (tests.support.fakes.FakeMetrics, reading the routes in effect
from the Istio router over the API, so a rollback really stops the canary's traffic).

By default a Deployment is ready the instant it is written. A test that wants a cluster that takes its time
opts in with `KubeWorld(emulator, cluster=ClusterModel(...))` (`tests.support.cluster`): pods start with
delays, some never get ready, HPAs scale; `seed_stack(replicas=10, hpa_on=("ml-infer",))` then waits until
the stable stack is running, and `drive` plays the cluster's events at their own moments (it never jumps
the clock past one).
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from analysis.observations import MetricsQuery, WindowCounts
from controller.adapters.kubernetes.client import DEPLOYMENTS, HPAS, RELEASES, KubeApi, Obj
from controller.adapters.kubernetes.in_flight import RequestsInFlight
from controller.adapters.kubernetes.leader import LeaseElector
from controller.adapters.kubernetes.routing import IstioRouter
from controller.adapters.kubernetes.running import Controller, ControllerConfig
from controller.core.status import Phase, ReleaseStatus
from tests.support.cluster import ClusterModel
from tests.support.fakes import FakeClock, FakeMetrics, VersionModel
from tests.support.istio_schema import istio_errors
from tests.support.k8s_schema import core_errors, custom_resource_errors
from tests.support.kmock_server import RunningEmulator
from tests.support.paths import REPO

SERVICES = ("master-search", "ml-infer", "ml-search", "keyword", "text-search")
NAMESPACE = "search"
CRD_FILE = REPO / "manifests" / "crd" / "stackreleases.yaml"


class RouteMetrics(FakeMetrics):
    """FakeMetrics whose traffic follows the routes the Istio router reads back from the API server."""

    def __init__(self, api: KubeApi, **kwargs: Any) -> None:
        super().__init__(router=None, **kwargs)  # type: ignore[arg-type]
        self.api = api

    def window(self, query: MetricsQuery, start: float, end: float) -> WindowCounts:
        self.router = IstioRouter(self.api, query.namespace, ())  # type: ignore[assignment]
        return super().window(query, start, end)


def stable_deployment(service: str, version: str = "v1", replicas: int = 2, namespace: str = NAMESPACE) -> Obj:
    labels = {"app": service, "version": version}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": f"{service}-{version}", "namespace": namespace, "labels": dict(labels)},
        "spec": {
            "replicas": replicas,
            "progressDeadlineSeconds": 120,
            "selector": {"matchLabels": dict(labels)},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {"containers": [{
                    "name": service, "image": f"registry.example/{service}:1.0",
                    "ports": [{"containerPort": 8000}],
                    "env": [{"name": "SERVICE_VERSION", "value": version}],
                }]},
            },
        },
    }


def autoscaler(service: str, version: str = "v1", lowest: int = 1, highest: int = 10,
               namespace: str = NAMESPACE) -> Obj:
    """An autoscaling/v2 HPA named like the service, on the CPU of `<service>-<version>`."""
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": service, "namespace": namespace},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"{service}-{version}"},
                 "minReplicas": lowest, "maxReplicas": highest,
                 "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                     "type": "Utilization", "averageUtilization": 70}}}]},
    }


def release_body(name: str = "search-v2", namespace: str = NAMESPACE, **spec_overrides: Any) -> Obj:
    spec: dict[str, Any] = {
        "stack": {"entry": "master-search", "services": list(SERVICES)},
        "stable": {"version": "v1"},
        "canary": {"version": "v2", "images": {s: f"registry.example/{s}:2.0" for s in SERVICES}},
        "strategy": {"canary": {"steps": [{"weight": 10}, {"weight": 25}, {"weight": 50}],
                                "interval": "60s", "minCanaryRequests": 100}},
        # The lifecycle tests are about the controller, not statistics: a release promotes on "no alarm"
        # (the safety margins take minutes more of this traffic; tests of the margins set their own).
        "analysis": {"alpha": 0.05, "nonInferiorityMargin": None, "absoluteNonInferiorityMargin": None,
                     "latencyNonInferiorityMargin": None},
    }
    spec.update(spec_overrides)
    return {"apiVersion": "stackcanary.dev/v1alpha1", "kind": "StackRelease",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


class KubeWorld:
    def __init__(self, emulator: RunningEmulator, models: dict[str, VersionModel] | None = None,
                 rps: float = 50.0, cluster: ClusterModel | None = None) -> None:
        self.emulator = emulator
        self.api = KubeApi.for_url(emulator.url)
        self.clock = FakeClock()
        self.metrics = RouteMetrics(self.api, rps=rps, models=models or {})
        self.cluster = cluster.attach(emulator, self.clock) if cluster is not None else None

    def seed_stack(self, namespace: str = NAMESPACE, replicas: int = 2, hpa_on: tuple[str, ...] = ()) -> None:
        """The stable Deployments `<service>-v1`; for the services in `hpa_on` an HPA (between half and
        twice `replicas`). With a cluster model, the clock then runs until every stable pod is ready."""
        for service in SERVICES:
            self.api.create(DEPLOYMENTS, namespace, stable_deployment(service, namespace=namespace,
                                                                      replicas=replicas))
        for service in hpa_on:
            self.api.create(HPAS, namespace, autoscaler(service, lowest=max(1, replicas // 2), highest=2 * replicas,
                                                        namespace=namespace))
        if self.cluster is not None:
            self.pass_time(600, settle=True)

    def pass_time(self, seconds: float, settle: bool = False) -> None:
        """Move the clock `seconds` on, stopping at every event of the cluster model to play it (with
        `settle`: stop early, once nothing more will happen by itself)."""
        end = self.clock.t + seconds
        while self.cluster is not None and (event := self.cluster.next_event()) is not None and event <= end:
            self.clock.t = max(self.clock.t, event)
            self.cluster.advance(self.clock.t)
        if not settle or self.cluster is None:
            self.clock.t = max(self.clock.t, end)
        if self.cluster is not None:
            self.cluster.advance(self.clock.t)

    def create_release(self, **kwargs: Any) -> Obj:
        body = release_body(**kwargs)
        return self.api.create(RELEASES, body["metadata"]["namespace"], body)

    def patch_spec(self, spec: Obj, name: str = "search-v2", namespace: str = NAMESPACE) -> None:
        self.api.patch(RELEASES, namespace, name, {"spec": spec})

    def controller(self, identity: str = "replica-a", elector: bool = False,
                   in_flight: RequestsInFlight | None = None, **config: Any) -> Controller:
        cfg = ControllerConfig(identity=identity, **config)
        lease = LeaseElector(self.api, "stack-canary-system", identity, self.clock, lease_duration=15,
                             renew_deadline=10, retry_period=2) if elector else None
        return Controller(self.api, cfg, self.metrics, self.clock, lease, in_flight=in_flight)

    def status(self, name: str = "search-v2", namespace: str = NAMESPACE) -> ReleaseStatus:
        return ReleaseStatus.from_storage(self.api.get(RELEASES, namespace, name).get("status"))

    def drive(self, controller: Controller, until: Phase | None = None, rounds: int | None = None,
              name: str = "search-v2", relist: bool = True) -> ReleaseStatus:
        """Tick until the release reaches `until` (or any final phase), jumping the fake clock ahead.

        With `until`, one tick per round: a watch thread running beside the driver queues the release again
        after each of its writes, so ticking all that is due could carry it past `until` in one round.
        With a cluster model, each round first plays the cluster up to now, and no jump goes past the
        cluster's next event (a pod getting ready, a deadline, an HPA sync): that event is a round of its
        own (default rounds: 400, or 4000 with a cluster model)."""
        if relist:
            controller.relist()
        for _ in range(rounds if rounds is not None else 400 if self.cluster is None else 4000):
            if self.cluster is not None:
                self.cluster.advance(self.clock.t)
            if controller.elector is not None:
                controller.elect()  # the election thread's part: renew the lease
            controller.run_due(limit=1 if until is not None else None)
            status = self.status(name)
            if (until is not None and status.phase is until) or (until is None and status.phase.final):
                return status
            nxt = controller.queue.next_due()
            if nxt is None:
                return status
            if controller.elector is not None:
                nxt = min(nxt, self.clock.t + controller.elector.retry_period)
            if self.cluster is not None and (event := self.cluster.next_event()) is not None:
                nxt = min(nxt, event)
            self.clock.t = max(self.clock.t, nxt)
        return self.status(name)

    def objects(self, plural: str, namespace: str = NAMESPACE) -> list[Obj]:
        return copy.deepcopy(self.emulator.objects(plural, namespace))

    def assert_valid_writes(self) -> None:
        """Every object in the emulator is valid: Istio kinds against Istio's CRDs (strict), core kinds
        with kubernetes-validate (strict), releases against the project's CRD (when it is there)."""
        for plural in ("virtualservices", "destinationrules"):
            for obj in self.objects(plural):
                assert istio_errors(_as_written(obj), strict=True) == [], obj["metadata"]["name"]
        for plural in ("deployments", "events", "leases", "horizontalpodautoscalers"):
            for obj in self.objects(plural) + self.objects(plural, "stack-canary-system"):
                assert core_errors(_as_written(obj)) == [], (plural, obj["metadata"].get("name"))
        if CRD_FILE.exists():
            crd = next(d for d in yaml.safe_load_all(CRD_FILE.read_text()) if d)
            for obj in self.objects("stackreleases"):
                assert custom_resource_errors(_as_written(obj), crd) == [], obj["metadata"]["name"]


def cluster_world(emulator: RunningEmulator, replicas: int = 4, seed: int = 14, hpa_on: tuple[str, ...] = ("ml-infer",),
                  start_delay: tuple[float, float] = (2.0, 10.0), **kwargs: Any) -> KubeWorld:
    """A `KubeWorld` on a `ClusterModel` (pods ready after seeded `start_delay` seconds of the fake clock) with
    its stable stack seeded at `replicas` pods each, an HPA on the services in `hpa_on`, and every pod ready."""
    world = KubeWorld(emulator, cluster=ClusterModel(seed=seed, start_delay=start_delay), **kwargs)
    world.seed_stack(replicas=replicas, hpa_on=hpa_on)
    return world


def _as_written(obj: Obj) -> Obj:
    """The object without what the emulator's server side added (and a real one would)."""
    meta = {k: v for k, v in obj["metadata"].items() if k not in ("uid", "resourceVersion", "creationTimestamp")}
    return {**obj, "metadata": meta}
