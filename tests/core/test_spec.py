"""Release spec parsing: defaults, both strategy forms, and precise messages for every kind of mistake."""

from __future__ import annotations

from typing import Any

import pytest

from controller.core.spec.release import SEARCH_STACK, InvalidSpec, parse_release

AB_METRIC = {"kind": "proportion", "name": "click-through"}


def obj(spec: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"stable": {"version": "v1"}, "canary": {"version": "v2"}}
    base.update(spec or {})
    return {"metadata": {"name": "search-v2", "namespace": "search", **meta}, "spec": base}


def problems(o: dict[str, Any]) -> list[str]:
    with pytest.raises(InvalidSpec) as info:
        parse_release(o)
    return list(info.value.problems)


def test_defaults_release_the_whole_search_stack() -> None:
    spec = parse_release(obj())
    assert spec.stack.services == SEARCH_STACK and spec.stack.entry == "master-search"
    assert spec.changed == SEARCH_STACK and spec.analysed_services == SEARCH_STACK
    assert spec.strategy.steps == (10, 20, 30, 40, 50)
    assert spec.strategy.interval == 60.0 and spec.strategy.step_deadline == 600.0
    assert spec.policies.on_inconclusive == "hold" and spec.policies.rollback_after_errors == 3
    assert spec.analysis.judge == "sequential" and spec.analysis.alpha == 0.05


def test_step_weight_with_a_max_that_is_not_a_multiple_ends_at_the_max() -> None:
    spec = parse_release(obj({"strategy": {"canary": {"stepWeight": 20, "maxWeight": 50}}}))
    assert spec.strategy.steps == (20, 40, 50)


def test_explicit_steps_and_durations() -> None:
    spec = parse_release(obj({"strategy": {"canary": {
        "steps": [{"weight": 5}, {"weight": 25}, {"weight": 100}], "interval": "90s", "stepDeadline": "15m"}}}))
    assert spec.strategy.steps == (5, 25, 100)
    assert spec.strategy.interval == 90 and spec.strategy.step_deadline == 900


def test_changed_services_come_from_images_or_an_explicit_list() -> None:
    by_image = parse_release(obj({"canary": {"version": "v2", "images": {"ml-search": "reg/ml-search:v2"}}}))
    assert by_image.changed == ("ml-search",)
    assert by_image.canary_version_of("ml-search") == "v2" and by_image.canary_version_of("keyword") is None
    listed = parse_release(obj({"canary": {"version": "v2", "services": ["keyword", "ml-infer"]}}))
    assert listed.changed == ("ml-infer", "keyword")  # stack order


@pytest.mark.parametrize("spec,expected", [
    ({"strategy": {"canary": {"steps": [{"weight": 10}, {"weight": 50}, {"weight": 120}]}}},
     "spec.strategy.canary.steps[2].weight: 120 is above 100"),
    ({"strategy": {"canary": {"steps": [{"weight": 30}, {"weight": 20}]}}},
     "spec.strategy.canary.steps[1].weight: 20 does not increase on 30"),
    ({"strategy": {"canary": {"steps": [{"wieght": 30}]}}},
     "spec.strategy.canary.steps[0].wieght: is not a known field"),
    ({"strategy": {"canary": {"stepWeight": 60, "maxWeight": 50}}},
     "spec.strategy.canary.stepWeight: 60 is above maxWeight 50"),
    ({"strategy": {"canary": {"interval": "soon"}}},
     "spec.strategy.canary.interval: 'soon' is not a duration"),
    ({"strategy": {"canary": {"minCanaryRequests": -1}}},
     "spec.strategy.canary.minCanaryRequests: -1 is below 0"),
    ({"stable": {"version": "v1"}, "canary": {"version": "v1"}},
     "spec.canary.version: 'v1' is the stable version already"),
    ({"canary": {"version": "v2", "services": ["ml-search", "payments"]}},
     "spec.canary.services[1]: 'payments' is not one of spec.stack.services"),
    ({"canary": {"version": 'v2"} or vector(1)'}},
     "spec.canary.version: 'v2\"} or vector(1)' is not a lower-case DNS label"),
    ({"canary": None}, "spec.canary: is required"),
    ({"stack": {"entry": "gateway"}}, "spec.stack.entry: 'gateway' is not one of spec.stack.services"),
    ({"stack": {"services": ["a", "a"]}}, "spec.stack.services: lists a more than once"),
    ({"policies": {"onInconclusive": "panic"}},
     "spec.policies.onInconclusive: 'panic' is not one of hold, rollback, continue"),
    ({"analysis": {"alpha": 1.5}}, "spec.analysis.alpha"),
    ({"analysis": {"services": ["ml-search"]}, "canary": {"version": "v2", "services": ["keyword"]}},
     "spec.analysis.services[0]: 'ml-search' is not a service this release changes"),
    ({"paused": "yes"}, "spec.paused: must be true or false, not str"),
    ({"replicas": 3}, "spec.replicas: is not a known field"),
])
def test_mistakes_get_precise_messages(spec: dict[str, Any], expected: str) -> None:
    assert any(p.startswith(expected) for p in problems(obj(spec))), problems(obj(spec))


def test_every_problem_is_reported_at_once() -> None:
    found = problems(obj({"strategy": {"canary": {"interval": "x", "minCanaryRequests": "many"}},
                          "policies": {"onInconclusive": "panic"}}))
    assert len(found) == 3


@pytest.mark.parametrize("bad", [None, [], "release", {"metadata": "x"}, {"metadata": {"name": "Bad_Name"}}])
def test_garbage_is_an_invalid_spec_not_a_crash(bad: Any) -> None:
    with pytest.raises(InvalidSpec):
        parse_release(bad)


def test_scale_down_delay_defaults_to_30_seconds() -> None:
    assert parse_release(obj()).scale_down_delay == 30.0
    assert parse_release(obj({"scaleDownDelay": 0})).scale_down_delay == 0.0
    assert parse_release(obj({"scaleDownDelay": "2m"})).scale_down_delay == 120.0


# A version names `<service>-<version>` Deployments, is a label value and an A/B/n subset name.
@pytest.mark.parametrize("field", ["stable", "canary"])
@pytest.mark.parametrize("version", ["1.2.3_rc1", "V2", "v2.0", "-v2", "v2-", "v 2"])
def test_a_version_that_cannot_name_kubernetes_objects_is_refused(field: str, version: str) -> None:
    found = problems(obj({field: {"version": version}}))
    assert found == [f"spec.{field}.version: {version!r} is not a lower-case DNS label: lower-case letters, digits "
                     "and '-', starting and ending with a letter or digit ([a-z0-9]([-a-z0-9]*[a-z0-9])?)"]


def test_a_version_must_leave_the_longest_services_deployment_name_within_63_characters() -> None:
    # master-search (13) + "-" + 49 = 63
    assert parse_release(obj({"canary": {"version": "v" * 49}})).canary.version == "v" * 49
    assert problems(obj({"canary": {"version": "v" * 50}})) == [
        f"spec.canary.version: {'v' * 50!r} is 50 characters, at most 49 fit: the Deployment "
        "master-search-<version> is a name of at most 63"]
    # The bound follows the release's own services.
    short = {"stack": {"services": ["web", "api"]}}
    assert parse_release(obj({**short, "stable": {"version": "s" * 59}})).stable.version == "s" * 59
    assert problems(obj({**short, "stable": {"version": "s" * 60}}))[0].startswith(
        "spec.stable.version: 'ssss")


def test_accepted_versions_are_lower_case_dns_labels() -> None:
    spec = parse_release(obj({"stable": {"version": "1-2-3"}, "canary": {"version": "2024-06-01-rc1"}}))
    assert (spec.stable.version, spec.canary.version) == ("1-2-3", "2024-06-01-rc1")


@pytest.mark.parametrize("service,ok", [("web", True), ("ml-search-2", True), ("9web", False), ("Web", False),
                                        ("web-", False), ("w" * 61, True), ("w" * 62, False)])
def test_services_are_kubernetes_service_names_with_room_for_a_version(service: str, ok: bool) -> None:
    release = obj({"stack": {"services": [service]}, "stable": {"version": "a"}, "canary": {"version": "b"}})
    if ok:
        assert parse_release(release).stack.services == (service,)
    else:
        assert problems(release)[0].startswith(f"spec.stack.services[0]: {service!r} is not a Kubernetes Service name")


def ab(*variants: tuple[str, int]) -> dict[str, Any]:
    return {"strategy": {"abTest": {"variants": [{"name": n, "weight": w} for n, w in variants],
                                    "primaryMetric": AB_METRIC}}}


def test_ab_n_variant_versions_are_checked_like_the_others() -> None:
    spec = parse_release(obj(ab(("v1", 34), ("v2", 33), ("v3-beta", 33))))
    assert spec.experiment is not None and [v.version for v in spec.experiment.extra] == ["v3-beta"]
    assert problems(obj(ab(("v1", 34), ("v2", 33), ("V3", 33)))) == [
        "spec.strategy.abTest.variants[2].name: 'V3' is not a DNS label (lower-case letters, digits, '-'; <= 63)"]
    long = "x" * 50
    assert problems(obj(ab(("v1", 34), ("v2", 33), (long, 33)))) == [
        f"spec.strategy.abTest.variants[2].name: {long!r} is 50 characters, at most 49 fit: the Deployment "
        "master-search-<version> is a name of at most 63"]


@pytest.mark.parametrize("reserved", ["stable", "canary"])
def test_a_variant_named_like_the_controllers_own_subsets_is_refused_not_a_crash(reserved: str) -> None:
    found = problems(obj({"stable": {"version": reserved}, **ab((reserved, 50), ("v2", 50))}))
    assert found == [f"spec.strategy.abTest.variants[0].name: {reserved!r} is a subset name the controller uses "
                     "itself (stable, canary): name the version otherwise"]


@pytest.mark.parametrize("top,expected", [
    ({"kind": "Deployment"}, "kind: 'Deployment' is not StackRelease, the kind of a release"),
    ({"apiVersion": "apps/v1"}, "apiVersion: 'apps/v1' is not stackcanary.dev/v1alpha1 (the group stackcanary.dev)"),
    ({"apiVersion": "stackcanary.dev/v9"}, "apiVersion: 'stackcanary.dev/v9' is not stackcanary.dev/v1alpha1"),
    ({"specs": {}}, "specs: is not a known field (known: apiVersion, kind, metadata, spec, status)"),
])
def test_a_document_that_is_not_a_stack_release_is_refused_naming_the_key(top: dict[str, Any], expected: str) -> None:
    assert any(p.startswith(expected) for p in problems({**obj(), **top})), problems({**obj(), **top})


def test_a_release_as_the_api_serves_it_or_without_kind_parses() -> None:
    served = {"apiVersion": "stackcanary.dev/v1alpha1", "kind": "StackRelease",
              "metadata": {"name": "search-v2", "namespace": "search", "generation": 3, "uid": "u-1",
                           "resourceVersion": "42", "managedFields": [], "finalizers": ["x"]},
              "spec": obj()["spec"], "status": {"phase": "Progressing", "step": 1}}
    assert parse_release(served).generation == 3
    assert parse_release(obj()).name == "search-v2"  # a local file may leave apiVersion and kind out


def test_the_kind_and_group_checked_are_the_crds() -> None:
    from pathlib import Path

    import yaml

    from controller.core.spec.release import API_VERSIONS, RELEASE_KIND

    crd = yaml.safe_load((Path(__file__).parents[2] / "manifests" / "crd" / "stackreleases.yaml").read_text())
    served = tuple(f"{crd['spec']['group']}/{v['name']}" for v in crd["spec"]["versions"] if v["served"])
    assert crd["spec"]["names"]["kind"] == RELEASE_KIND and served == API_VERSIONS
