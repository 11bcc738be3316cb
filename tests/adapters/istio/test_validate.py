"""The project's own validation of routing objects, side by side with Istio's strict schema.

Every object that should be valid passes both. Every bad object is refused by ours; the table says for
each whether Istio's schema can see the problem too (it cannot see weight bounds or sums, regexes,
duplicate subsets, header values, or fields Istio knows but the local router does not implement).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.adapters.istio.validate import (
    InvalidRouteConfig,
    service_name_of,
    validate_destination_rule,
    validate_object,
    validate_objects,
    validate_virtual_service,
)
from tests.support.istio_schema import assert_valid_istio, istio_errors

Obj = dict[str, Any]


def virtual_service(api: str = "networking.istio.io/v1") -> Obj:
    return {
        "apiVersion": api,
        "kind": "VirtualService",
        "metadata": {"name": "master-search", "namespace": "search", "labels": {"app": "master-search"}},
        "spec": {
            "hosts": ["master-search", "search.example.com"],
            "gateways": ["search-gateway", "mesh"],
            "http": [
                {
                    "name": "canary-lane",
                    "match": [
                        {"headers": {"x-canary-lane": {"exact": "canary"}}},
                        {"headers": {"cookie": {"regex": "^(.*?;)?(lane=canary)(;.*)?$"}}},
                        {
                            "uri": {"prefix": "/beta/"},
                            "method": {"exact": "POST"},
                            "withoutHeaders": {"x-bot": {}},
                            "queryParams": {"v": {"regex": "[0-9]+"}},
                        },
                    ],
                    "route": [{"destination": {"host": "master-search", "subset": "canary"}}],
                },
                {
                    "name": "release-split",
                    "headers": {"response": {"set": {"x-route": "split"}, "remove": ["server"]}},
                    "route": [
                        {
                            "destination": {"host": "master-search", "subset": "stable", "port": {"number": 8000}},
                            "weight": 90,
                            "headers": {"request": {"set": {"x-canary-lane": "stable"}}},
                        },
                        {
                            "destination": {"host": "master-search.search.svc.cluster.local", "subset": "canary"},
                            "weight": 10,
                            "headers": {
                                "request": {"set": {"x-canary-lane": "canary"}, "add": {"x-a": "1"}, "remove": ["x-b"]}
                            },
                        },
                    ],
                },
            ],
        },
    }


def destination_rule(api: str = "networking.istio.io/v1") -> Obj:
    return {
        "apiVersion": api,
        "kind": "DestinationRule",
        "metadata": {"name": "master-search", "namespace": "search"},
        "spec": {
            "host": "master-search",
            "subsets": [
                {"name": "stable", "labels": {"version": "v1"}},
                {"name": "canary", "labels": {"version": "v2"}},
            ],
        },
    }


def gateway() -> Obj:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "search-gateway", "namespace": "search"},
        "spec": {
            "selector": {"istio": "ingressgateway"},
            "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["search.example.com"]}],
        },
    }


API_VERSIONS = ["networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"]


@pytest.mark.parametrize("api", API_VERSIONS)
def test_valid_objects_pass_ours_and_istio_strict(api: str) -> None:
    objects = [virtual_service(api), destination_rule(api), gateway()]
    for obj in objects:
        assert_valid_istio(obj)
        validate_object(obj)
    validate_objects(objects)


def test_gateway_with_tls_is_accepted_and_shape_checked() -> None:
    gw = gateway()
    gw["spec"]["servers"][0]["tls"] = {"mode": "SIMPLE", "credentialName": "search-cert"}
    gw["spec"]["servers"][0]["port"] = {"number": 443, "name": "https", "protocol": "HTTPS"}
    assert_valid_istio(gw)
    validate_object(gw)
    gw["spec"]["servers"][0]["hsts"] = True
    with pytest.raises(InvalidRouteConfig, match=r"spec\.servers\[0\]\.hsts: unknown field in Server"):
        validate_object(gw)


def test_single_destination_may_omit_weight_or_say_100() -> None:
    vs = virtual_service()
    vs["spec"]["http"][0]["route"][0]["weight"] = 100
    assert_valid_istio(vs)
    validate_virtual_service(vs)


def _at(path: str) -> Callable[[Obj], Any]:
    """A getter for a dotted/indexed path inside an object, e.g. 'spec.http.1.route.0'."""

    def get(obj: Obj) -> Any:
        node: Any = obj
        for part in path.split(".") if path else []:
            node = node[int(part)] if part.isdigit() else node[part]
        return node

    return get


def _set(path: str, key: str, value: Any) -> Callable[[Obj], None]:
    def mutate(obj: Obj) -> None:
        _at(path)(obj)[key] = value

    return mutate


def _delete(path: str, key: str) -> Callable[[Obj], None]:
    def mutate(obj: Obj) -> None:
        del _at(path)(obj)[key]

    return mutate


SPLIT = "spec.http.1"
# (case id, which object, mutation, expected message (regex), does Istio's strict schema refuse it too?)
BAD_CASES: list[tuple[str, str, Callable[[Obj], None], str, bool]] = [
    (
        "typo-wieght",
        "vs",
        _set(f"{SPLIT}.route.0", "wieght", 90),
        r"spec\.http\[1\]\.route\[0\]\.wieght: unknown field in HTTPRouteDestination \(did you mean 'weight'\?\)",
        True,
    ),
    ("typo-top-level", "vs", _set("", "spce", {}), r"spce: unknown field", True),
    ("typo-in-match", "vs", _set("spec.http.0.match.0", "header", {}), r"did you mean 'headers'", True),
    ("weight-string", "vs", _set(f"{SPLIT}.route.1", "weight", "10"), r"'10' is a string, expected a whole", True),
    ("weight-float", "vs", _set(f"{SPLIT}.route.1", "weight", 10.5), r"10\.5 is a number, expected a whole", True),
    ("weight-bool", "vs", _set(f"{SPLIT}.route.1", "weight", True), r"True is a boolean", True),
    ("hosts-string", "vs", _set("spec", "hosts", "master-search"), r"spec\.hosts: .* expected a list", True),
    ("http-object", "vs", _set("spec", "http", {}), r"spec\.http: .* expected a list", True),
    (
        "no-destination-host",
        "vs",
        _delete(f"{SPLIT}.route.0.destination", "host"),
        r"spec\.http\[1\]\.route\[0\]\.destination\.host: is required",
        True,
    ),
    ("no-destination", "vs", _delete(f"{SPLIT}.route.0", "destination"), r"route\[0\]\.destination: is required", True),
    (
        "two-string-matches",
        "vs",
        _set("spec.http.0.match.0.headers.x-canary-lane", "prefix", "c"),
        r"at most one of exact, prefix, regex",
        True,
    ),
    (
        "remove-not-list",
        "vs",
        _set(f"{SPLIT}.headers.response", "remove", "server"),
        r"headers\.response\.remove: 'server' is a string, expected a list",
        True,
    ),
    ("set-not-map", "vs", _set(f"{SPLIT}.headers.response", "set", ["x"]), r"headers\.response\.set: .*object", True),
    ("header-ops-unknown-op", "vs", _set(f"{SPLIT}.headers.response", "append", {"a": "b"}), r"unknown field", True),
    ("bad-api-version", "vs", _set("", "apiVersion", "networking.istio.io/v2"), r"apiVersion: ", True),
    ("no-name", "vs", _delete("metadata", "name"), r"metadata\.name: None is null", True),
    # Below here Istio's schema is blind: only our validation refuses.
    (
        "negative-weight",
        "vs",
        _set(f"{SPLIT}.route.1", "weight", -5),
        r"^VirtualService search/master-search: spec\.http\[1\]\.route\[1\]\.weight: -5 is negative$",
        False,
    ),
    ("weights-sum-90", "vs", _set(f"{SPLIT}.route.1", "weight", 0), r"weights \[90, 0\] sum to 90, not 100", False),
    ("single-weight-50", "vs", _set("spec.http.0.route.0", "weight", 50), r"must be 100 or omitted", False),
    (
        "bad-regex",
        "vs",
        _set("spec.http.0.match.1.headers.cookie", "regex", "(lane=canary"),
        r"not a valid regular expression",
        False,
    ),
    (
        "header-value-newline",
        "vs",
        _set(f"{SPLIT}.route.0.headers.request.set", "x-canary-lane", "a\r\nb: c"),
        r"characters an HTTP header value cannot carry",
        False,
    ),
    ("empty-hosts", "vs", _set("spec", "hosts", []), r"spec\.hosts: must not be empty", False),
    ("route-missing", "vs", _delete(SPLIT, "route"), r"spec\.http\[1\]\.route: is required", False),
    (
        "duplicate-subset",
        "dr",
        _set("spec.subsets.1", "name", "stable"),
        r"spec\.subsets\[1\]\.name: 'stable' duplicates spec\.subsets\[0\]\.name",
        False,
    ),
    (
        "subset-without-labels",
        "dr",
        _delete("spec.subsets.1", "labels"),
        r"spec\.subsets\[1\]\.labels: is required",
        False,
    ),
    ("subset-empty-labels", "dr", _set("spec.subsets.1", "labels", {}), r"needs at least one label", False),
    # A mirror (a shadow phase's, docs/shadow.md) is a Destination and a share of requests.
    (
        "mirror-outside-the-cluster",
        "vs",
        _set(SPLIT, "mirror", {"host": "search.example.com"}),
        r"spec\.http\[1\]\.mirror\.host: 'search\.example\.com' is not a Kubernetes service",
        False,
    ),
    (
        "mirror-percentage-above-100",
        "vs",
        _set(SPLIT, "mirrorPercentage", {"value": 120}),
        r"spec\.http\[1\]\.mirrorPercentage\.value: 120 is not a percentage in 0\.\.100",
        False,
    ),
    # Istio implements these; the local mesh router does not, so it refuses them by name.
    (
        "fault",
        "vs",
        _set(SPLIT, "fault", {"abort": {"httpStatus": 503, "percentage": {"value": 1}}}),
        r"fault: not supported",
        False,
    ),
    ("rewrite", "vs", _set(SPLIT, "rewrite", {"uri": "/"}), r"rewrite: not supported", False),
    ("cors", "vs", _set(SPLIT, "corsPolicy", {"allowOrigins": [{"exact": "x"}]}), r"corsPolicy: not supported", False),
    ("retries", "vs", _set(SPLIT, "retries", {"attempts": 3}), r"retries: not supported", False),
    ("timeout", "vs", _set(SPLIT, "timeout", "5s"), r"timeout: not supported", False),
    (
        "tcp",
        "vs",
        _set("spec", "tcp", [{"route": [{"destination": {"host": "x"}}]}]),
        r"spec\.tcp: not supported",
        False,
    ),
    (
        "source-labels",
        "vs",
        _set("spec.http.0.match.0", "sourceLabels", {"version": "v2"}),
        r"sourceLabels: not supported",
        False,
    ),
    (
        "outside-destination",
        "vs",
        _set(f"{SPLIT}.route.0.destination", "host", "api.example.com"),
        r"not a Kubernetes service: not supported",
        False,
    ),
    (
        "traffic-policy",
        "dr",
        _set("spec", "trafficPolicy", {"loadBalancer": {"simple": "ROUND_ROBIN"}}),
        r"spec\.trafficPolicy: not supported by the local mesh router",
        False,
    ),
]


@pytest.mark.parametrize(
    ("case", "which", "mutate", "message", "istio_refuses"), BAD_CASES, ids=[c[0] for c in BAD_CASES]
)
def test_bad_objects_are_refused(
    case: str, which: str, mutate: Callable[[Obj], None], message: str, istio_refuses: bool
) -> None:
    obj = virtual_service() if which == "vs" else destination_rule()
    mutate(obj)
    with pytest.raises(InvalidRouteConfig, match=message):
        validate_object(obj)
    # The table's claim about Istio's schema is itself checked, so it stays true.
    assert bool(istio_errors(obj)) == istio_refuses, istio_errors(obj)


def test_message_names_the_object_and_path() -> None:
    vs = virtual_service()
    vs["spec"]["http"][1]["route"][1]["weight"] = -5
    with pytest.raises(InvalidRouteConfig) as info:
        validate_virtual_service(vs)
    assert str(info.value) == "VirtualService search/master-search: spec.http[1].route[1].weight: -5 is negative"
    assert info.value.path == "spec.http[1].route[1].weight"


def test_wrong_kind_for_the_validator_is_refused() -> None:
    with pytest.raises(InvalidRouteConfig, match="kind: 'VirtualService', expected 'DestinationRule'"):
        validate_destination_rule(virtual_service())
    with pytest.raises(InvalidRouteConfig, match="'Service' is not one of"):
        validate_object({**virtual_service(), "kind": "Service"})


def _objects() -> list[Obj]:
    return [virtual_service(), destination_rule(), gateway()]


def test_cross_object_rules() -> None:
    objs = _objects()
    objs[1]["spec"]["subsets"].pop()  # 'canary' is still routed to
    with pytest.raises(InvalidRouteConfig, match=r"'canary' is not defined by a DestinationRule for service"):
        validate_objects(objs)

    objs = [*_objects(), virtual_service()]
    with pytest.raises(InvalidRouteConfig, match="defined twice"):
        validate_objects(objs)

    other = virtual_service()
    other["metadata"]["name"] = "other"
    other["spec"]["hosts"] = ["master-search.search.svc.cluster.local"]  # same service, another spelling
    with pytest.raises(InvalidRouteConfig, match="also routed by VirtualService search/master-search"):
        validate_objects([*_objects(), other])

    second_rule = destination_rule()
    second_rule["metadata"]["name"] = "another"
    with pytest.raises(InvalidRouteConfig, match="also has DestinationRule search/master-search"):
        validate_objects([*_objects(), second_rule])

    with pytest.raises(InvalidRouteConfig, match="expected a list"):
        validate_objects({"objects": _objects()})


def test_validation_does_not_change_the_objects() -> None:
    objs = _objects()
    before = copy.deepcopy(objs)
    validate_objects(objs)
    assert objs == before


@given(st.lists(st.integers(min_value=0, max_value=100), min_size=2, max_size=5))
def test_weights_are_accepted_exactly_when_they_sum_to_100(weights: list[int]) -> None:
    vs = virtual_service()
    dest = vs["spec"]["http"][1]["route"][0]
    vs["spec"]["http"][1]["route"] = [{**copy.deepcopy(dest), "weight": w} for w in weights]
    if sum(weights) == 100:
        validate_virtual_service(vs)
    else:
        with pytest.raises(InvalidRouteConfig, match=f"sum to {sum(weights)}, not 100"):
            validate_virtual_service(vs)


@pytest.mark.parametrize(
    ("host", "service"),
    [
        ("keyword", "keyword"),
        ("keyword.search", "keyword"),
        ("keyword.search.svc", "keyword"),
        ("keyword.search.svc.cluster.local", "keyword"),
        ("KEYWORD", "keyword"),
        ("search.example.com", None),
        ("*.example.com", None),
        ("a.b.c.svc.cluster.local", None),
    ],
)
def test_service_names_of_hosts(host: str, service: str | None) -> None:
    assert service_name_of(host) == service
