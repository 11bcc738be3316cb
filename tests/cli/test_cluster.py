"""The operator's commands against StackReleases in the API emulator, with a controller driving them.

get, list, history; pause, resume, promote [--full], abort, retry, undo (each one applied and refused);
a retry and an undo run to completion; `--watch` progress; the `kubectl canary` plugin.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import tomllib
from pathlib import Path
from typing import Any

import pytest

from controller.adapters.kubernetes.client import DEPLOYMENTS, RELEASES
from controller.adapters.kubernetes.running import Controller
from controller.cli.main import main
from controller.core.status import Phase, ReleaseStatus
from tests.support.fakes import VersionModel
from tests.support.kmock_server import RunningEmulator
from tests.support.kube_world import NAMESPACE, SERVICES, KubeWorld, cluster_world, release_body
from tests.support.paths import REPO

ROOT = REPO
FAST = {"canary": {"steps": [{"weight": 10}, {"weight": 25}, {"weight": 50}], "interval": "60s",
                   "minCanaryRequests": 100}}


def cli(emulator: RunningEmulator, *argv: str) -> int:
    return main([*argv, "-n", NAMESPACE, "--server", emulator.url])


def spec_of(world: KubeWorld, name: str = "search-v2") -> dict[str, Any]:
    spec: dict[str, Any] = world.api.get(RELEASES, NAMESPACE, name)["spec"]
    return spec


def replicas(world: KubeWorld, version: str) -> set[int]:
    return {d["spec"]["replicas"] for d in world.objects("deployments")
            if d["metadata"]["labels"].get("version") == version}


def released(emulator: RunningEmulator, models: dict[str, VersionModel] | None = None
             ) -> tuple[KubeWorld, Controller]:
    world = cluster_world(emulator, hpa_on=(), models=models)  # pods ready after 2-10 s
    world.create_release(strategy=FAST, drainTime="1s")
    return world, world.controller()


def test_get_list_and_history(emulator: RunningEmulator, capsys: pytest.CaptureFixture[str]) -> None:
    world, controller = released(emulator)
    status = world.drive(controller, until=Phase.SUCCEEDED)
    assert status.phase is Phase.SUCCEEDED
    world.create_release(name="other", namespace="elsewhere")
    capsys.readouterr()
    assert cli(emulator, "get", "search-v2") == 0
    out = capsys.readouterr().out
    assert out.startswith("search-v2: Succeeded") and "revision 1 (attempt 1): v1 -> v2" in out
    assert "images: master-search=registry.example/master-search:2.0" in out
    assert "checks at the last analysis" in out and "errorRate" in out and "fails at 400" in out  # the harm rule
    assert "last decisions" in out and "PASS" in out
    assert cli(emulator, "status", "search-v2") == 0  # the old name still works
    assert capsys.readouterr().out.startswith("search-v2: Succeeded")
    assert cli(emulator, "get", "search-v2", "--watch") == 0  # finished: nothing to wait for
    assert capsys.readouterr().out.count("search-v2: Succeeded") == 1
    assert cli(emulator, "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "NAMESPACE", "PHASE", "STEP", "WEIGHT", "STABLE->CANARY", "AGE"]
    assert [line.split()[:6] for line in lines[1:]] == [["search-v2", NAMESPACE, "Succeeded", "3/3", "0%", "v1->v2"]]
    assert main(["list", "-A", "--server", emulator.url]) == 0
    names = [line.split()[:3] for line in capsys.readouterr().out.splitlines()[1:]]
    assert names == [["other", "elsewhere", "Pending"], ["search-v2", NAMESPACE, "Succeeded"]]
    assert cli(emulator, "history", "search-v2") == 0
    history = capsys.readouterr().out.splitlines()
    assert history[1].split()[:6] == ["1", "1", "v1", "->", "v2", "Succeeded"]
    assert history[1].split()[-1].endswith("s")  # time to decision
    assert "master-search=registry.example/master-search:2.0 (was registry.example/master-search:1.0)" \
        not in "\n".join(history)  # the release was created without stable images (canary start records them)


@pytest.mark.parametrize("command", ["get", "history", "pause", "resume", "promote", "abort", "retry", "undo"])
def test_a_missing_release_or_an_unreachable_api_is_exit_1(emulator: RunningEmulator,
                                                             capsys: pytest.CaptureFixture[str], command: str) -> None:
    assert cli(emulator, command, "nope") == 1
    assert f"no StackRelease {NAMESPACE}/nope" in capsys.readouterr().err
    assert main([command, "x", "--server", "http://127.0.0.1:9"]) == 1
    assert capsys.readouterr().err.startswith(f"canary {command}: ")


def test_pause_resume_and_promote_in_flight(emulator: RunningEmulator, capsys: pytest.CaptureFixture[str]) -> None:
    world, controller = released(emulator)
    world.drive(controller, until=Phase.PROGRESSING)
    assert cli(emulator, "pause", "search-v2") == 0
    assert spec_of(world)["paused"] is True
    paused = world.drive(controller, until=Phase.PAUSED)
    assert paused.phase is Phase.PAUSED and paused.step == 0
    assert cli(emulator, "pause", "search-v2") == 0
    assert "already paused" in capsys.readouterr().out
    assert cli(emulator, "promote", "search-v2") == 0  # paused by an operator: promote resumes it
    assert spec_of(world)["paused"] is False
    assert world.drive(controller, until=Phase.PROGRESSING).step == 0
    assert cli(emulator, "resume", "search-v2") == 2
    assert "not paused (Progressing)" in capsys.readouterr().err
    assert cli(emulator, "promote", "search-v2") == 0  # skip step 1's analysis
    assert spec_of(world)["skipStep"] == 1
    controller.relist()
    controller.run_due()
    status = world.status()
    assert status.step == 1 and status.scaling_to == 25  # step 2's weight moves once v2 is scaled for it
    assert [(h.verdict, h.action) for h in status.history][-1] == ("operator", "next step")
    assert "skipping the analysis of step 1: search-v2 goes on to step 2/3" in capsys.readouterr().out
    assert cli(emulator, "promote", "search-v2", "--full") == 0
    status = world.drive(controller)
    assert status.phase is Phase.SUCCEEDED
    assert status.history[-1].verdict == "operator"
    assert status.history[-1].reason == "promoted by an operator (promote --full)"
    assert cli(emulator, "promote", "search-v2", "--full") == 2
    assert cli(emulator, "abort", "search-v2") == 2
    assert cli(emulator, "retry", "search-v2") == 2
    err = capsys.readouterr().err
    assert "already finished (Succeeded): nothing to promote" in err and "succeeded: nothing to retry" in err
    world.assert_valid_writes()


def test_promote_approves_a_manual_gate(emulator: RunningEmulator, capsys: pytest.CaptureFixture[str]) -> None:
    world = cluster_world(emulator, hpa_on=())  # 4 pods per service, new pods ready after 2-10 s
    world.create_release(strategy=FAST, drainTime="1s", policies={"manualGate": True})
    controller = world.controller()
    gated = world.drive(controller, until=Phase.PAUSED)
    assert gated.condition("Paused") is not None and gated.step == 2
    assert cli(emulator, "resume", "search-v2") == 2
    assert "manual gate" in capsys.readouterr().err
    assert cli(emulator, "promote", "search-v2") == 0
    assert spec_of(world)["approvePromotion"] is True
    assert world.drive(controller).phase is Phase.SUCCEEDED


def test_abort_then_a_full_retry_to_completion(emulator: RunningEmulator, capsys: pytest.CaptureFixture[str]) -> None:
    world, controller = released(emulator)
    world.drive(controller, until=Phase.PROGRESSING)
    assert cli(emulator, "retry", "search-v2") == 2
    assert "in flight (Progressing)" in capsys.readouterr().err
    assert cli(emulator, "abort", "search-v2") == 0
    assert world.drive(controller).phase is Phase.ABORTED
    assert cli(emulator, "undo", "search-v2") == 2
    assert "no earlier successful version" in capsys.readouterr().err
    assert cli(emulator, "retry", "search-v2") == 0
    spec = spec_of(world)
    assert (spec["retry"], spec["abort"]) == (1, False)
    status = world.drive(controller)
    assert status.phase is Phase.SUCCEEDED, status.message
    assert (status.revision, status.attempt, status.retries) == (1, 2, 1)
    assert [(r.attempt, r.outcome) for r in status.revisions] == [(1, "Aborted")]
    assert replicas(world, "v1") == {0} and replicas(world, "v2") == {4}
    assert cli(emulator, "history", "search-v2") == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line[:1].isdigit()]
    assert [(r[0], r[1], r[5]) for r in rows] == [("1", "1", "Aborted"), ("1", "2", "Succeeded")]
    world.assert_valid_writes()


def test_a_rolled_back_release_is_retried_with_a_fixed_build(emulator: RunningEmulator) -> None:
    world, controller = released(emulator, models={"v2": VersionModel(error_rate=0.3)})
    assert world.drive(controller).phase is Phase.ROLLED_BACK
    world.metrics.models.clear()
    assert cli(emulator, "retry", "search-v2") == 0
    status = world.drive(controller)
    assert status.phase is Phase.SUCCEEDED and status.attempt == 2


def test_undo_runs_the_previous_version_through_the_steps(emulator: RunningEmulator,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    world, controller = released(emulator)
    assert world.drive(controller).phase is Phase.SUCCEEDED
    assert replicas(world, "v1") == {0}
    assert cli(emulator, "undo", "search-v2") == 0
    assert "revision 2 of search-v2 releases v1 again in place of v2" in capsys.readouterr().out
    spec = spec_of(world)
    assert spec["stable"]["version"] == "v2" and spec["canary"]["version"] == "v1"
    status = world.drive(controller)
    assert status.phase is Phase.SUCCEEDED, status.message
    assert status.revision == 2 and [r.outcome for r in status.revisions] == ["Succeeded"]
    assert [h.weight for h in status.history if h.action.startswith("next step")] == [10, 25]  # the steps ran again
    assert replicas(world, "v1") == {4} and replicas(world, "v2") == {0}
    rules = world.objects("destinationrules")
    assert {s["labels"]["version"] for r in rules for s in r["spec"]["subsets"] if s["name"] == "stable"} == {"v1"}
    assert cli(emulator, "undo", "search-v2") == 0  # and again: v2 back (a redo)
    assert world.drive(controller).revision == 3
    world.assert_valid_writes()


def test_start_on_a_finished_release_starts_its_next_revision(emulator: RunningEmulator,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    world, controller = released(emulator)
    assert world.drive(controller).phase is Phase.SUCCEEDED
    assert main(["start", "search-v2", "--image", "ml-infer=registry.example/ml-infer:3.0", "-n", NAMESPACE,
                 "--server", emulator.url]) == 0
    # The version comes from the image's tag, made a DNS label (it names the Deployment ml-infer-3-0).
    assert "revision 2 releases 3-0 beside v2" in capsys.readouterr().out
    spec = spec_of(world)
    assert spec["stable"]["version"] == "v2" and spec["canary"] == {
        "version": "3-0", "images": {"ml-infer": "registry.example/ml-infer:3.0"}}
    status = world.drive(controller)
    assert status.phase is Phase.SUCCEEDED and status.revision == 2
    assert status.versions is not None and status.versions.canary == "3-0"


def drive_while_watching(emulator: RunningEmulator, world: KubeWorld, controller: Controller, command: str,
                         release: str, head_start: float) -> list[int]:
    """Run `canary COMMAND RELEASE --watch` on a thread while the controller drives the release; its exit code."""
    done: list[int] = []
    follower = threading.Thread(target=lambda: done.append(
        cli(emulator, command, release, "--watch", "--max-seconds", "30")))
    follower.start()
    threading.Event().wait(head_start)
    world.drive(controller)
    follower.join(timeout=30)
    return done


def test_get_watch_prints_progress_as_it_happens(emulator: RunningEmulator,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    world, controller = released(emulator)
    assert drive_while_watching(emulator, world, controller, "get", "search-v2", 0.3) == [0]
    out = capsys.readouterr().out
    marks = ["search-v2: Pending", "Pending -> Initializing", "Initializing -> Progressing",
             "step 2/3: 25% of traffic", "step 3/3: 50% of traffic", "Progressing -> Promoting",
             "-> Succeeded", "search-v2: Succeeded"]
    positions = [out.find(m) for m in marks]
    assert -1 not in positions and positions == sorted(positions), list(zip(marks, positions, strict=True))
    assert "PASS" in out and "e=" in out  # each decision with its checks


def test_undo_watch_follows_the_new_revision(emulator: RunningEmulator, capsys: pytest.CaptureFixture[str]) -> None:
    world, controller = released(emulator)
    world.drive(controller)
    assert drive_while_watching(emulator, world, controller, "undo", "search-v2", 0.5) == [0]
    out = capsys.readouterr().out
    assert out.index("revision 2 attempt 1 started: v2 -> v1") < out.index("Promoting -> Succeeded")


# --- the kubectl plugin ----------------------------------------------------------------------------

@pytest.mark.integration
def test_kubectl_canary_is_an_entry_point_of_the_same_main_and_kubectl_dispatches_to_it(
        emulator: RunningEmulator, tmp_path: Path) -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["kubectl-canary"] == scripts["canary"] == "controller.cli.main:main"
    module, _, function = scripts["kubectl-canary"].partition(":")
    # What pip writes for a console script, under the name kubectl looks for on the PATH.
    plugin = tmp_path / "kubectl-canary"
    plugin.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {function}\nsys.exit({function}())\n")
    plugin.chmod(0o755)
    world = KubeWorld(emulator)
    world.create_release()
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "KUBECONFIG": str(tmp_path / "none")}
    kubectl = ["kubectl", "canary"]
    out = subprocess.run([*kubectl, "list", "-n", NAMESPACE, "--server", emulator.url], capture_output=True,
                         text=True, env=env, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1].split()[:3] == ["search-v2", NAMESPACE, "Pending"]
    refused = subprocess.run([*kubectl, "undo", "search-v2", "-n", NAMESPACE, "--server", emulator.url],
                             capture_output=True, text=True, env=env, timeout=60, check=False)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr == "canary undo: search-v2 is in flight (Pending): use `canary abort` to roll it back\n"


def test_the_status_records_what_ran(emulator: RunningEmulator) -> None:
    world, controller = released(emulator)
    status = world.drive(controller)
    assert status.versions is not None and status.versions.canary_images == {
        s: f"registry.example/{s}:2.0" for s in SERVICES}
    assert ReleaseStatus.from_storage(world.api.get(RELEASES, NAMESPACE, "search-v2")["status"]) == status
    assert world.api.list(DEPLOYMENTS, NAMESPACE)["items"]


def test_no_kubeconfig_is_a_clear_could_not(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--kubeconfig", str(tmp_path / "none")]) == 1
    assert main(["promote", "x", "--kubeconfig", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert [line.split(":")[:2] for line in err] == [["canary list", " no Kubernetes API to talk to"],
                                                     ["canary promote", " no Kubernetes API to talk to"]]


def stable_routes(world: KubeWorld) -> dict[str, str]:
    """The version each service's `stable` subset points at."""
    return {r["spec"]["host"]: s["labels"]["version"] for r in world.objects("destinationrules")
            for s in r["spec"]["subsets"] if s["name"] == "stable"}


def test_a_stack_changed_in_part_is_released_and_undone_service_by_service(
        emulator: RunningEmulator, capsys: pytest.CaptureFixture[str]) -> None:
    """A release of ml-infer alone leaves the stack on two versions (ml-infer v2, the rest v1). The next
    release, of keyword, started with `canary start`, describes that stack (`spec.stable.versions`), keeps every
    untouched service's stable traffic where it runs, and its undo brings keyword back alone. Before, the next
    release had one stable version for the whole stack: v1 sent ml-infer's stable traffic to a version scaled to
    0, v2 sent the other services' to Deployments that do not exist."""
    world = cluster_world(emulator, hpa_on=())
    world.create_release(name="model", strategy=FAST, drainTime="1s",
                         canary={"version": "v2", "images": {"ml-infer": "registry.example/ml-infer:2.0"}})
    controller = world.controller()
    assert world.drive(controller, name="model").phase is Phase.SUCCEEDED
    assert stable_routes(world) == {**{s: "v1" for s in SERVICES}, "ml-infer": "v2"}

    assert cli(emulator, "start", "search-v3", "--image", "keyword=registry.example/keyword:v3") == 0
    assert "created search/search-v3: v1 (ml-infer v2) -> v3" in capsys.readouterr().out
    assert spec_of(world, "search-v3")["stable"]["versions"] == {"ml-infer": "v2"}
    world.patch_spec({"strategy": FAST, "drainTime": "1s", "analysis": release_body()["spec"]["analysis"]},
                     name="search-v3")
    assert world.drive(controller, name="search-v3").phase is Phase.SUCCEEDED
    assert stable_routes(world) == {**{s: "v1" for s in SERVICES}, "ml-infer": "v2", "keyword": "v3"}
    assert replicas(world, "v2") == {4}  # ml-infer v2 still serves: the keyword release did not retire it
    capsys.readouterr()
    assert cli(emulator, "get", "search-v3") == 0
    assert "revision 1 (attempt 1): v1 (ml-infer v2) -> v3" in capsys.readouterr().out

    assert cli(emulator, "undo", "search-v3") == 0
    assert "releases v1 again in place of v1 (ml-infer v2, keyword v3)" in capsys.readouterr().out
    spec = spec_of(world, "search-v3")
    assert spec["stable"]["versions"] == {"ml-infer": "v2", "keyword": "v3"} and spec["canary"]["version"] == "v1"
    status = world.drive(controller, name="search-v3")
    assert status.phase is Phase.SUCCEEDED and status.revision == 2, status.message
    assert stable_routes(world) == {**{s: "v1" for s in SERVICES}, "ml-infer": "v2"}
    assert {d["metadata"]["name"]: d["spec"]["replicas"] for d in world.objects("deployments")
            if d["metadata"]["name"].startswith(("keyword-", "ml-infer-"))} == {
        "keyword-v1": 4, "keyword-v3": 0, "ml-infer-v1": 0, "ml-infer-v2": 4}
    world.assert_valid_writes()


def test_start_on_a_finished_release_of_part_of_the_stack_refuses_a_version_a_service_runs(
        emulator: RunningEmulator, capsys: pytest.CaptureFixture[str]) -> None:
    """After a release of ml-infer alone (v1 -> v2), a next revision of ml-infer named v2 again is refused, as it
    was when the whole stack ran one version. Before, the check compared with v1 alone: the CLI wrote the spec and
    the controller refused it (spec.stable.versions.ml-infer: 'v2' is the new version)."""
    world = cluster_world(emulator, hpa_on=())
    world.create_release(name="model", strategy=FAST, drainTime="1s",
                         canary={"version": "v2", "images": {"ml-infer": "registry.example/ml-infer:2.0"}})
    controller = world.controller()
    assert world.drive(controller, name="model").phase is Phase.SUCCEEDED
    before = spec_of(world, "model")
    capsys.readouterr()
    assert cli(emulator, "start", "model", "--image", "ml-infer=registry.example/ml-infer:v2") == 2
    assert "v2 is what search/model serves now on ml-infer; give another --version" in capsys.readouterr().err
    assert spec_of(world, "model") == before
    assert cli(emulator, "start", "model", "--image", "keyword=registry.example/keyword:v2") == 0
    assert "revision 2 releases v2 beside v1 (ml-infer v2)" in capsys.readouterr().out


def test_start_with_a_stable_version_given_keeps_each_service_on_what_it_runs(
        emulator: RunningEmulator, capsys: pytest.CaptureFixture[str]) -> None:
    """`--stable-version v1` on a stack whose ml-infer runs v2: the release says so (`stable.versions`), where it
    named v1 for every service and waited in Pending (ml-infer-v1 has no pod ready) until the spec was fixed."""
    world = cluster_world(emulator, hpa_on=())
    world.create_release(name="model", strategy=FAST, drainTime="1s",
                         canary={"version": "v2", "images": {"ml-infer": "registry.example/ml-infer:2.0"}})
    controller = world.controller()
    assert world.drive(controller, name="model").phase is Phase.SUCCEEDED
    capsys.readouterr()
    assert cli(emulator, "start", "kw", "--image", "keyword=registry.example/keyword:v3", "--stable-version",
               "v1") == 0
    assert "created search/kw: v1 (ml-infer v2) -> v3" in capsys.readouterr().out
    assert spec_of(world, "kw")["stable"]["versions"] == {"ml-infer": "v2"}


def _model_then_keyword(emulator: RunningEmulator) -> tuple[KubeWorld, Controller]:
    """Two releases of the stack, run to success: `model` (ml-infer v1 -> v2), then `kw` (keyword v1 -> v3)."""
    world = cluster_world(emulator, hpa_on=())
    world.create_release(name="model", strategy=FAST, drainTime="1s",
                         canary={"version": "v2", "images": {"ml-infer": "registry.example/ml-infer:2.0"}})
    controller = world.controller()
    assert world.drive(controller, name="model").phase is Phase.SUCCEEDED
    world.create_release(name="kw", strategy=FAST, drainTime="1s", stable={"version": "v1", "versions": {
        "ml-infer": "v2"}}, canary={"version": "v3", "images": {"keyword": "registry.example/keyword:v3"}})
    controller.relist()
    assert world.drive(controller, name="kw").phase is Phase.SUCCEEDED
    return world, controller


def test_undo_reads_what_runs_since_a_later_release_and_leaves_that_releases_services_alone(
        emulator: RunningEmulator, capsys: pytest.CaptureFixture[str]) -> None:
    """A release of ml-infer (v1 -> v2), then one of keyword (v3). Undoing the first brings ml-infer back to v1 and
    keeps keyword on v3. Before, the undo took its own record (keyword on v1, scaled to 0 by the keyword release)
    and the new revision waited in Pending until the operator wrote spec.stable by hand. Undoing the keyword
    release after a later release moved keyword again is refused: that undo is the later release's."""
    world, controller = _model_then_keyword(emulator)
    capsys.readouterr()

    assert cli(emulator, "undo", "model") == 0
    assert "releases v1 again in place of v1 (ml-infer v2, keyword v3)" in capsys.readouterr().out
    spec = spec_of(world, "model")
    assert spec["stable"]["versions"] == {"ml-infer": "v2", "keyword": "v3"}
    assert spec["stable"]["images"]["keyword"] == "registry.example/keyword:v3"
    status = world.drive(controller, name="model")
    assert status.phase is Phase.SUCCEEDED and status.revision == 2, status.message
    assert stable_routes(world) == {**{s: "v1" for s in SERVICES}, "keyword": "v3"}

    world.create_release(name="kw4", strategy=FAST, drainTime="1s", stable={"version": "v1", "versions": {
        "keyword": "v3"}}, canary={"version": "v4", "images": {"keyword": "registry.example/keyword:v4"}})
    controller.relist()
    assert world.drive(controller, name="kw4").phase is Phase.SUCCEEDED
    before = spec_of(world, "kw")
    capsys.readouterr()
    assert cli(emulator, "undo", "kw") == 2
    assert ("a later release changed what it released (keyword runs v4, not the v3 it left): undo that release"
            in capsys.readouterr().err)
    assert spec_of(world, "kw") == before
    world.assert_valid_writes()


def test_start_on_a_finished_release_reads_what_runs_since_a_later_release(
        emulator: RunningEmulator, capsys: pytest.CaptureFixture[str]) -> None:
    """A release of ml-infer (v2), then one of keyword (v3); a next revision of the first, started with `canary
    start`, keeps keyword on v3 and records its image. Before, it took its own record (keyword on v1, scaled to 0
    by the keyword release) and waited in Pending until the operator wrote spec.stable by hand."""
    world, controller = _model_then_keyword(emulator)
    capsys.readouterr()
    assert cli(emulator, "start", "model", "--image", "ml-infer=registry.example/ml-infer:v4") == 0
    assert "revision 2 releases v4 beside v1 (ml-infer v2, keyword v3)" in capsys.readouterr().out
    stable = spec_of(world, "model")["stable"]
    assert stable["versions"] == {"ml-infer": "v2", "keyword": "v3"}
    assert stable["images"]["keyword"] == "registry.example/keyword:v3"
    status = world.drive(controller, name="model")
    assert status.phase is Phase.SUCCEEDED and status.revision == 2, status.message
    assert stable_routes(world) == {**{s: "v1" for s in SERVICES}, "ml-infer": "v4", "keyword": "v3"}
    world.assert_valid_writes()
