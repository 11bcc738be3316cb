"""Release spec parsing: defaults, both strategy forms, and precise messages for every kind of mistake."""

from __future__ import annotations

from typing import Any

import pytest

from controller.core.spec.release import SEARCH_STACK, InvalidSpec, parse_release


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
     "spec.canary.version: 'v2\"} or vector(1)' is not a valid label value"),
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
