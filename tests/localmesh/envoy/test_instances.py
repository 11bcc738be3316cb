"""Cluster statistics named after the version a cluster serves, and one stat name per cluster instance in a running
Envoy (endpoints through EDS, so an endpoint change keeps the instance). Pure: the live behaviour is in
test_metrics.py."""

from __future__ import annotations

from pathlib import Path

from localmesh.endpoints import Endpoint
from localmesh.envoy.instances import Instances, eds_cluster
from localmesh.envoy.translate import Options, attributed_version, stat_name, translate
from tests.localmesh.envoy.support import (
    SERVICE,
    Obj,
    cluster,
    destination_rule,
    release,
    stat,
    to,
    virtual_service,
)

PORT = 8000
OPTIONS = Options(port=PORT)
V1 = Endpoint(SERVICE, {"version": "v1"}, "127.0.0.1", 9001)
V2 = Endpoint(SERVICE, {"version": "v2"}, "127.0.0.1", 9002)
STABLE, CANARY, WHOLE = cluster(PORT, "stable"), cluster(PORT, "canary"), cluster(PORT, "")
EDS = Path("/work/eds")


def promoted(canary: str | None = "v2") -> list[Obj]:
    """The stable subset re-pointed to v2 (the canary subset still at `canary`, or removed when None)."""
    subsets = {"stable": "v2", **({"canary": canary} if canary else {})}
    return [destination_rule(subsets), virtual_service([{"name": "all", "route": [to("stable", lane="stable")]}])]


def test_a_cluster_counts_under_the_version_it_serves_not_its_subset() -> None:
    cart = Endpoint("cart", {"version": "v7"}, "127.0.0.1", 9003)
    resources = translate(release(10), [V1, V2, cart], OPTIONS)
    names = {name: target.stat_name for name, target in resources.targets.items()}
    assert names == {STABLE: stat(PORT, "v1"), CANARY: stat(PORT, "v2"), WHOLE: stat(PORT, "v1+v2"),
                     cluster(PORT, "", "cart"): stat(PORT, "v7", "cart")}
    assert {c["name"]: c["alt_stat_name"] for c in resources.clusters} == names
    assert stat_name(PORT, "v2", "shop.default.svc.cluster.local", 3) == stat(PORT, "v2", instance=3)


def test_the_version_comes_from_the_subset_label_else_from_the_endpoints() -> None:
    assert attributed_version({"version": "v2"}, []) == "v2"  # a canary subset before its pods are up
    assert attributed_version({"track": "canary"}, ["v3"]) == "v3"
    assert attributed_version({}, ["v2", "v1", "v2"]) == "v1+v2"  # several: no release query selects it
    assert attributed_version({}, []) == "unknown"
    resources = translate(release(10), [V1], OPTIONS)
    assert resources.targets[CANARY].stat_name == stat(PORT, "v2") and resources.targets[WHOLE].version == "v1"


def test_the_first_placement_starts_every_cluster_as_eds_under_the_translations_names() -> None:
    instances = Instances(EDS)
    placement = instances.place(translate(release(10), [V1, V2], OPTIONS))
    assert sorted(placement.started) == sorted([STABLE, CANARY, WHOLE]) and placement.refreshed == ()
    stable = placement.instances[STABLE]
    assert stable.stat_name == stat(PORT, "v1") and stable.cluster["type"] == "EDS"
    assert "load_assignment" not in stable.cluster
    assert stable.cluster["eds_cluster_config"]["eds_config"]["path_config_source"]["path"] == str(stable.eds_path)
    assert stable.eds_path.parent == EDS and stable.assignment["cluster_name"] == STABLE
    assert placement.resources.targets[STABLE].stat_name == stat(PORT, "v1")
    assert {c["name"] for c in placement.resources.clusters} == {STABLE, CANARY, WHOLE}


def test_an_endpoint_change_keeps_the_instance_and_its_name() -> None:
    instances = Instances(EDS)
    first = instances.place(translate(release(10), [V1, V2], OPTIONS))
    instances.live = dict(first.instances)
    more = Endpoint(SERVICE, {"version": "v1"}, "127.0.0.2", 9001)
    second = instances.place(translate(release(50), [V1, V2, more], OPTIONS))
    assert second.started == () and second.retired == ()
    assert sorted(second.refreshed) == [STABLE, WHOLE]  # the canary's endpoints did not change
    assert second.instances[STABLE].stat_name == stat(PORT, "v1")
    assert second.instances[STABLE].eds_path == first.instances[STABLE].eds_path
    assert len(second.instances[STABLE].assignment["endpoints"][0]["lb_endpoints"]) == 2


def test_a_re_pointed_subset_and_a_returning_version_count_under_names_never_used_before() -> None:
    instances = Instances(EDS)

    def place(objects: list[Obj]) -> dict[str, str]:
        placement = instances.place(translate(objects, [V1, V2], OPTIONS))
        instances.live = dict(placement.instances)
        return {name: i.stat_name for name, i in placement.instances.items()}

    assert place(release(10))[STABLE] == stat(PORT, "v1")
    # promotion: `stable` now selects v2, which the canary cluster still counts under `v2`
    assert place(promoted()) == {STABLE: stat(PORT, "v2", instance=2), CANARY: stat(PORT, "v2"),
                                 WHOLE: stat(PORT, "v1+v2")}
    assert CANARY not in place(promoted(canary=None))
    # the canary subset back (v2 again, then v1: `canary undo`): each under a name no instance had
    assert place(promoted())[CANARY] == stat(PORT, "v2", instance=3)
    assert place(promoted("v1"))[CANARY] == stat(PORT, "v1", instance=2)


def test_two_clusters_of_one_version_at_once_count_apart() -> None:
    instances = Instances(EDS)
    placement = instances.place(translate(release(10), [V1], OPTIONS))  # the whole service: v1 only, like stable
    assert placement.instances[STABLE].stat_name == stat(PORT, "v1")
    assert placement.instances[WHOLE].stat_name == stat(PORT, "v1", instance=2)
    assert len({i.eds_path for i in placement.instances.values()}) == 3


def test_a_retired_instance_is_listed_and_a_new_process_reuses_no_name() -> None:
    instances = Instances(EDS)
    first = instances.place(translate(release(10), [V1, V2], OPTIONS))
    instances.live = dict(first.instances)
    second = instances.place(translate(promoted(), [V1, V2], OPTIONS))
    assert [i.stat_name for i in second.retired] == [stat(PORT, "v1")]  # the stable instance it replaces
    instances.reset()  # Envoy restarted: it runs nothing, and no name is lent out again
    third = instances.place(translate(release(10), [V1, V2], OPTIONS))
    assert sorted(third.started) == sorted([STABLE, CANARY, WHOLE])
    assert third.instances[STABLE].stat_name == stat(PORT, "v1", instance=2)


def test_eds_form_keeps_everything_but_the_endpoints() -> None:
    (static, *_) = translate(release(10), [V1, V2], OPTIONS).clusters
    eds = eds_cluster(static, EDS / "x.json")
    assert {k: v for k, v in eds.items() if k not in ("type", "eds_cluster_config")} == {
        k: v for k, v in static.items() if k not in ("type", "load_assignment")}
    assert eds["eds_cluster_config"] == {"eds_config": {"path_config_source": {"path": "/work/eds/x.json"},
                                                        "resource_api_version": "V3"}}
