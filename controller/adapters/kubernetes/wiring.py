"""Wiring: the reconciler's ports for one release, built over Kubernetes and the shared sources.

For each tick of a release: its Deployments (`DeploymentWorkloads`, sized through the tick's `WeightBox`),
its Istio routes (`IstioRouter`), its Kubernetes Events plus the chat/webhook notifier if any
(`EventNotifier`, `MultiNotifier`), and the sources every release shares: the analysis metrics, the A/B
experiments' business metrics (None: an experiment's looks are errors, see docs/experiments.md), the
release hooks' caller, and the sidecars' requests in flight per subset (through `SubsetInFlight`, for the
drains). The hooks default, here at the edge and never in the reconciler, to the cluster's rules: in-cluster
Services only, keys from the release namespace's Secrets (`KubeSecrets`), no files.
"""

from __future__ import annotations

from controller.adapters.http.hooks import HttpHooks
from controller.adapters.http.notifiers import MultiNotifier
from controller.adapters.http.webhook import UrlPolicy, WebhookClient
from controller.adapters.kubernetes.client import KubeApi, Obj
from controller.adapters.kubernetes.events import EventNotifier
from controller.adapters.kubernetes.in_flight import RequestsInFlight, SubsetInFlight
from controller.adapters.kubernetes.routing import IstioRouter
from controller.adapters.kubernetes.secrets import KubeSecrets
from controller.adapters.kubernetes.workloads import DeploymentWorkloads, ReleaseRef, ReplicaPolicy, WeightBox
from controller.adapters.shadow.client import HttpShadowPairs
from controller.core.spec.hooks import HookRules
from controller.core.spec.release import InvalidSpec, ReleaseSpec, parse_release
from controller.ports import BusinessMetrics, Clock, History, Hooks, Metrics, Notifier, Peers
from controller.reconciler import Ports


def spec_or_none(obj: Obj) -> ReleaseSpec | None:
    """The release's spec, or None when it does not parse (then it owns no services to touch)."""
    try:
        return parse_release(obj)
    except InvalidSpec:
        return None


class ReleaseWiring:
    """What every release's ports share (the API, the clock, the sources), and how one release's are built."""

    def __init__(self, api: KubeApi, clock: Clock, identity: str, replica_policy: ReplicaPolicy,
                 metrics: Metrics, business: BusinessMetrics | None = None, notifier: Notifier | None = None,
                 hooks: Hooks | None = None, peers: Peers | None = None, metrics_delay: float = 0.0,
                 history: History | None = None, in_flight: RequestsInFlight | None = None) -> None:
        self.api = api
        self.clock = clock
        # The Events' reportingInstance: which replica decided.
        self.identity = identity
        self.replica_policy = replica_policy
        self.metrics = metrics
        self.business = business
        # Chat/webhook notifications besides the release's Kubernetes Events.
        self.notifier = notifier
        # The other releases of a namespace (from the controller's cache), for who owns which service.
        self.peers = peers
        self.metrics_delay = metrics_delay
        # The source of the stable version's metrics before a release (Prometheus keeps them); None: none.
        self.history = history
        # The sidecars' requests in flight per subset, for the drains (None: `drainTime` alone).
        self.in_flight = in_flight
        self.hooks: Hooks = hooks or HttpHooks(WebhookClient(policy=UrlPolicy.in_cluster()), HookRules.cluster(),
                                               KubeSecrets(api))
        # A shadow phase's comparator: the Service its release names, in the release's namespace.
        self.shadow = HttpShadowPairs()

    def router(self, namespace: str, services: tuple[str, ...]) -> IstioRouter:
        return IstioRouter(self.api, namespace, services)

    def events(self, obj: Obj) -> EventNotifier:
        """The release's Kubernetes Events alone (the finalizer's notice goes only there)."""
        return EventNotifier(self.api, obj, self.clock, self.identity)

    def notifier_for(self, obj: Obj) -> Notifier:
        """The release's Events, and the chat/webhook notifier if any."""
        events: Notifier = self.events(obj)
        return events if self.notifier is None else MultiNotifier([events, self.notifier])

    def ports_for(self, obj: Obj, spec: ReleaseSpec | None, box: WeightBox) -> Ports:
        ref = ReleaseRef.of(obj)
        services = spec.stack.services if spec else ()
        workloads = DeploymentWorkloads(self.api, ref, services, spec.stable.version if spec else None,
                                        spec.canary.version if spec else None, self.replica_policy, box,
                                        dict(spec.stable.versions) if spec else {})
        notifier = self.notifier_for(obj)
        router = self.router(ref.namespace, services)
        in_flight = SubsetInFlight(router, self.in_flight) if self.in_flight is not None else None
        return Ports(workloads, router, self.metrics, self.clock, notifier,
                     business=self.business, hooks=self.hooks, peers=self.peers, metrics_delay=self.metrics_delay,
                     shadow=self.shadow, history=self.history, in_flight=in_flight)
