"""The Workloads port on Deployments: a version of a service is the Deployment `<service>-<version>`.

- `ensure_version` creates the new version's Deployment from the stable one's pod template, with the new
  image on the service's container (the container named like the service, else the first one), the labels
  `app: <service>`, `version: <version>` on the pods and in the selector, and an owner reference to the
  StackRelease; later calls only fix replicas/image drift (compare, then patch; no write when equal).
- Replicas: `ReplicaPolicy.fixed` canary pods, or proportional to the canary weight of the stable
  Deployment's replicas (at least 1). While promoting, the weight counts as 100: the new version is
  about to take all traffic.
- HPA: when an autoscaling/v2 HorizontalPodAutoscaler targets the stable Deployment, the canary gets a
  copy targeting the canary Deployment (`minReplicas: 1`, labelled as the controller's), and the
  controller leaves the canary's replica count to it after creation. The stable HPA is never touched;
  scaling the old version to 0 replicas after promotion also pauses its HPA (Kubernetes does not
  autoscale a Deployment at 0 replicas).
- `readiness` reads the Deployment's status: ready when the rollout was observed and every desired replica
  is updated and ready; failed when the `Progressing` condition says `ProgressDeadlineExceeded`.
- `retire` scales a version to 0 (never deletes: the old version stays one scale-up away). Retiring the
  *stable* version means the promotion completed: the owner reference is then removed from the new
  version's Deployments, so that deleting the finished StackRelease does not garbage-collect the
  version that now serves all traffic.

Each instance serves one tick of one release and reads the namespace's Deployments once (one LIST with a
label selector), so a steady-state tick costs one request here, not one per service.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from controller.adapters.kubernetes.client import DEPLOYMENTS, HPAS, RELEASE_KIND, RELEASES, KubeApi, Obj
from controller.core.observation import Readiness
from controller.ports import PermanentError

log = logging.getLogger(__name__)

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_RELEASE = "stack-canary.dev/release"
# On a canary created beside an autoscaled stable version: its replicas belong to its own HPA copy.
ANNOTATION_AUTOSCALED = "stack-canary.dev/autoscaled"
MANAGED_BY = "stack-canary"


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
    _snapshot: dict[str, Obj] | None = None
    _hpas: dict[str, Obj] | None = None

    # --- reads (once per tick) -------------------------------------------------------------------------
    def _deployments(self) -> dict[str, Obj]:
        if self._snapshot is None:
            selector = f"app in ({','.join(self.services)})" if self.services else None
            listed = self.api.list(DEPLOYMENTS, self.release.namespace, selector)
            self._snapshot = {d["metadata"]["name"]: d for d in listed.get("items", [])}
        return self._snapshot

    def _hpa_for(self, deployment: str) -> Obj | None:
        if self._hpas is None:
            listed = self.api.list(HPAS, self.release.namespace)
            self._hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in listed.get("items", [])
                          if h.get("spec", {}).get("scaleTargetRef", {}).get("kind") == "Deployment"}
        return self._hpas.get(deployment)

    def _stable_of(self, service: str, version: str) -> Obj:
        deployments = self._deployments()
        if self.stable_version and (d := deployments.get(deployment_name(service, self.stable_version))):
            return d
        candidates = [d for d in deployments.values()
                      if _labels(d).get("app") == service and _labels(d).get("version") != version]
        if not candidates:
            raise PermanentError(f"no stable Deployment of {service} to copy (looked for "
                                 f"{deployment_name(service, self.stable_version or '<stable>')} and app={service})")
        return max(candidates, key=lambda d: d.get("status", {}).get("readyReplicas", 0))

    # --- the port ----------------------------------------------------------------------------------------
    def ensure_version(self, service: str, version: str, image: str | None) -> None:
        name = deployment_name(service, version)
        stable = self._stable_of(service, version)
        replicas = self.policy.canary_replicas(_replicas(stable), self.weight.weight)
        existing = self._deployments().get(name)
        if existing is None:
            # HPAs are looked for only here, at creation: later ticks read the annotation instead.
            hpa = self._hpa_for(stable["metadata"]["name"])
            body = self.canary_from(stable, service, version, image, replicas)
            if hpa is not None:
                body["metadata"]["annotations"] = {ANNOTATION_AUTOSCALED: "true"}
            self._deployments()[name] = self.api.create(DEPLOYMENTS, self.release.namespace, body)
            if hpa is not None:
                self._copy_hpa(hpa, name)
            return
        autoscaled = (existing["metadata"].get("annotations") or {}).get(ANNOTATION_AUTOSCALED) == "true"
        patch = self._drift(existing, service, image, None if autoscaled else replicas)
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
                "labels": {"app": service, "version": version, LABEL_MANAGED_BY: MANAGED_BY,
                           LABEL_RELEASE: self.release.name},
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

    def _copy_hpa(self, hpa: Obj, deployment: str) -> None:
        spec = copy.deepcopy(hpa["spec"])
        spec["scaleTargetRef"] = {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment}
        spec["minReplicas"] = 1
        body = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": deployment, "namespace": self.release.namespace,
                             "labels": {LABEL_MANAGED_BY: MANAGED_BY, LABEL_RELEASE: self.release.name},
                             "ownerReferences": [self.release.owner_reference()]},
                "spec": spec}
        if self.api.get_or_none(HPAS, self.release.namespace, deployment) is None:
            self.api.create(HPAS, self.release.namespace, body)

    def readiness(self, service: str, version: str) -> Readiness:
        d = self._deployments().get(deployment_name(service, version))
        if d is None:
            return Readiness(False, f"Deployment {deployment_name(service, version)} does not exist yet",
                             exists=False)
        return deployment_readiness(d)

    def retire(self, service: str, version: str) -> None:
        name = deployment_name(service, version)
        d = self._deployments().get(name)
        if d is not None and d.get("spec", {}).get("replicas", 1) != 0:
            self._deployments()[name] = self.api.patch(DEPLOYMENTS, self.release.namespace, name,
                                                       {"spec": {"replicas": 0}})
        if version == self.stable_version and self.canary_version:
            self._release_ownership(deployment_name(service, self.canary_version))

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
        return Readiness(False, f"{name}: rollout not observed yet")
    want = spec.get("replicas", 1)
    ready, updated = status.get("readyReplicas", 0) or 0, status.get("updatedReplicas", 0) or 0
    if want == 0:
        return Readiness(False, f"{name}: scaled to 0 replicas")
    if ready < want or updated < want:
        return Readiness(False, f"{name}: {ready}/{want} ready, {updated}/{want} updated")
    return Readiness(True)


def _labels(d: Obj) -> dict[str, str]:
    labels: dict[str, str] = d.get("metadata", {}).get("labels") or {}
    return labels


def _replicas(d: Obj) -> int:
    value: Any = d.get("spec", {}).get("replicas", 1)
    return int(value) if isinstance(value, int) else 1


def _service_container(containers: list[Obj], service: str) -> Obj:
    return next((c for c in containers if c.get("name") == service), containers[0])
