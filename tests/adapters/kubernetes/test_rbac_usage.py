"""The controller's real API calls against the RBAC the manifests grant: every call it makes is granted,
and every grant is used (or listed here with the reason it is needed but not exercised here).

The emulator records every request while `recording`, whatever its kind (also kinds it does not serve, such
as secrets, pods and configmaps, their subresources and non-resource URLs), so a new call of the controller
to anything RBAC does not grant makes the comparison fail: `test_a_call_to_an_ungranted_kind_is_reported`
proves it."""

from __future__ import annotations

import httpx

from controller.adapters.kubernetes.client import HPAS
from controller.core.status import Phase
from tests.support.fakes import VersionModel
from tests.support.kmock_server import RunningEmulator
from tests.support.kube_world import NAMESPACE, KubeWorld, cluster_world
from tests.support.rbac import CONTROLLER_NS, EXPECTED_PERMISSIONS, STACK_NS

# Granted but not exercised by the releases below, each with why it is granted.
GRANTED_NOT_EXERCISED = {
    # The run loop's list+watch (tests/adapters/kubernetes/test_loop.py drives it through a real process).
    ("cluster", "stackcanary.dev", "stackreleases", "watch"),
    # Needed where the OwnerReferencesPermissionEnforcement admission plugin is on (blockOwnerDeletion).
    ("cluster", "stackcanary.dev", "stackreleases/finalizers", "update"),
    # A hook's or notifier's `secretRef` (one named Secret); the releases below have no hooks
    # (tests/integration/test_secrets.py has them).
    (STACK_NS, "", "secrets", "get"),
}


def normalise(verb: tuple[str, str, str, str]) -> tuple[str, str, str, str]:
    ns, group, resource, v = verb
    if resource.startswith("stackreleases"):
        ns = "cluster"  # granted by the ClusterRole, whichever namespace the release is in
    elif ns == NAMESPACE:
        ns = STACK_NS
    return ns, group, resource, v


def rbac_gaps(verbs: set[tuple[str, str, str, str]]) -> tuple[set[tuple[str, str, str, str]],
                                                               set[tuple[str, str, str, str]]]:
    """(used beyond what RBAC grants, granted but neither used nor listed as not exercised)."""
    used = {normalise(v) for v in verbs}
    granted = set(EXPECTED_PERMISSIONS)
    return used - granted, granted - used - GRANTED_NOT_EXERCISED


def user_hpa(target: str) -> dict[str, object]:
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "ml-infer"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
                     "minReplicas": 2, "maxReplicas": 6}}


def test_the_controller_uses_exactly_what_rbac_grants(emulator: RunningEmulator) -> None:
    """Two releases of a stack whose ml-infer is autoscaled: the HPA calls (list, the canary's copy created,
    its minimum patched, deleted; the user's HPA retargeted) are all exercised."""
    world = cluster_world(emulator, hpa_on=())  # 4 pods per service, new pods ready after 2-10 s
    world.api.create(HPAS, NAMESPACE, user_hpa("ml-infer-v1"))
    world.create_release()
    emulator.emulator.recording = True
    leader = world.controller("replica-a", elector=True)
    assert world.drive(leader).phase is Phase.SUCCEEDED
    emulator.emulator.recording = False

    bad = KubeWorld(emulator, models={"v3": VersionModel(error_rate=0.2)})
    bad.clock, bad.cluster = world.clock, world.cluster  # the same cluster, on its clock
    bad.create_release(name="search-v3", stable={"version": "v2"}, canary={"version": "v3", "images": {
        s: f"registry.example/{s}:3.0" for s in ("master-search", "ml-infer", "ml-search", "keyword",
                                                   "text-search")}})
    emulator.emulator.recording = True
    assert bad.drive(bad.controller("replica-b"), name="search-v3").phase is Phase.ROLLED_BACK
    emulator.emulator.recording = False
    # The user's HPA follows v2, which serves; no copy is left behind by either release.
    hpas = {h["metadata"]["name"]: h["spec"]["scaleTargetRef"]["name"] for h in world.objects(HPAS.plural)}
    assert hpas == {"ml-infer": "ml-infer-v2"}

    used = {normalise(v) for v in emulator.emulator.verbs}
    beyond, unused = rbac_gaps(emulator.emulator.verbs)
    assert beyond == set(), "the controller calls the API beyond its RBAC"
    assert unused == set(), "granted but never used: drop it or list why"
    assert set(EXPECTED_PERMISSIONS) >= GRANTED_NOT_EXERCISED
    assert any(ns == CONTROLLER_NS and r == "leases" for ns, _, r, _ in used)


def test_a_call_to_an_ungranted_kind_is_reported(emulator: RunningEmulator) -> None:
    """Requests for kinds the emulator does not model, as a controller that started calling them would
    send: each is recorded with its verb, namespace and subresource, and the comparison reports it."""
    calls = [("GET", f"/api/v1/namespaces/{NAMESPACE}/configmaps"),
             ("GET", f"/api/v1/namespaces/{NAMESPACE}/secrets"),
             ("GET", "/api/v1/namespaces/kube-system/secrets/admin-token"),
             ("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/web-0/log"),
             ("POST", f"/api/v1/namespaces/{NAMESPACE}/pods/web-0/eviction"),
             ("DELETE", f"/api/v1/namespaces/{NAMESPACE}/configmaps/settings"),
             ("GET", "/version")]
    emulator.emulator.recording = True
    with httpx.Client(base_url=emulator.url, timeout=5) as client:
        for method, path in calls:
            client.request(method, path, json={} if method == "POST" else None)  # answered or not: asked
    emulator.emulator.recording = False
    expected = {(STACK_NS, "", "configmaps", "list"), (STACK_NS, "", "secrets", "list"),
                ("kube-system", "", "secrets", "get"), (STACK_NS, "", "pods/log", "get"),
                (STACK_NS, "", "pods/eviction", "create"), (STACK_NS, "", "configmaps", "delete"),
                ("nonResourceURL", "", "/version", "get")}
    beyond, _ = rbac_gaps(emulator.emulator.verbs)
    assert beyond == expected, beyond ^ expected
