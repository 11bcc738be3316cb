"""The controller's real API calls against the RBAC the manifests grant: every call it makes is granted,
and every grant is used (or listed here with the reason it is needed but not exercised here)."""

from __future__ import annotations

from controller.core.status import Phase
from tests.support.fakes import VersionModel
from tests.support.kmock_server import RunningEmulator
from tests.support.kube_world import NAMESPACE, KubeWorld
from tests.support.rbac import CONTROLLER_NS, EXPECTED_PERMISSIONS, STACK_NS

# Granted but not exercised by the releases below, each with why it is granted.
GRANTED_NOT_EXERCISED = {
    # The run loop's list+watch (tests/adapters/kubernetes/test_loop.py drives it through a real process).
    ("cluster", "stackcanary.dev", "stackreleases", "watch"),
    # Needed where the OwnerReferencesPermissionEnforcement admission plugin is on (blockOwnerDeletion).
    ("cluster", "stackcanary.dev", "stackreleases/finalizers", "update"),
    # The canary's copy of a stable HPA (tests/adapters/kubernetes/test_loop.py has the HPA case).
    (STACK_NS, "autoscaling", "horizontalpodautoscalers", "get"),
    (STACK_NS, "autoscaling", "horizontalpodautoscalers", "create"),
}


def normalise(verb: tuple[str, str, str, str]) -> tuple[str, str, str, str]:
    ns, group, resource, v = verb
    if resource.startswith("stackreleases"):
        ns = "cluster"  # granted by the ClusterRole, whichever namespace the release is in
    elif ns == NAMESPACE:
        ns = STACK_NS
    return ns, group, resource, v


def test_the_controller_uses_exactly_what_rbac_grants(emulator: RunningEmulator) -> None:
    world = KubeWorld(emulator)
    world.seed_stack()
    world.create_release()
    emulator.emulator.recording = True
    leader = world.controller("replica-a", elector=True)
    assert world.drive(leader).phase is Phase.SUCCEEDED
    emulator.emulator.recording = False

    bad = KubeWorld(emulator, models={"v3": VersionModel(error_rate=0.2)})
    bad.create_release(name="search-v3", stable={"version": "v2"}, canary={"version": "v3", "images": {
        s: f"registry.example/{s}:3.0" for s in ("master-search", "ml-infer", "ml-search", "keyword",
                                                   "text-search")}})
    emulator.emulator.recording = True
    assert bad.drive(bad.controller("replica-b"), name="search-v3").phase is Phase.ROLLED_BACK
    emulator.emulator.recording = False

    used = {normalise(v) for v in emulator.emulator.verbs}
    granted = set(EXPECTED_PERMISSIONS)
    assert used - granted == set(), "the controller calls the API beyond its RBAC"
    assert granted - used - GRANTED_NOT_EXERCISED == set(), "granted but never used: drop it or list why"
    assert granted >= GRANTED_NOT_EXERCISED
    assert any(ns == CONTROLLER_NS and r == "leases" for ns, _, r, _ in used)
