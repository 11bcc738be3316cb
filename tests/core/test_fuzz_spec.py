"""Fuzzed release specs: any input is either a valid release or an InvalidSpec with a message — never a
crash — and a release in flight that receives a bad spec keeps its routes exactly as they were."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.core.spec.release import InvalidSpec, parse_release
from controller.core.status import Phase
from tests.support.scenario import World, release

# JSON-like values, biased towards the shapes and edge values a spec is made of.
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "v1", "v2", "10s", "1m", "-1s", "hold", "rollback", "continue", "sequential", "kayenta",
                     "master-search", "ml-search", 'v2"} or vector(1)', "\\", "120", "x" * 300,
                     "preRollout", "confirmPromotion", "http://hooks.example/x", "file:///etc/passwd",
                     "http://user:pw@hooks.example/", "http://hooks.example/a\nb"]),
    st.text(max_size=20),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                      max_leaves=12)

SPEC_PATHS = [
    ("stable",), ("canary",), ("canary", "version"), ("canary", "services"), ("canary", "images"),
    ("stack",), ("stack", "services"), ("stack", "entry"), ("strategy",), ("strategy", "canary"),
    ("strategy", "canary", "steps"), ("strategy", "canary", "interval"), ("strategy", "canary", "stepWeight"),
    ("strategy", "canary", "maxWeight"), ("strategy", "canary", "minCanaryRequests"),
    ("strategy", "canary", "settle"), ("analysis",), ("analysis", "alpha"), ("analysis", "judge"),
    ("analysis", "services"), ("analysis", "checks"), ("policies",), ("policies", "onInconclusive"),
    ("policies", "rollbackAfterErrors"), ("progressDeadline",), ("drainTime",), ("paused",), ("abort",),
    ("laneHeader",), ("strategy", "abTest"), ("strategy", "abTest", "variants"), ("hooks",),
    ("promoteFull",), ("skipStep",), ("retry",), ("approvePromotion",),
]


def with_value(obj: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    node = out["spec"]
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value
    return out


@settings(max_examples=1200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(SPEC_PATHS), value=values)
def test_any_field_value_parses_or_is_refused_with_a_message(path: tuple[str, ...], value: Any) -> None:
    obj = with_value(release(), path, value)
    try:
        parse_release(obj)
    except InvalidSpec as exc:
        assert exc.problems and all(isinstance(p, str) and ": " in p for p in exc.problems)


@settings(max_examples=300, deadline=None)
@given(obj=values)
def test_whole_garbage_objects_are_refused(obj: Any) -> None:
    try:
        parse_release(obj)
    except InvalidSpec as exc:
        assert exc.problems


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(SPEC_PATHS), value=values)
def test_a_bad_spec_in_flight_changes_no_traffic(path: tuple[str, ...], value: Any) -> None:
    world = World()
    good = release()
    world.run(good, until=lambda s: s.phase is Phase.PROGRESSING)
    bad = with_value(good, path, value)
    bad["metadata"]["generation"] = 2
    try:
        parse_release(bad)
    except InvalidSpec:
        pass
    else:
        return  # a valid variation: not this test's concern
    before = json.dumps(world.router.objects, sort_keys=True)
    writes, calls = world.router.writes, list(world.workloads.calls)
    phase = world.status().phase
    for _ in range(3):
        world.controller().tick(bad, world.status(), world.persist)
        world.clock.sleep(60)
    assert json.dumps(world.router.objects, sort_keys=True) == before
    assert world.router.writes == writes and world.workloads.calls == calls
    status = world.status()
    assert status.phase is phase
    assert status.condition("SpecValid").status == "False"  # type: ignore[union-attr]


REPLAY_BASE = {
    "buckets_ms": [1, 10, 100, "+Inf"],
    "intervals": [{"t": 60, "weight": 10,
                   "baseline": {"requests": 100, "errors": 1, "buckets": [10, 60, 29, 1]},
                   "canary": {"requests": 10, "errors": 0, "buckets": [1, 6, 3, 0]}}],
}
REPLAY_PATHS = [("buckets_ms",), ("intervals",), ("intervals", 0, "t"), ("intervals", 0, "weight"),
                ("intervals", 0, "baseline"), ("intervals", 0, "canary", "requests"),
                ("intervals", 0, "canary", "buckets"), ("intervals", 0, "baseline", "errors")]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(REPLAY_PATHS), value=values)
def test_fuzzed_replay_files_get_a_verdict_or_a_one_line_error(
        tmp_path_factory: Any, path: tuple[Any, ...], value: Any) -> None:
    import contextlib
    import io

    from analysis.replay import main as replay_main

    data: Any = copy.deepcopy(REPLAY_BASE)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    f = tmp_path_factory.mktemp("replay") / "r.json"
    try:
        f.write_text(json.dumps(data))
    except ValueError:
        return  # not representable as JSON
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = replay_main(["--replay", str(f)])
    assert code in (0, 2)
    if code == 2:
        lines = err.getvalue().strip().splitlines()
        assert len(lines) == 1 and str(f) in lines[0]
    else:
        assert all(json.loads(line)["verdict"] in ("pass", "fail", "inconclusive", "error")
                   for line in out.getvalue().splitlines())


HOOK_KEYS = ("name", "kind", "url", "timeout", "retries", "failurePolicy", "secretFile", "metadata", "zz")
hooks = st.lists(st.dictionaries(st.sampled_from(HOOK_KEYS), values, max_size=6), max_size=3)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hook_list=hooks)
def test_fuzzed_hooks_parse_or_are_refused_by_path(hook_list: list[dict[str, Any]]) -> None:
    obj = release()
    obj["spec"]["hooks"] = hook_list
    try:
        spec = parse_release(obj)
    except InvalidSpec as exc:
        assert exc.problems and all(p.startswith("spec.hooks") for p in exc.problems), exc.problems
        return
    for hook in spec.hooks:  # what parses is callable: http(s), no credentials, no control characters
        assert hook.url.startswith(("http://", "https://")) and "@" not in hook.url.split("/")[2]
        assert all(ch.isprintable() and not ch.isspace() for ch in hook.url)
