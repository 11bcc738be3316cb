"""Text views of a release for terminals: the live panel and the decision lines.

Pure formatting of a status (and its spec); the commands decide where and how often to print.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from controller.spec import ReleaseSpec
from controller.status import DecisionRecord, Phase, ReleaseStatus


def _num(x: Any, fmt: str = "{:.3g}") -> str:
    return "-" if x is None else fmt.format(x)


def headline(spec: ReleaseSpec, status: ReleaseStatus, now: float) -> str:
    steps = spec.strategy.steps
    step = f"{status.step + 1}/{len(steps)}" if status.step >= 0 else f"0/{len(steps)}"
    parts = [f"{spec.name}: {status.phase.value:<12}", f"step {step}",
             f"weight {100 - status.canary_weight}/{status.canary_weight} (stable/canary)"]
    if status.last_analysis_at is not None and status.phase is Phase.PROGRESSING:
        due = status.last_analysis_at + spec.strategy.interval - now
        parts.append(f"next analysis in {max(0.0, due):4.1f}s")
    return "  ".join(parts)


def decision_lines(record: DecisionRecord, stable: str, canary: str) -> list[str]:
    """One decision: the verdict, per service the traffic of each version, each check against its bar."""
    lines = [f"  t={record.t:6.1f}s  {record.weight:3d}%  verdict {record.verdict.upper():<12} "
             f"-> {record.action or '-'}   {record.reason}"]
    by_service: dict[str, list[Mapping[str, Any]]] = {}
    for check in record.checks:
        by_service.setdefault(str(check.get("service", "?")), []).append(check)
    for service, checks in by_service.items():
        counts = record.counts.get(service, {})
        b, c = counts.get("baseline", {}), counts.get("canary", {})
        latency = next((ch for ch in checks if ch.get("check") == "latencyShift"), None)
        q = latency.get("estimates", {}) if latency else {}
        lines.append(
            f"    {service:<14} {stable}: {b.get('requests', 0):>6} req {_rate(b):>6} err "
            f"p50 {_num(q.get('p50BaselineMs'), '{:.0f}'):>4} p99 {_num(q.get('p99BaselineMs'), '{:.0f}'):>5}ms | "
            f"{canary}: {c.get('requests', 0):>5} req {_rate(c):>6} err "
            f"p50 {_num(q.get('p50CanaryMs'), '{:.0f}'):>4} p99 {_num(q.get('p99CanaryMs'), '{:.0f}'):>5}ms"
        )
        bars = "  ".join(f"{ch.get('check')}: e={_num(ch.get('eValue'))}/{_num(ch.get('threshold'))}"
                         + ("!" if ch.get("verdict") == "fail" else "")
                         for ch in checks)
        lines.append(f"    {'':<14} {bars}")
    return lines


def _rate(counts: Mapping[str, Any]) -> str:
    n = counts.get("requests", 0)
    return "-" if not n else f"{100 * counts.get('errors', 0) / n:.1f}%"
