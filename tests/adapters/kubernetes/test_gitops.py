"""A GitOps tool (Argo CD, Flux) syncing the repository's manifests beside the controller.

The stack is created from `kubectl kustomize manifests/` as a GitOps tool creates it (its tracking label
and annotation added), then re-applied the way self-heal does (create-or-replace of every object in git)
and pruned the way Argo CD prunes (a tracked top-level object not in git is deleted) at several moments of
a release. No route may change and no serving version may go to zero; the release still finishes.
The objects the controller never reads (Services, RBAC, the CRD, the controller's own Deployment) are left
out: re-applying them cannot move traffic.
"""

from __future__ import annotations

import subprocess

import yaml

from controller.adapters.kubernetes.client import DEPLOYMENTS, KubeApi, Obj
from controller.adapters.kubernetes.workloads import DeploymentWorkloads, ReleaseRef
from controller.core.status import Phase
from tests.support.kmock_server import RunningEmulator
from tests.support.kube_world import NAMESPACE, SERVICES, KubeWorld, stable_deployment
from tests.support.paths import REPO
from tests.support.tools import require_tool

APP = "search-stack"
TRACKING = {"labels": {"app.kubernetes.io/instance": APP},
            "annotations": {"argocd.argoproj.io/tracking-id": f"{APP}:apps/Deployment:{NAMESPACE}/x"}}


def git_objects() -> list[Obj]:
    """The stack's Deployments in git, as the GitOps tool applies them (with its tracking)."""
    kubectl = require_tool("kubectl", install="apt-get install kubectl")
    out = subprocess.run([kubectl, "kustomize", str(REPO / "manifests")], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    objects = [d for d in yaml.safe_load_all(out.stdout) if d and d["kind"] == "Deployment"
               and d["metadata"].get("namespace") == NAMESPACE]
    assert {o["metadata"]["name"] for o in objects} == {f"{s}-v1" for s in SERVICES}
    for obj in objects:
        meta = obj["metadata"]
        meta["labels"] = {**meta.get("labels", {}), **TRACKING["labels"]}
        meta["annotations"] = {**meta.get("annotations", {}), **TRACKING["annotations"]}
    return objects


def sync(api: KubeApi, objects: list[Obj]) -> None:
    """Self-heal: every object in git created, or replaced whole (what git says wins), then prune."""
    for obj in objects:
        name = obj["metadata"]["name"]
        if api.get_or_none(DEPLOYMENTS, NAMESPACE, name) is None:
            api.create(DEPLOYMENTS, NAMESPACE, obj)
        else:
            api.replace(DEPLOYMENTS, NAMESPACE, name, obj)
    in_git = {o["metadata"]["name"] for o in objects}
    for live in api.list(DEPLOYMENTS, NAMESPACE).get("items", []):
        meta = live["metadata"]
        tracked = (meta.get("labels") or {}).get("app.kubernetes.io/instance") == APP or \
            "argocd.argoproj.io/tracking-id" in (meta.get("annotations") or {})
        # Argo CD prunes tracked top-level objects only: one with an owner is a child of that owner.
        if tracked and meta["name"] not in in_git and not meta.get("ownerReferences"):
            api.delete(DEPLOYMENTS, NAMESPACE, meta["name"])


def routes(world: KubeWorld) -> list[Obj]:
    """The routing objects as stored (resourceVersion included: any write to them shows)."""
    return [o for plural in ("virtualservices", "destinationrules") for o in world.objects(plural)]


def serving_replicas(world: KubeWorld, version: str) -> dict[str, int]:
    return {d["metadata"]["name"]: d["spec"]["replicas"] for d in world.objects(DEPLOYMENTS.plural)
            if d["metadata"]["name"].endswith(f"-{version}")}


def test_copied_deployments_carry_no_gitops_tracking() -> None:
    stable = stable_deployment("ml-infer")
    tracking = {"app.kubernetes.io/instance": APP, "app.kubernetes.io/managed-by": "Helm",
                "kustomize.toolkit.fluxcd.io/name": "stack", "helm.toolkit.fluxcd.io/name": "stack"}
    notes = {"argocd.argoproj.io/tracking-id": "x", "argocd.argoproj.io/sync-options": "Prune=false",
             "kubectl.kubernetes.io/last-applied-configuration": "{}", "meta.helm.sh/release-name": "stack"}
    stable["metadata"]["labels"].update(tracking, team="search")
    stable["metadata"]["annotations"] = {**notes, "owner": "search-team"}
    stable["spec"]["template"]["metadata"]["labels"].update(tracking)
    stable["spec"]["template"]["metadata"]["annotations"] = {**notes, "prometheus.io/scrape": "true"}
    workloads = DeploymentWorkloads(KubeApi.for_url("http://127.0.0.1:9"), ReleaseRef("r", NAMESPACE, "uid"),
                                    ("ml-infer",), "v1", "v2")
    copy = workloads.canary_from(stable, "ml-infer", "v2", None, 1)
    assert copy["metadata"]["labels"] == {"app": "ml-infer", "version": "v2", "team": "search",
                                          "app.kubernetes.io/managed-by": "stack-canary",
                                          "stack-canary.dev/release": "r"}
    assert copy["metadata"]["annotations"] == {"owner": "search-team"}
    assert copy["spec"]["template"]["metadata"]["labels"] == {"app": "ml-infer", "version": "v2"}
    assert copy["spec"]["template"]["metadata"]["annotations"] == {"prometheus.io/scrape": "true"}

    # A tracking label the stable's selector uses stays on the pods (a Service may select by it too).
    stable["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] = APP
    copy = workloads.canary_from(stable, "ml-infer", "v2", None, 1)
    assert copy["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] == APP
    assert copy["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/instance"] == APP
    assert "app.kubernetes.io/instance" not in copy["metadata"]["labels"]


def test_a_gitops_sync_during_and_after_a_release_moves_no_route(emulator: RunningEmulator) -> None:
    world = KubeWorld(emulator)
    in_git = git_objects()
    sync(world.api, in_git)
    world.create_release()
    controller = world.controller()

    for moment in (Phase.PROGRESSING, Phase.PROMOTING, Phase.SUCCEEDED):
        status = world.drive(controller, until=moment)
        assert status.phase is moment, status.message
        serving = "v2" if moment is Phase.SUCCEEDED else "v1"
        before, replicas_before = routes(world), serving_replicas(world, serving)
        canary_before = serving_replicas(world, "v2")
        sync(world.api, in_git)
        assert routes(world) == before, f"a sync while {moment.value} changed a route"
        assert serving_replicas(world, serving) == replicas_before and all(replicas_before.values())
        assert serving_replicas(world, "v2") == canary_before, "a sync touched the new version"
        # The controller's next ticks see nothing to undo: the routes stay where the release had them.
        world.clock.sleep(0.5)
        controller.resync()
        controller.run_due(limit=1)
        assert all(serving_replicas(world, serving).values())

    assert world.drive(controller).phase is Phase.SUCCEEDED
    plan_stable = {d["spec"]["subsets"][0]["labels"]["version"] for d in world.objects("destinationrules")}
    assert plan_stable == {"v2"}
    assert all(serving_replicas(world, "v2").values())
    for d in world.objects(DEPLOYMENTS.plural):
        if d["metadata"]["name"].endswith("-v2"):
            assert "app.kubernetes.io/instance" not in d["metadata"]["labels"]
            assert not any(k.startswith("argocd.argoproj.io/") for k in d["metadata"].get("annotations") or {})
