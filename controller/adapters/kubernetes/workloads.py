"""The Workloads port on Deployments: a version of a service is the Deployment `<service>-<version>`.

- `ensure_version` creates the new version's Deployment from the stable one's pod template, with the new
  image on the service's container (the container named like the service, else the first one), the labels
  `app: <service>`, `version: <version>` on the pods and in the selector, and an owner reference to the
  StackRelease; later calls only fix replicas/image drift (compare, then patch; no write when equal).
- Replicas: `ReplicaPolicy.fixed` canary pods, or proportional to the canary weight of the stable
  Deployment's replicas (at least 1). While promoting, the weight counts as 100: the new version is
  about to take all traffic.
- HPA (docs/kubernetes.md, Autoscaling): when an autoscaling/v2 HorizontalPodAutoscaler targets the
  stable Deployment, the canary gets a copy targeting the canary Deployment, labelled and owned like the
  canary: the user's `maxReplicas`, metrics and behaviour, and `minReplicas` at the weight's share of the
  user's minimum (at least 1; all of it while promoting), so that the canary has the stable's floor before
  it takes all the traffic. The canary's replicas are then the copy's, except that they are raised to the
  copy's minimum at once (capacity before traffic; an HPA also never scales up from 0).
  Promotion hands autoscaling over: the copy is deleted and the user's HPA is retargeted
  (`scaleTargetRef.name`) to the new version's Deployment, which is the serving one now; an undo is a
  promotion the other way and retargets it back. The user's HPA is otherwise never written; a rolled-back
  canary's copy is deleted with the canary scaled to 0.
- GitOps: the new version's Deployment carries the stable's labels and annotations but not a GitOps
  tool's tracking (`GITOPS_PREFIXES`, `GITOPS_KEYS`), so that Argo CD or Flux neither prunes nor fights a
  Deployment that is not in git; the pods keep a tracking label only when the stable's selector uses it.
- `readiness` reads the Deployment's status: ready when the rollout was observed and every desired replica
  is updated and ready; failed when the `Progressing` condition says `ProgressDeadlineExceeded`.
- `retire` scales a version to 0 (never deletes: the old version stays one scale-up away). Retiring the
  *stable* version means the promotion completed: first the owner reference is removed from the new
  version's Deployments (so that deleting the finished StackRelease does not garbage-collect the version
  that now serves all traffic) and autoscaling is handed over, then the old version is scaled down.

Each instance serves one tick of one release and reads the namespace's Deployments once (one LIST with a
label selector), so a steady-state tick costs one request here, not one per service.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from controller.adapters.kubernetes.client import DEPLOYMENTS, HPAS, RELEASES, KubeApi, Obj
from controller.core.observation import Readiness
from controller.core.spec.release import RELEASE_KIND, version_order
from controller.ports import PermanentError

log = logging.getLogger(__name__)

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_RELEASE = "stack-canary.dev/release"
# On a canary created beside an autoscaled stable version: its replicas belong to its own HPA copy.
ANNOTATION_AUTOSCALED = "stack-canary.dev/autoscaled"
MANAGED_BY = "stack-canary"
# What a GitOps tool tracks its objects by: never carried over to a Deployment that is not in git.
GITOPS_PREFIXES = ("argocd.argoproj.io/", "kustomize.toolkit.fluxcd.io/", "helm.toolkit.fluxcd.io/",
                   "meta.helm.sh/")
LABEL_INSTANCE = "app.kubernetes.io/instance"  # Argo CD's tracking label (its default before v3)
GITOPS_KEYS = frozenset({LABEL_INSTANCE, LABEL_MANAGED_BY, "kubectl.kubernetes.io/last-applied-configuration"})
# The stable's own bookkeeping, not the new version's.
NOT_CARRIED = frozenset({ANNOTATION_AUTOSCALED, LABEL_RELEASE, "deployment.kubernetes.io/revision"})


@dataclass(frozen=True)
class ReplicaPolicy:
    """Canary replicas: `fixed` pods, or (fixed None) the weight's share of the stable replicas, min 1."""

    fixed: int | None = None

    def canary_replicas(self, stable_replicas: int, weight: int) -> int:
        if self.fixed is not None:
            return max(1, self.fixed)
        return max(1, math.ceil(stable_replicas * weight / 100))


@dataclass(frozen=True)
class ReleaseRef:
    """What a Deployment's owner reference and labels need to know about the release."""

    name: str
    namespace: str
    uid: str

    @classmethod
    def of(cls, release: Obj) -> ReleaseRef:
        meta = release.get("metadata", {})
        return cls(meta.get("name", ""), meta.get("namespace", ""), meta.get("uid", ""))

    def owner_reference(self) -> Obj:
        return {"apiVersion": RELEASES.api_version, "kind": RELEASE_KIND, "name": self.name, "uid": self.uid,
                "controller": True, "blockOwnerDeletion": True}


@dataclass
class WeightBox:
    """The canary weight the workloads should be sized for; the store updates it before actions run."""

    weight: int = 0


def deployment_name(service: str, version: str) -> str:
    return f"{service}-{version}"


@dataclass
class DeploymentWorkloads:
    api: KubeApi
    release: ReleaseRef
    services: tuple[str, ...]
    stable_version: str | None
    canary_version: str | None
    policy: ReplicaPolicy = field(default_factory=ReplicaPolicy)
    weight: WeightBox = field(default_factory=WeightBox)
    # `spec.stable.versions`: services whose stable version is not `stable_version`.
    stable_versions: Mapping[str, str] = field(default_factory=dict)
    _snapshot: dict[str, Obj] | None = None
    _hpas: list[Obj] | None = None

    # --- reads (once per tick) -------------------------------------------------------------------------
    def _deployments(self) -> dict[str, Obj]:
        if self._snapshot is None:
            selector = f"app in ({','.join(self.services)})" if self.services else None
            listed = self.api.list(DEPLOYMENTS, self.release.namespace, selector)
            self._snapshot = {d["metadata"]["name"]: d for d in listed.get("items", [])}
        return self._snapshot

    def _all_hpas(self) -> list[Obj]:
        if self._hpas is None:
            self._hpas = list(self.api.list(HPAS, self.release.namespace).get("items", []))
        return self._hpas

    def _hpas_targeting(self, deployment: str) -> list[Obj]:
        """The HPAs that scale `deployment` (one LIST of the namespace's HPAs per tick, when asked)."""
        targets = ((h, (h.get("spec") or {}).get("scaleTargetRef") or {}) for h in self._all_hpas())
        return [h for h, t in targets if t.get("kind") == "Deployment" and t.get("name") == deployment]

    def _hpa_for(self, deployment: str) -> Obj | None:
        """The user's HPA of `deployment` (one that is not a copy of the controller's), else any."""
        hpas = self._hpas_targeting(deployment)
        return next((h for h in hpas if not _is_copy(h)), hpas[0] if hpas else None)

    def _stable_version(self, service: str) -> str | None:
        return self.stable_versions.get(service, self.stable_version)

    def _stable_of(self, service: str, version: str) -> Obj:
        deployments = self._deployments()
        stable = self._stable_version(service)
        if stable and (d := deployments.get(deployment_name(service, stable))):
            return d
        candidates = [d for d in deployments.values()
                      if _labels(d).get("app") == service and _labels(d).get("version") != version]
        if not candidates:
            raise PermanentError(f"no stable Deployment of {service} to copy (looked for "
                                 f"{deployment_name(service, stable or '<stable>')} and app={service})")
        return max(candidates, key=lambda d: d.get("status", {}).get("readyReplicas", 0))

    # --- the port ----------------------------------------------------------------------------------------
    def ensure_version(self, service: str, version: str, image: str | None) -> None:
        name = deployment_name(service, version)
        stable = self._stable_of(service, version)
        replicas = self.policy.canary_replicas(_replicas(stable), self.weight.weight)
        existing = self._deployments().get(name)
        if existing is None:
            # HPAs are looked for at creation; later ticks read the annotation (one LIST less per tick).
            hpa = self._hpa_for(stable["metadata"]["name"])
            body = self.canary_from(stable, service, version, image, replicas)
            if hpa is not None:
                body["metadata"]["annotations"][ANNOTATION_AUTOSCALED] = "true"
                body["spec"]["replicas"] = max(replicas, _copy_min(hpa, self.weight.weight, _replicas(stable)))
            self._deployments()[name] = self.api.create(DEPLOYMENTS, self.release.namespace, body)
            if hpa is not None:
                self._ensure_hpa_copy(hpa, name, _replicas(stable))
            return
        autoscaled = _autoscaled(existing)
        hpa = None
        if autoscaled or _labels(existing).get(LABEL_RELEASE) != self.release.name:
            # Ours and autoscaled, or a version this release did not create (an undo brings an old one back).
            hpa = self._hpa_for(stable["metadata"]["name"])
        patch = self._drift(existing, service, image, None if autoscaled or hpa else replicas)
        if hpa is not None:
            floor = _copy_min(hpa, self.weight.weight, _replicas(stable))
            if _replicas(existing) < floor:  # capacity before traffic; and an HPA never scales up from 0
                patch.setdefault("spec", {})["replicas"] = floor
            if not autoscaled:
                patch["metadata"] = {"annotations": {ANNOTATION_AUTOSCALED: "true"}}
            self._ensure_hpa_copy(hpa, name, _replicas(stable))
        if patch:
            self._deployments()[name] = self.api.patch(DEPLOYMENTS, self.release.namespace, name, patch)

    def canary_from(self, stable: Obj, service: str, version: str, image: str | None, replicas: int) -> Obj:
        template = copy.deepcopy(stable["spec"]["template"])
        template.setdefault("metadata", {}).setdefault("labels", {}).update(app=service, version=version)
        containers = template.get("spec", {}).get("containers", [])
        if image and containers:
            _service_container(containers, service)["image"] = image
        selector = dict(stable["spec"].get("selector", {}).get("matchLabels", {}))
        selector.update(app=service, version=version)
        meta = template.setdefault("metadata", {})
        meta["labels"] = without_gitops_tracking(meta["labels"], keep=frozenset(selector))
        if meta.get("annotations"):
            meta["annotations"] = without_gitops_tracking(meta["annotations"])
        spec: Obj = {"replicas": replicas, "selector": {"matchLabels": selector}, "template": template}
        for key in ("progressDeadlineSeconds", "strategy", "minReadySeconds", "revisionHistoryLimit"):
            if key in stable["spec"]:
                spec[key] = copy.deepcopy(stable["spec"][key])
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": deployment_name(service, version),
                "namespace": self.release.namespace,
                "labels": {**without_gitops_tracking(_labels(stable)), "app": service, "version": version,
                           LABEL_MANAGED_BY: MANAGED_BY, LABEL_RELEASE: self.release.name},
                "annotations": without_gitops_tracking(stable["metadata"].get("annotations") or {}),
                "ownerReferences": [self.release.owner_reference()],
            },
            "spec": spec,
        }

    def _drift(self, existing: Obj, service: str, image: str | None, replicas: int | None) -> Obj:
        patch: Obj = {}
        spec = existing.get("spec", {})
        if replicas is not None and spec.get("replicas") != replicas:
            patch["spec"] = {"replicas": replicas}
        containers = spec.get("template", {}).get("spec", {}).get("containers", [])
        if image and containers and _service_container(containers, service).get("image") != image:
            fixed = copy.deepcopy(containers)
            _service_container(fixed, service)["image"] = image
            # Merge-patch replaces lists whole: send every container, only the image changed.
            patch.setdefault("spec", {})["template"] = {"spec": {"containers": fixed}}
        return patch

    def _ensure_hpa_copy(self, hpa: Obj, deployment: str, stable_replicas: int) -> None:
        """The canary's HPA: the user's, targeting the canary, its minimum at the weight's share (compare,
        then patch, so that it follows the weight and the user's edits)."""
        spec = copy.deepcopy(hpa["spec"])
        spec["scaleTargetRef"] = {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment}
        spec["minReplicas"] = _copy_min(hpa, self.weight.weight, stable_replicas)
        hpas = self._all_hpas()
        live = next((h for h in hpas if h["metadata"]["name"] == deployment), None)
        if live is None:
            body = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                    "metadata": {"name": deployment, "namespace": self.release.namespace,
                                 "labels": {LABEL_MANAGED_BY: MANAGED_BY, LABEL_RELEASE: self.release.name},
                                 "ownerReferences": [self.release.owner_reference()]},
                    "spec": spec}
            hpas.append(self.api.create(HPAS, self.release.namespace, body))
        elif _is_copy(live):
            # Only what differs from what is live (fields the API server defaulted are not ours to compare).
            drift = {k: v for k, v in spec.items() if (live.get("spec") or {}).get(k) != v}
            if drift:
                hpas[hpas.index(live)] = self.api.patch(HPAS, self.release.namespace, deployment, {
                    "metadata": {"resourceVersion": live["metadata"]["resourceVersion"]}, "spec": drift})
        else:
            log.warning("HPA %s exists and is not the controller's: the canary %s is left to it", deployment,
                        deployment)

    def _hand_over_autoscaling(self, old: str, new: str) -> None:
        """Promotion: the user's HPA of the old version now scales the new one, whose copy goes (two HPAs on
        one Deployment would fight). Without a user's HPA the copy stays, no longer the release's."""
        users = [h for h in self._hpas_targeting(old) + self._hpas_targeting(new) if not _is_copy(h)]
        for hpa in self._hpas_targeting(new):
            if not _is_copy(hpa):
                continue
            if users:
                self.api.delete(HPAS, self.release.namespace, hpa["metadata"]["name"])
            elif hpa["metadata"].get("ownerReferences"):
                self.api.patch(HPAS, self.release.namespace, hpa["metadata"]["name"],
                               {"metadata": {"ownerReferences": None}})
        for hpa in self._hpas_targeting(old):
            if not _is_copy(hpa):
                target = {**hpa["spec"]["scaleTargetRef"], "name": new}
                self.api.patch(HPAS, self.release.namespace, hpa["metadata"]["name"],
                               {"metadata": {"resourceVersion": hpa["metadata"]["resourceVersion"]},
                                "spec": {"scaleTargetRef": target}})
        self._hpas = None  # changed: read again when asked

    def _drop_hpa_copy(self, deployment: str) -> None:
        """A retired canary's copy goes with it (its Deployment is at 0, where no HPA scales anyway)."""
        for hpa in self._hpas_targeting(deployment):
            if _is_copy(hpa) and (hpa["metadata"].get("labels") or {}).get(LABEL_RELEASE) == self.release.name:
                self.api.delete(HPAS, self.release.namespace, hpa["metadata"]["name"])
                self._hpas = None

    def readiness(self, service: str, version: str) -> Readiness:
        """Ready at the size the tick's weight needs: a canary not yet scaled that far is not ready, even
        when every pod it has is (the scale-up is this tick's action, or it failed)."""
        d = self._deployments().get(deployment_name(service, version))
        if d is None:
            return Readiness(False, f"Deployment {deployment_name(service, version)} does not exist yet",
                             exists=False, others_ready=self._others_ready(service, version))
        readiness = deployment_readiness(d)
        if readiness.lost:
            readiness = replace(readiness, others_ready=self._others_ready(service, version))
        autoscaled = (d["metadata"].get("annotations") or {}).get(ANNOTATION_AUTOSCALED) == "true"
        if not readiness.ready or autoscaled or version == self._stable_version(service):
            return readiness
        need = self.policy.canary_replicas(_replicas(self._stable_of(service, version)), self.weight.weight)
        if _replicas(d) < need:
            return Readiness(False, f"{d['metadata']['name']}: {_replicas(d)} replicas, {need} needed for "
                                    f"{self.weight.weight}% of traffic", ready_replicas=readiness.ready_replicas)
        return readiness

    def _others_ready(self, service: str, version: str) -> tuple[str, ...]:
        """The other versions of `service` whose Deployments have pods ready, most ready first (then the
        later-numbered: v10 before v9)."""
        ready = [(int(d.get("status", {}).get("readyReplicas") or 0), str(_labels(d).get("version") or ""))
                 for d in self._deployments().values() if _labels(d).get("app") == service]
        ordered = sorted(ready, key=lambda x: (x[0], version_order(x[1])), reverse=True)
        return tuple(v for n, v in ordered if n > 0 and v and v != version)

    def retire(self, service: str, version: str) -> None:
        name = deployment_name(service, version)
        d = self._deployments().get(name)
        if version == self._stable_version(service) and self.canary_version:
            # Promoted: what serves now must belong to no release before the old version goes.
            new = deployment_name(service, self.canary_version)
            self._release_ownership(new)
            if any(_autoscaled(x) for x in (d, self._deployments().get(new)) if x is not None):
                self._hand_over_autoscaling(name, new)
        elif d is not None and _autoscaled(d):
            self._drop_hpa_copy(name)
        if d is not None and d.get("spec", {}).get("replicas", 1) != 0:
            self._deployments()[name] = self.api.patch(DEPLOYMENTS, self.release.namespace, name,
                                                       {"spec": {"replicas": 0}})

    def _release_ownership(self, name: str) -> None:
        d = self._deployments().get(name)
        if d is None or not d.get("metadata", {}).get("ownerReferences"):
            return
        kept = [r for r in d["metadata"]["ownerReferences"] if r.get("uid") != self.release.uid]
        if len(kept) != len(d["metadata"]["ownerReferences"]):
            self._deployments()[name] = self.api.patch(DEPLOYMENTS, self.release.namespace, name,
                                                       {"metadata": {"ownerReferences": kept or None}})


def deployment_readiness(d: Obj) -> Readiness:
    spec, status = d.get("spec", {}), d.get("status", {}) or {}
    name = d.get("metadata", {}).get("name", "")
    for condition in status.get("conditions", []) or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            return Readiness(False, f"{name}: progress deadline exceeded: {condition.get('message', '')}".rstrip(": "),
                             failed=True)
    if status.get("observedGeneration", 0) < d.get("metadata", {}).get("generation", 1):
        return Readiness(False, f"{name}: rollout not observed yet", ready_replicas=status.get("readyReplicas") or 0)
    want = spec.get("replicas", 1)
    ready, updated = status.get("readyReplicas", 0) or 0, status.get("updatedReplicas", 0) or 0
    if want == 0:
        return Readiness(False, f"{name}: scaled to 0 replicas", ready_replicas=ready)
    if ready < want or updated < want:
        return Readiness(False, f"{name}: {ready}/{want} ready, {updated}/{want} updated", ready_replicas=ready)
    return Readiness(True, ready_replicas=ready)


def without_gitops_tracking(values: dict[str, str], keep: frozenset[str] = frozenset()) -> dict[str, str]:
    """Labels or annotations without a GitOps tool's tracking and the stable's own bookkeeping; `keep`
    names keys that stay all the same (a selector's)."""
    return {k: v for k, v in values.items()
            if k in keep or not (k in GITOPS_KEYS or k in NOT_CARRIED or k.startswith(GITOPS_PREFIXES))}


def _is_copy(hpa: Obj) -> bool:
    return (hpa.get("metadata", {}).get("labels") or {}).get(LABEL_MANAGED_BY) == MANAGED_BY


def _copy_min(hpa: Obj, weight: int, stable_replicas: int = 0) -> int:
    """The canary copy's minReplicas: the weight's share of what the stable runs now (its autoscaler may
    have scaled it above the user's minimum: at promotion the new version gets that capacity before it
    gets all the traffic), and never below the weight's share of the user's minimum; at least 1, at
    most the user's maximum."""
    spec = hpa.get("spec") or {}
    user_min, user_max = int(spec.get("minReplicas") or 1), int(spec.get("maxReplicas") or 1)
    return max(1, min(user_max, math.ceil(max(user_min, stable_replicas) * weight / 100)))


def _autoscaled(d: Obj) -> bool:
    return (d.get("metadata", {}).get("annotations") or {}).get(ANNOTATION_AUTOSCALED) == "true"


def _labels(d: Obj) -> dict[str, str]:
    labels: dict[str, str] = d.get("metadata", {}).get("labels") or {}
    return labels


def _replicas(d: Obj) -> int:
    value: Any = d.get("spec", {}).get("replicas", 1)
    return int(value) if isinstance(value, int) else 1


def _service_container(containers: list[Obj], service: str) -> Obj:
    return next((c for c in containers if c.get("name") == service), containers[0])
