"""`envoy --mode validate` accepts what the translation makes of the project's real rendered objects.

Every routing plan the renderer writes (a release at each stage, a promotion, a rollback, behind a gateway, an A/B
experiment with cohorts and sticky cookies), first checked with the project's own validator, then translated and
loaded by Envoy's validation mode; the same for the bootstrap a running instance starts from, and for a user's
route settings (timeout, retries, fault, mirror) carried into the controller's routes. Envoy's validation mode
loads a configuration fully without binding ports; it does not read file-based dynamic resources, so the
resources are validated inline (`static_config`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.adapters.istio.render import carry_user_settings, render
from controller.adapters.istio.validate import validate_objects
from controller.core.plan import ExperimentArm, ExperimentRoutes
from localmesh.endpoints import Endpoint
from localmesh.envoy.process import (
    Envoy,
    EnvoyConfigRejected,
    bootstrap_config,
    envoy_binary,
    static_config,
    validate_config,
)
from localmesh.envoy.translate import ISTIO_DEFAULT_RETRIES, Options, translate
from tests.support.plans import PLANS as RENDERED_PLANS
from tests.support.plans import SERVICES, plan

OPTIONS = Options(port=8000)
EXPERIMENT = ExperimentRoutes((ExperimentArm("control", "v1", 50), ExperimentArm("treatment", "v2", 30),
                               ExperimentArm("bold", "v3", 20)), cohort_header="x-cohort")
PLANS = {**RENDERED_PLANS, "A/B/n experiment": plan(0).with_experiment(EXPERIMENT)}


def endpoints() -> list[Endpoint]:
    """Every service in every version a plan names, on made-up loopback ports."""
    return [Endpoint(s, {"version": v}, "127.0.0.1", 9000 + 10 * i + j, "search")
            for i, s in enumerate(SERVICES) for j, v in enumerate(("v1", "v2", "v3"))]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", PLANS)
def test_envoy_validates_the_translation_of_rendered_objects(name: str, tmp_path: Path) -> None:
    objects = render(PLANS[name])
    validate_objects(objects)
    resources = translate(objects, endpoints(), OPTIONS)
    validate_config(static_config(resources, OPTIONS), tmp_path)


@pytest.mark.timeout(60)
def test_envoy_validates_carried_user_settings_and_istios_default_retries(tmp_path: Path) -> None:
    settings = {"timeout": "3s", "retries": {"attempts": 3, "perTryTimeout": "1s", "retryOn": "5xx,connect-failure"},
                "fault": {"delay": {"fixedDelay": "5ms", "percentage": {"value": 0.1}},
                          "abort": {"httpStatus": 503, "percentage": {"value": 0.5}}},
                "headers": {"response": {"set": {"x-served-by": "search"}}},
                "mirror": {"host": "search-shadow"}, "mirrorPercentage": {"value": 5.0}}
    objects = render(plan(20))
    for vs in (o for o in objects if o["kind"] == "VirtualService"):
        default = {"route": [{"destination": {"host": vs["metadata"]["name"]}}], **settings}
        vs["spec"]["http"] = carry_user_settings(vs["spec"]["http"], default, vs["metadata"]["name"], "x-canary-lane")
    options = Options(port=8000, default_retries=ISTIO_DEFAULT_RETRIES, upstream_idle_timeout_s=4.0)
    resources = translate(objects, endpoints(), options)
    assert any(c["name"] == "outbound|8000||search-shadow.search.svc.cluster.local" for c in resources.clusters)
    validate_config(static_config(resources, options), tmp_path)


@pytest.mark.timeout(60)
def test_envoy_validates_the_bootstrap_and_listener_a_running_instance_starts_from(tmp_path: Path) -> None:
    envoy = Envoy(tmp_path / "work", OPTIONS)
    bootstrap = envoy.prepare()
    assert json.loads(bootstrap.read_text()) == bootstrap_config(tmp_path / "work", 0)
    validate_config(bootstrap_config(tmp_path / "work"), tmp_path)
    # The listener as LDS serves it (routes from rds.json), beside the clusters of a real release.
    config = static_config(translate(render(plan(10)), endpoints(), OPTIONS), OPTIONS)
    config["static_resources"]["listeners"] = [envoy.listener()]
    validate_config(config, tmp_path)


@pytest.mark.timeout(60)
def test_envoy_validation_reports_what_it_refuses(tmp_path: Path) -> None:
    resources = translate(render(plan(10)), endpoints(), OPTIONS)
    config = static_config(resources, OPTIONS)
    config["static_resources"]["clusters"][0]["lb_policy"] = "SOMETIMES"
    with pytest.raises(EnvoyConfigRejected, match="SOMETIMES"):
        validate_config(config, tmp_path)


def test_the_binary_is_the_wheels() -> None:
    binary = envoy_binary()
    assert binary.name == "envoy" and binary.parent.name == "_bin"
