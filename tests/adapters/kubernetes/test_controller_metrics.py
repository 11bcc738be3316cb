"""The controller's own /metrics move as a release moves: phase, weight, decisions, e-values, time to
decision (what the Grafana dashboard in manifests/dashboards/ reads)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from controller.core.status import Phase
from tests.support.fakes import VersionModel
from tests.support.kmock_server import RunningEmulator
from tests.support.kube_world import NAMESPACE, cluster_world


def samples(exposition: bytes) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(exposition.decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_metrics_follow_a_rolled_back_release(emulator: RunningEmulator) -> None:
    world = cluster_world(emulator, hpa_on=(), models={"v2": VersionModel(error_rate=0.1)})  # pods ready after 2-10 s
    world.create_release()
    controller = world.controller()
    status = world.drive(controller)
    assert status.phase is Phase.ROLLED_BACK
    m = samples(controller.telemetry.exposition())
    phase = {labels["phase"]: value for labels, value in m["stack_canary_release_phase"]
             if labels["release"] == "search-v2" and labels["namespace"] == NAMESPACE}
    assert phase["RolledBack"] == 1.0 and sum(phase.values()) == 1.0
    decisions = sum(v for _, v in m["stack_canary_decisions_total"])
    assert decisions == len(status.history) > 0
    assert any(labels["verdict"] == "fail" and labels["action"] == "roll back"
               for labels, v in m["stack_canary_decisions_total"] if v)
    evalues = {(labels["service"], labels["check"]) for labels, _ in m["stack_canary_check_evalue"]}
    assert ("master-search", "errorRate") in evalues
    failed = [labels for labels, v in m["stack_canary_check_verdict"] if labels["verdict"] == "fail" and v == 1.0]
    assert failed
    [(labels, count)] = [(labels, v) for labels, v in m["stack_canary_time_to_decision_seconds_count"]]
    assert labels["outcome"] == "rolled_back" and count == 1.0
    # Ticking a finished release again counts nothing twice.
    controller.telemetry.release_state(NAMESPACE, "search-v2", status.phase, 0, status)
    again = samples(controller.telemetry.exposition())
    assert sum(v for _, v in again["stack_canary_decisions_total"]) == decisions
    assert [v for _, v in again["stack_canary_time_to_decision_seconds_count"]] == [1.0]
