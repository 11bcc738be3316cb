"""The translation of Istio objects into Envoy resources, feature by feature, and what it refuses (object, path,
reason). Pure: no Envoy runs here (tests/localmesh/envoy/test_live.py runs the same features through one)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from localmesh.endpoints import Endpoint
from localmesh.envoy.readback import parse_stats, routes_in_effect
from localmesh.envoy.translate import (
    ISTIO_DEFAULT_RETRIES,
    Options,
    Resources,
    UntranslatableConfig,
    http_listener,
    translate,
)
from tests.localmesh.envoy.support import (
    LANE,
    NAMESPACE,
    SERVICE,
    Obj,
    all_stable,
    cluster,
    destination_rule,
    release,
    to,
    virtual_service,
)

PORT = 8000
OPTIONS = Options(port=PORT)
EPS = [Endpoint(SERVICE, {"version": "v1"}, "127.0.0.1", 9001), Endpoint(SERVICE, {"version": "v1"}, "127.0.0.2", 9001),
       Endpoint(SERVICE, {"version": "v2"}, "127.0.0.1", 9002), Endpoint("cart", {"version": "v1"}, "127.0.0.1", 9003)]
STABLE, CANARY, WHOLE = cluster(PORT, "stable"), cluster(PORT, "canary"), cluster(PORT, "")


def with_routes(*http: Obj) -> list[Obj]:
    return [destination_rule(), virtual_service(list(http))]


def routes(resources: Resources, host: str = SERVICE) -> list[Obj]:
    """The Envoy routes of the virtual host whose domains include `host`."""
    vhost = next(v for v in resources.route_config["virtual_hosts"] if host in v["domains"])
    return list(vhost["routes"])


def only_route(route: Obj, options: Options = OPTIONS) -> Obj:
    return routes(translate(with_routes(route), EPS, options))[0]


# --------------------------------------------------------------------------------------------------------------
# Hosts, virtual hosts, clusters


def test_one_virtual_host_per_host_with_its_names_and_the_port_ignored() -> None:
    hosts = (SERVICE, f"{SERVICE}.{NAMESPACE}.svc.cluster.local", "shop.example.com", "*.example.org")
    vs = virtual_service([{"route": [to("stable")]}], hosts=hosts)
    config = translate([destination_rule(), vs], EPS, OPTIONS).route_config
    assert config["name"] == "8000" and config["ignore_port_in_host_matching"] is True
    by_name = {v["name"]: v["domains"] for v in config["virtual_hosts"]}
    assert by_name == {
        "shop.default.svc.cluster.local:8000": ["shop.default.svc.cluster.local", "shop.default.svc",
                                                "shop.default", "shop"],
        "shop.example.com:8000": ["shop.example.com"],
        "*.example.org:8000": ["*.example.org"],
        # cart has endpoints but no VirtualService: istiod's default virtual host, every request to all of it
        "cart.default.svc.cluster.local:8000": ["cart.default.svc.cluster.local", "cart.default.svc",
                                                "cart.default", "cart"],
    }


def test_a_service_without_a_virtual_service_goes_whole_to_its_endpoints() -> None:
    (route,) = routes(translate(release(10), EPS, OPTIONS), "cart")
    assert route == {"name": "default", "match": {"prefix": "/"},
                     "route": {"cluster": cluster(PORT, "", "cart"), "timeout": "0s"}}


def test_clusters_are_istios_outbound_clusters_of_the_subsets_endpoints() -> None:
    resources = translate(release(10), EPS, OPTIONS)
    by_name = {c["name"]: c for c in resources.clusters}
    assert sorted(by_name) == sorted([STABLE, CANARY, WHOLE, cluster(PORT, "", "cart")])

    def addresses(name: str) -> list[tuple[str, int]]:
        return [(e["endpoint"]["address"]["socket_address"]["address"],
                 e["endpoint"]["address"]["socket_address"]["port_value"])
                for group in by_name[name]["load_assignment"]["endpoints"] for e in group["lb_endpoints"]]

    assert addresses(STABLE) == [("127.0.0.1", 9001), ("127.0.0.2", 9001)]
    assert addresses(CANARY) == [("127.0.0.1", 9002)]
    assert addresses(WHOLE) == [("127.0.0.1", 9001), ("127.0.0.2", 9001), ("127.0.0.1", 9002)]
    canary = by_name[CANARY]
    assert (canary["type"], canary["lb_policy"], canary["connect_timeout"]) == ("STATIC", "LEAST_REQUEST", "10s")
    assert canary["circuit_breakers"]["thresholds"][0]["max_requests"] == 2**32 - 1
    assert canary["metadata"]["filter_metadata"]["istio"] == {
        "default_original_port": PORT, "subset": "canary",
        "services": [{"host": "shop.default.svc.cluster.local", "name": SERVICE, "namespace": NAMESPACE}]}
    target = resources.targets[CANARY]
    assert (target.service, target.subset, dict(target.labels), target.versions) == (
        SERVICE, "canary", {"version": "v2"}, ("v2",))
    assert resources.targets[WHOLE].versions == ("v1", "v2")


def test_a_subset_without_endpoints_is_an_empty_cluster_and_ports_name_clusters() -> None:
    resources = translate(with_routes({"route": [{"destination": {"host": SERVICE, "subset": "canary",
                                                                  "port": {"number": 9080}}}]}),
                          [e for e in EPS if e.version == "v1"], OPTIONS)
    by_name = {c["name"]: c for c in resources.clusters}
    assert by_name[CANARY]["load_assignment"]["endpoints"] == []
    assert routes(resources)[0]["route"]["cluster"] == cluster(9080, "canary")
    assert cluster(9080, "canary") in by_name


def test_upstream_idle_timeout_is_an_option() -> None:
    options = Options(port=PORT, upstream_idle_timeout_s=4.0, connect_timeout_s=0.25)
    (first, *_) = translate(release(10), EPS, options).clusters
    assert first["connect_timeout"] == "0.25s"
    http = first["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert http["common_http_protocol_options"] == {"idle_timeout": "4s"}


# --------------------------------------------------------------------------------------------------------------
# Destinations and header operations


def test_a_weighted_split_becomes_weighted_clusters_each_setting_its_lane() -> None:
    lane, split = routes(translate(release(30), EPS, OPTIONS))
    assert lane["route"]["cluster"] == CANARY and lane["match"]["headers"] == [
        {"name": LANE, "string_match": {"exact": "canary"}}]
    assert split["name"] == "release-split" and split["match"] == {"prefix": "/"}
    lane_header = "OVERWRITE_IF_EXISTS_OR_ADD"
    assert split["route"]["weighted_clusters"] == {"clusters": [
        {"name": STABLE, "weight": 70,
         "request_headers_to_add": [{"header": {"key": LANE, "value": "stable"}, "append_action": lane_header}]},
        {"name": CANARY, "weight": 30,
         "request_headers_to_add": [{"header": {"key": LANE, "value": "canary"}, "append_action": lane_header}]},
    ]}
    assert split["metadata"] == {"filter_metadata": {"istio": {
        "config": "/apis/networking.istio.io/v1/namespaces/default/virtual-service/shop"}}}


def test_zero_weights_are_left_out_of_a_split_but_their_cluster_stays() -> None:
    resources = translate(release(0), EPS, OPTIONS)
    assert [c["name"] for c in routes(resources)[1]["route"]["weighted_clusters"]["clusters"]] == [STABLE]
    assert CANARY in {c["name"] for c in resources.clusters}


def test_a_single_destinations_header_operations_follow_the_routes() -> None:
    route = only_route({"headers": {"request": {"add": {"x-b": "2", "X-A": "1"}, "set": {"x-c": "3"},
                                                "remove": ["x-gone", "host"]},
                                    "response": {"set": {"x-served": "envoy"}, "remove": ["server"]}},
                        "route": [to("stable",
                                     headers={"request": {"set": {LANE: "stable", "host": "shop.internal"}}})]})
    assert [(h["header"]["key"], h["append_action"]) for h in route["request_headers_to_add"]] == [
        ("x-c", "OVERWRITE_IF_EXISTS_OR_ADD"), ("x-a", "APPEND_IF_EXISTS_OR_ADD"), ("x-b", "APPEND_IF_EXISTS_OR_ADD"),
        (LANE, "OVERWRITE_IF_EXISTS_OR_ADD")]
    assert route["request_headers_to_remove"] == ["x-gone"]  # host/:authority are not headers to Envoy
    assert route["response_headers_to_add"] == [{"header": {"key": "x-served", "value": "envoy"},
                                                 "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]
    assert route["response_headers_to_remove"] == ["server"]
    assert route["route"]["host_rewrite_literal"] == "shop.internal"  # a `host` set is a rewrite, as in istiod


def test_destination_response_headers_and_an_empty_value_are_kept() -> None:
    cookie = {"response": {"add": {"set-cookie": "ab=v2"}}, "request": {"set": {"x-empty": ""}}}
    route = only_route({"route": [to("stable", 50), to("canary", 50, headers=cookie)]})
    canary = route["route"]["weighted_clusters"]["clusters"][1]
    assert canary["response_headers_to_add"] == [{"header": {"key": "set-cookie", "value": "ab=v2"},
                                                  "append_action": "APPEND_IF_EXISTS_OR_ADD"}]
    assert canary["request_headers_to_add"] == [{"header": {"key": "x-empty", "value": ""}, "keep_empty_value": True,
                                                 "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]


# --------------------------------------------------------------------------------------------------------------
# Matches

MATCHES: list[tuple[Obj, Obj]] = [
    ({"uri": {"exact": "/a"}}, {"path": "/a", "case_sensitive": True}),
    ({"uri": {"prefix": "/api/"}}, {"prefix": "/api/", "case_sensitive": True}),
    ({"uri": {"prefix": ""}}, {"prefix": "/", "case_sensitive": True}),
    ({"uri": {"regex": "/items/[0-9]+"}}, {"safe_regex": {"regex": "/items/[0-9]+"}, "case_sensitive": True}),
    ({"uri": {"prefix": "/API"}, "ignoreUriCase": True}, {"prefix": "/API", "case_sensitive": False}),
    ({"uri": {"regex": "/a+"}, "ignoreUriCase": True}, {"safe_regex": {"regex": "(?i)/a+"}, "case_sensitive": False}),
    ({"headers": {"X-User": {"prefix": "bot-"}, "cookie": {"regex": "^(.*; )?ab=v2(;.*)?$"}, "x-any": {}}},
     {"prefix": "/", "case_sensitive": True, "headers": [
         {"name": "cookie", "string_match": {"safe_regex": {"regex": "^(.*; )?ab=v2(;.*)?$"}}},
         {"name": "x-any", "present_match": True},
         {"name": "x-user", "string_match": {"prefix": "bot-"}}]}),
    ({"withoutHeaders": {"x-user": {"exact": "bot"}, "x-debug": {}}},
     {"prefix": "/", "case_sensitive": True, "headers": [
         {"name": "x-debug", "present_match": True, "invert_match": True},
         {"name": "x-user", "string_match": {"exact": "bot"}, "treat_missing_header_as_empty": True,
          "invert_match": True}]}),
    ({"method": {"exact": "POST"}, "authority": {"prefix": "shop"}, "headers": {"a": {"exact": "1"}}},
     {"prefix": "/", "case_sensitive": True, "headers": [
         {"name": "a", "string_match": {"exact": "1"}}, {"name": ":method", "string_match": {"exact": "POST"}},
         {"name": ":authority", "string_match": {"prefix": "shop"}}]}),
    ({"queryParams": {"v": {"exact": "b"}, "debug": {}, "id": {"regex": "[0-9]+"}}},
     {"prefix": "/", "case_sensitive": True, "query_parameters": [
         {"name": "v", "string_match": {"exact": "b"}}, {"name": "debug", "present_match": True},
         {"name": "id", "string_match": {"safe_regex": {"regex": "[0-9]+"}}}]}),
]


@pytest.mark.parametrize(("istio", "envoy"), MATCHES)
def test_matches_translate_as_istiod_translates_them(istio: Obj, envoy: Obj) -> None:
    assert only_route({"match": [istio], "route": [to("stable")]})["match"] == envoy


def test_each_match_block_is_a_route_of_its_own_in_order() -> None:
    resources = translate(with_routes(
        {"name": "pinned", "match": [{"name": "by-header", "headers": {LANE: {"exact": "canary"}}},
                                     {"uri": {"prefix": "/canary"}}], "route": [to("canary")]},
        {"name": "rest", "route": [to("stable")]}), EPS, OPTIONS)
    assert [(r["name"], r["route"]["cluster"]) for r in routes(resources)] == [
        ("pinned.by-header", CANARY), ("pinned", CANARY), ("rest", STABLE)]


# --------------------------------------------------------------------------------------------------------------
# Policies: timeout, retries, fault, mirror


@pytest.mark.parametrize(("timeout", "envoy"), [(None, "0s"), ("1.5s", "1.5s"), ("250ms", "0.25s"), ("1m30s", "90s"),
                                                 ("2h", "7200s"), ("0s", "0s")])
def test_a_route_without_a_timeout_has_none_as_in_istio(timeout: str | None, envoy: str) -> None:
    spec = {"route": [to("stable")], **({"timeout": timeout} if timeout else {})}
    assert only_route(spec)["route"]["timeout"] == envoy


def test_retries_translate_over_istios_default_policy() -> None:
    route = only_route({"route": [to("stable")], "retries": {"attempts": 3, "perTryTimeout": "500ms",
                                                             "retryOn": "5xx, 503,reset", "backoff": "25ms",
                                                             "retryRemoteLocalities": True}})
    policy = route["route"]["retry_policy"]
    assert policy["retry_on"] == "5xx,reset,retriable-status-codes" and policy["retriable_status_codes"] == [503]
    assert (policy["num_retries"], policy["per_try_timeout"], policy["retry_back_off"]) == (
        3, "0.5s", {"base_interval": "0.025s"})
    assert policy["retry_host_predicate"][0]["name"] == "envoy.retry_host_predicates.previous_hosts"
    assert policy["retry_priority"]["name"] == "envoy.retry_priorities.previous_priorities"
    assert policy["host_selection_retry_max_attempts"] == 5


def test_no_retries_unless_a_route_or_the_options_ask() -> None:
    assert "retry_policy" not in only_route({"route": [to("stable")]})["route"]
    options = Options(port=PORT, default_retries=ISTIO_DEFAULT_RETRIES)
    resources = translate(with_routes({"route": [to("stable")]}, {"route": [to("stable")], "retries": {"attempts": 0}}),
                          EPS, options)
    first, second = routes(resources)
    assert first["route"]["retry_policy"]["retry_on"] == (
        "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes")
    assert first["route"]["retry_policy"]["num_retries"] == 2
    assert "retry_policy" not in second["route"]  # attempts: 0 turns retries off, as in istiod
    assert routes(resources, "cart")[0]["route"]["retry_policy"] == first["route"]["retry_policy"]


def test_faults_are_per_route_config_of_the_fault_filter() -> None:
    route = only_route({"route": [to("stable")], "fault": {
        "delay": {"fixedDelay": "2s", "percentage": {"value": 12.5}},
        "abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 0.1}}}})
    assert route["typed_per_filter_config"] == {"envoy.filters.http.fault": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
        "delay": {"fixed_delay": "2s", "percentage": {"numerator": 125_000, "denominator": "MILLION"}},
        "abort": {"grpc_status": 14, "percentage": {"numerator": 1_000, "denominator": "MILLION"}}}}
    legacy = only_route({"route": [to("stable")], "fault": {"delay": {"fixedDelay": "5ms", "percent": 30},
                                                            "abort": {"httpStatus": 503}}})
    fault = legacy["typed_per_filter_config"]["envoy.filters.http.fault"]
    assert fault["delay"]["percentage"] == {"numerator": 30, "denominator": "HUNDRED"}
    assert fault["abort"] == {"http_status": 503, "percentage": {"numerator": 0, "denominator": "MILLION"}}


def test_mirroring_copies_a_share_of_requests_to_the_mirrors_cluster() -> None:
    resources = translate(with_routes({"route": [to("stable")], "mirror": {"host": SERVICE, "subset": "canary"},
                                       "mirrorPercentage": {"value": 5.0}},
                                      {"route": [to("stable")], "mirror": {"host": "shadow"}},
                                      {"route": [to("stable")], "mirror": {"host": SERVICE},
                                       "mirrorPercentage": {"value": 0}}), EPS, OPTIONS)
    first, second, third = (r["route"] for r in routes(resources))
    assert first["request_mirror_policies"] == [{"cluster": CANARY, "trace_sampled": False, "runtime_fraction": {
        "default_value": {"numerator": 50_000, "denominator": "MILLION"}}}]
    assert second["request_mirror_policies"][0]["cluster"] == cluster(PORT, "", "shadow")
    assert second["request_mirror_policies"][0]["runtime_fraction"] == {
        "default_value": {"numerator": 100, "denominator": "HUNDRED"}}
    assert "request_mirror_policies" not in third
    assert cluster(PORT, "", "shadow") in {c["name"] for c in resources.clusters}


def test_the_listener_runs_the_fault_filter_before_the_router() -> None:
    listener = http_listener(OPTIONS, {"rds": {"route_config_name": "8000"}})
    assert listener["address"] == {"socket_address": {"address": "127.0.0.1", "port_value": PORT}}
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert [f["name"] for f in manager["http_filters"]] == ["envoy.filters.http.fault", "envoy.filters.http.router"]
    assert manager["stat_prefix"] == "outbound_127.0.0.1_8000" and manager["rds"] == {"route_config_name": "8000"}


def test_the_translation_leaves_its_inputs_alone_and_is_repeatable() -> None:
    objects = release(30)
    before = copy.deepcopy(objects)
    first = translate(objects, EPS, OPTIONS)
    assert objects == before and translate(objects, EPS, OPTIONS) == first
    assert translate(all_stable(), EPS, OPTIONS).targets.keys() == {STABLE, WHOLE, cluster(PORT, "", "cart")}


# --------------------------------------------------------------------------------------------------------------
# Refusals: the object, the path inside it, the reason


def _route(i: int, **fields: Any) -> Callable[[list[Obj]], None]:
    def change(objects: list[Obj]) -> None:
        objects[1]["spec"]["http"][i].update(fields)
    return change


def _match(**fields: Any) -> Callable[[list[Obj]], None]:
    def change(objects: list[Obj]) -> None:
        objects[1]["spec"]["http"][0]["match"][0].update(fields)
    return change


VS, DR = "VirtualService default/shop", "DestinationRule default/shop"
REFUSALS: list[tuple[str, Callable[[list[Obj]], None], str, str, str]] = [
    ("corsPolicy", _route(1, corsPolicy={"allowOrigins": [{"exact": "*"}]}), VS, "spec.http[1].corsPolicy",
     "not supported"),
    ("rewrite", _route(1, rewrite={"uri": "/v2"}), VS, "spec.http[1].rewrite", "not supported"),
    ("match on source", _match(sourceLabels={"app": "web"}), VS, "spec.http[0].match[0].sourceLabels",
     "not supported"),
    ("lookahead", _match(uri={"regex": "/(?!admin).*"}), VS, "spec.http[0].match[0].uri.regex", "RE2"),
    ("match on gateways", _match(gateways=["mesh"]), VS, "spec.http[0].match[0].gateways", "no gateways"),
    ("backreference", _match(headers={LANE: {"regex": r"(a)\1"}}), VS,
     'spec.http[0].match[0].headers["x-canary-lane"].regex', "RE2"),
    ("empty regex", _match(queryParams={"q": {"regex": ""}}), VS, "spec.http[0].match[0].queryParams.q.regex",
     "empty regex"),
    ("timeout", _route(1, timeout="soon"), VS, "spec.http[1].timeout", "not a duration"),
    ("retry budget", _route(1, retries={"attempts": 2, "retryBudget": 3}), VS, "spec.http[1].retries.retryBudget",
     "not translated"),
    ("retry on", _route(1, retries={"attempts": 2, "retryOn": "5xx,sometimes"}), VS, "spec.http[1].retries.retryOn",
     "'sometimes'"),
    ("attempts", _route(1, retries={"attempts": -1}), VS, "spec.http[1].retries.attempts", ">= 0"),
    ("per-try timeout", _route(1, retries={"attempts": 1, "perTryTimeout": "0s"}), VS,
     "spec.http[1].retries.perTryTimeout", "shorter than 1ms"),
    ("exponential delay", _route(1, fault={"delay": {"exponentialDelay": "1s"}}), VS,
     "spec.http[1].fault.delay.exponentialDelay", "not translated"),
    ("http2 error", _route(1, fault={"abort": {"http2Error": "REFUSED_STREAM"}}), VS,
     "spec.http[1].fault.abort.http2Error", "not translated"),
    ("abort status", _route(1, fault={"abort": {"httpStatus": 700}}), VS, "spec.http[1].fault.abort.httpStatus",
     "200..599"),
    ("abort share", _route(1, fault={"abort": {"httpStatus": 503, "percentage": {"value": 150}}}), VS,
     "spec.http[1].fault.abort.percentage.value", "0..100"),
    ("empty fault", _route(1, fault={}), VS, "spec.http[1].fault", "needs a delay or an abort"),
    ("mirror subset", _route(1, mirror={"host": SERVICE, "subset": "shadow"}), VS, "spec.http[1].mirror.subset",
     "not defined by a DestinationRule"),
    ("mirror outside", _route(1, mirror={"host": "mirror.example.com"}), VS, "spec.http[1].mirror.host",
     "not a Kubernetes service"),
    ("share without mirror", _route(1, mirrorPercentage={"value": 5}), VS, "spec.http[1].mirrorPercentage",
     "no mirror"),
    ("weights", _route(1, route=[to("stable", 60), to("canary", 30)]), VS, "spec.http[1].route", "sum to 90"),
    ("undefined subset", _route(1, route=[to("blue")]), VS, "spec.http[1].route[0].destination.subset",
     "not defined"),
    ("subset connection pool", lambda o: o[0]["spec"]["subsets"][0].update(
        trafficPolicy={"connectionPool": {"tcp": {"maxConnections": 1}}}), DR,
     "spec.subsets[0].trafficPolicy.connectionPool", "not supported"),
    ("subset cookie hash", lambda o: o[0]["spec"]["subsets"][0].update(
        trafficPolicy={"loadBalancer": {"consistentHash": {"httpCookie": {"name": "u", "ttl": "0s"}}}}), DR,
     "spec.subsets[0].trafficPolicy.loadBalancer.consistentHash.httpCookie", "not supported"),
    ("subset simple balancing", lambda o: o[0]["spec"]["subsets"][0].update(
        trafficPolicy={"loadBalancer": {"simple": "ROUND_ROBIN"}}), DR,
     "spec.subsets[0].trafficPolicy.loadBalancer.simple", "not supported"),
]


@pytest.mark.parametrize(("change", "ref", "path", "reason"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_what_cannot_be_translated_is_refused_with_object_path_and_reason(
        change: Callable[[list[Obj]], None], ref: str, path: str, reason: str) -> None:
    objects = release(30)
    change(objects)
    with pytest.raises(UntranslatableConfig) as caught:
        translate(objects, EPS, OPTIONS)
    assert (caught.value.obj_ref, caught.value.path) == (ref, path), str(caught.value)
    assert reason in caught.value.message
    assert str(caught.value).startswith(f"{ref}: {path}: ")


def test_endpoints_and_options_envoy_cannot_use_are_refused_too() -> None:
    with pytest.raises(UntranslatableConfig, match=r"Endpoint default/shop-v1: address: 'localhost' is not an IP"):
        translate(release(30), [Endpoint(SERVICE, {"version": "v1"}, "localhost", 9001)], OPTIONS)
    with pytest.raises(UntranslatableConfig, match=r"Options: default_retries.retryOn: 'whenever'"):
        translate(release(30), EPS, Options(port=PORT, default_retries={"attempts": 2, "retryOn": "whenever"}))


# --------------------------------------------------------------------------------------------------------------
# Reading Envoy's answer back


def test_routes_read_back_from_a_config_dump_of_either_shape() -> None:
    config = translate(release(30), EPS, OPTIONS).route_config
    entry = {"version_info": "7", "route_config": config}
    whole = {"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
                          "dynamic_route_configs": [entry]}]}
    filtered = {"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump.DynamicRouteConfig",
                             **entry}]}
    for dump in (whole, filtered):
        shop = next(v for v in routes_in_effect(dump, "8000") if SERVICE in v.domains)
        lane, split = shop.routes
        assert lane.weights == {CANARY: 100} and lane.match["headers"][0]["name"] == LANE
        assert split.weights == {STABLE: 70, CANARY: 30}
        assert [dict(c.request_headers) for c in split.clusters] == [{LANE: "stable"}, {LANE: "canary"}]
    assert routes_in_effect(whole, "9000") == ()


def test_stats_text_is_read_into_names_and_values() -> None:
    text = 'cluster_manager.cds.version_text: "12"\nlistener_manager.lds.update_rejected: 0\nnoise\n'
    assert parse_stats(text) == {"cluster_manager.cds.version_text": "12", "listener_manager.lds.update_rejected": "0"}


# --------------------------------------------------------------------------------------------------------------
# A subset's consistent hash on a header (an experiment's user affinity)


def test_subsets_that_hash_on_a_header_are_ring_hash_clusters_and_their_routes_hash_by_it() -> None:
    objects = release(30)
    for subset in objects[0]["spec"]["subsets"]:
        subset["trafficPolicy"] = {"loadBalancer": {"consistentHash": {"httpHeaderName": "X-User-Id"}}}
    resources = translate(objects, EPS, OPTIONS)
    policies = {c["name"]: c["lb_policy"] for c in resources.clusters}
    assert policies[STABLE] == policies[CANARY] == "RING_HASH" and policies[WHOLE] == "LEAST_REQUEST"
    lane, split_route = routes(resources)
    hashing = [{"header": {"header_name": "x-user-id"}}]
    assert lane["route"]["hash_policy"] == hashing  # the canary lane: one cluster
    assert split_route["route"]["hash_policy"] == hashing  # the split: both clusters hash on it


def test_a_route_whose_clusters_do_not_all_hash_on_one_header_does_not_hash() -> None:
    objects = release(30)
    objects[0]["spec"]["subsets"][1]["trafficPolicy"] = {
        "loadBalancer": {"consistentHash": {"httpHeaderName": "x-user-id"}}}  # the canary subset alone
    resources = translate(objects, EPS, OPTIONS)
    lane, split_route = routes(resources)
    assert lane["route"]["hash_policy"] == [{"header": {"header_name": "x-user-id"}}]
    assert "hash_policy" not in split_route["route"]
    assert {c["name"]: c["lb_policy"] for c in resources.clusters}[STABLE] == "LEAST_REQUEST"
