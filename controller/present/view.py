"""Text views of a release for terminals: the live panel, decision lines, progress, list and history.

Pure formatting of a status (and its spec); the commands decide where and how often to print, and pass
the time in (`now`) rather than reading a clock.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from controller.core.operations import all_revisions, at_gate
from controller.core.spec.experiment import ExperimentSpec
from controller.core.spec.release import ReleaseSpec
from controller.core.status import (
    DecisionRecord,
    Phase,
    ReleasedVersions,
    ReleaseStatus,
    RevisionRecord,
    shown_verdict,
)


def _num(x: Any, fmt: str = "{:.3g}") -> str:
    return "-" if x is None else fmt.format(x)


def headline(spec: ReleaseSpec, status: ReleaseStatus, now: float) -> str:
    steps = spec.strategy.steps
    step = f"{status.step + 1}/{len(steps)}" if status.step >= 0 else f"0/{len(steps)}"
    parts = [f"{spec.name}: {status.phase.value:<12}", f"step {step}", _weight_text(spec, status)]
    if status.last_analysis_at is not None and status.phase is Phase.PROGRESSING:
        due = status.last_analysis_at + spec.strategy.interval - now
        parts.append(f"next analysis in {max(0.0, due):4.1f}s")
        if status.last_analysis_at > now and spec.strategy.warmup > spec.strategy.settle and not status.pod_warmup:
            parts.append(f"(new pods warming up for {status.last_analysis_at - now:.0f}s more)")
    return "  ".join(parts)


def _weight_text(spec: ReleaseSpec, status: ReleaseStatus) -> str:
    """The split; once finished, which version serves everyone (100/0 reads alike after either ending)."""
    versions = status.versions
    stable, canary = (versions.replaced(), versions.canary) if versions else (spec.stable.version,
                                                                             spec.canary.version)
    if status.phase is Phase.SUCCEEDED:
        return f"all traffic on {canary} (promoted: now the stable version)"
    if status.phase in (Phase.ROLLED_BACK, Phase.ABORTED, Phase.FAILED) and status.canary_weight == 0:
        return f"all traffic on {stable} (the stable version; {canary} serves none)"
    if spec.experiment is not None and status.phase in (Phase.PROGRESSING, Phase.PAUSED, Phase.PROMOTING,
                                                        Phase.ROLLING_BACK):
        return _experiment_traffic(spec.experiment, status)
    return f"weight {100 - status.canary_weight}/{status.canary_weight} (stable/canary)"


def _experiment_traffic(experiment: ExperimentSpec, status: ReleaseStatus) -> str:
    """Where an experiment's users go (`routes.desired_plan`). `canary_weight` is the treatment's share of its pair
    with the control (what its guardrails judge), not a traffic split of A/B/n, so it is never shown as one."""
    arms = experiment.routes.arms
    split = "users split " + " / ".join(f"{a.name} {a.weight}%" for a in arms)
    ending = {Phase.PROMOTING: experiment.treatment, Phase.ROLLING_BACK: arms[0].name}.get(status.phase)
    if ending is None or (status.phase is Phase.PROMOTING and status.scaling_to is not None):
        return split  # also while the winner scales up for all users: the split stays
    if status.cutover:
        return f"all traffic on {ending}"
    return f"new users on {ending}; users already assigned keep their variant until the cutover"


def experiment_look(record: DecisionRecord) -> bool:
    """Whether the look is an experiment's: its recorded weight is then the treatment's share of its pair with the
    control (what the guardrails judge), not the traffic it got, and is not shown as a weight."""
    return isinstance(record.counts.get("primary"), Mapping)


def decision_lines(record: DecisionRecord, stable: str, canary: str,
                   stable_of: Mapping[str, str] | None = None) -> list[str]:
    """One decision: the verdict, per service the traffic of each version (a service in `stable_of` on its own
    stable version; an A/B/n experiment's further variants after the canary), each check against its bar."""
    verdict = shown_verdict(record.verdict, record.counts)
    weight = " A/B" if experiment_look(record) else f"{record.weight:3d}%"
    lines = [f"  t={record.t:6.1f}s  {weight}  verdict {verdict.upper():<12} "
             f"-> {record.action or '-'}   {record.reason}"]
    by_service: dict[str, list[Mapping[str, Any]]] = {}
    for check in record.checks:
        by_service.setdefault(str(check.get("service", "?")), []).append(check)
    for service, checks in by_service.items():
        counts = record.counts.get(service, {})
        b, c = counts.get("baseline", {}), counts.get("canary", {})
        latency = next((ch for ch in checks if ch.get("check") == "latencyShift"), None)
        q = latency.get("estimates", {}) if latency else {}
        variants = counts.get("variants") if isinstance(counts.get("variants"), Mapping) else {}
        lines.append(
            f"    {service:<14} {(stable_of or {}).get(service, stable)}: {b.get('requests', 0):>6} req {_rate(b):>6} "
            f"err p50 {_num(q.get('p50BaselineMs'), '{:.0f}'):>4} p99 {_num(q.get('p99BaselineMs'), '{:.0f}'):>5}ms | "
            f"{canary}: {c.get('requests', 0):>5} req {_rate(c):>6} err "
            f"p50 {_num(q.get('p50CanaryMs'), '{:.0f}'):>4} p99 {_num(q.get('p99CanaryMs'), '{:.0f}'):>5}ms"
            + "".join(f" | {v}: {n.get('requests', 0):>5} req {_rate(n):>6} err" for v, n in variants.items())
        )
        lines.append(f"    {'':<14} " + "  ".join(check_text(ch) for ch in checks))
    if record.checks:
        lines.append(f"    {'':<14} {harm_rule(record.checks)}")
    return lines


REGRESSION_CHECKS = ("errorRate", "slowTail", "latencyShift")


def check_text(ch: Mapping[str, Any]) -> str:
    """One check as the rule uses it: its harm e-value (a term of the sum that fails the release) and its
    safety bound against the margin (all under their margins is a pass)."""
    text = f"{ch.get('check')} e={_num(ch.get('eValue'))}"
    safety = (ch.get("estimates") or {}).get("safety")
    if isinstance(safety, Mapping) and safety.get("margin") is not None:
        mark = "<" if safety.get("shown") else ">="
        text += f" bound {_num(safety.get('bound'))}{mark}{_num(safety.get('margin'))}"
    verdict = str(ch.get("verdict", ""))
    e_value, threshold = ch.get("eValue"), ch.get("threshold")
    if (verdict == "fail" and isinstance(e_value, int | float) and isinstance(threshold, int | float)
            and e_value < threshold):
        verdict = "fail (by the sum)"  # a term of the sum that crossed, not at the threshold alone
    return f"{text} {verdict}".rstrip()


def harm_rule(checks: Sequence[Mapping[str, Any]]) -> str:
    """The harm rule with its numbers: the regression e-values of every service summed against K/alpha."""
    terms = [float(ch["eValue"]) for ch in checks
             if ch.get("check") in REGRESSION_CHECKS and isinstance(ch.get("eValue"), int | float)]
    thresholds = [float(ch["threshold"]) for ch in checks if isinstance(ch.get("threshold"), int | float)]
    if not terms or not thresholds:
        return ""
    return (f"harm: the regression e-values sum to {_num(sum(terms))}, the release fails at {_num(thresholds[0])};"
            " pass: every bound under its margin")


def _rate(counts: Mapping[str, Any]) -> str:
    n = counts.get("requests", 0)
    return "-" if not n else f"{100 * counts.get('errors', 0) / n:.1f}%"


# --------------------------------------------------------------------------------------------------
# `canary get`: the live panel of one release
# --------------------------------------------------------------------------------------------------
def clock(t: float | None) -> str:
    """A Unix time as UTC wall-clock time, to the second."""
    return "-" if t is None else datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def age(seconds: float) -> str:
    """kubectl's way: 45s, 12m, 5h, 3d."""
    s = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def versions_line(spec: ReleaseSpec, status: ReleaseStatus) -> str:
    v = status.versions or ReleasedVersions(spec.stable.version, spec.canary.version, dict(spec.stable.images),
                                            dict(spec.canary.images), dict(spec.stable.versions))
    line = f"  revision {status.revision} (attempt {status.attempt}): {v.stable_described()} -> {v.canary}"
    images = images_text(v)
    return line + ("\n" + wrapped("images: " + images, "    ") if images else "")


def wrapped(text: str, indent: str, width: int = 118) -> str:
    return textwrap.fill(text, width, initial_indent=indent, subsequent_indent=indent + "  ",
                         break_on_hyphens=False, break_long_words=False)


def images_text(v: ReleasedVersions) -> str:
    """The new images (model versions), with the one each replaces when the stable's is known."""
    parts = []
    for service, image in v.canary_images.items():
        was = v.stable_images.get(service)
        parts.append(f"{service}={image}" + (f" (was {was})" if was and was != image else ""))
    return ", ".join(parts)


def traffic_totals(status: ReleaseStatus, stable: str, canary: str) -> dict[str, dict[str, dict[str, int]]]:
    """Requests and errors per service and version summed over this attempt's analysed windows: the stable
    version's and the canary's, and an A/B/n experiment's further variants' (`counts[service]["variants"]`).
    An experiment's record also holds its primary metric's look and the further variants' guardrails
    (`counts["primary"]`, `counts["guardrails"]`): not services, so not traffic."""
    totals: dict[str, dict[str, dict[str, int]]] = {}
    for record in status.history:
        for service, counts in record.counts.items():
            if not isinstance(counts, Mapping) or not ({"baseline", "canary"} & counts.keys()):
                continue
            per = totals.setdefault(service, {})
            variants = counts.get("variants")
            sides = {stable: counts.get("baseline", {}), canary: counts.get("canary", {}),
                     **(variants if isinstance(variants, Mapping) else {})}
            for version, c in sides.items():
                t = per.setdefault(str(version), {"requests": 0, "errors": 0})
                t["requests"] += int(c.get("requests", 0))
                t["errors"] += int(c.get("errors", 0))
    return totals


def traffic_lines(status: ReleaseStatus, stable: str, canary: str) -> list[str]:
    """The traffic table of `canary get`: per service, every version's requests and error rate (the stable
    version, the canary, then an A/B/n experiment's further variants), over the analysed windows."""
    totals = traffic_totals(status, stable, canary)
    if not totals:
        return []
    versions = list(dict.fromkeys(v for per in totals.values() for v in per))
    lines = ["  traffic in the analysed windows (requests, error rate per version):",
             (f"    {'service':<14} " + "   ".join(f"{v:>10} {'':>6}" for v in versions)).rstrip()]
    for service, per in totals.items():
        lines.append(f"    {service:<14} " + "   ".join(
            f"{per.get(v, {}).get('requests', 0):>10} {_rate(per.get(v, {})):>6}" for v in versions))
    return lines


def panel(spec: ReleaseSpec, status: ReleaseStatus, now: float, decisions: int = 5) -> list[str]:
    """Phase, step, weights, versions, per-version traffic, each check against its threshold, decisions."""
    lines = [headline(spec, status, now), versions_line(spec, status)]
    since = f" (for {age(now - status.phase_since)})" if status.phase_since is not None else ""
    lines.append(f"  {status.phase.value}{since}: {status.message or '-'}")
    if status.conditions:
        lines.append("  conditions: " + "; ".join(
            f"{c.type}={c.status} {c.reason}" + (f" ({c.message})" if c.message else "") for c in status.conditions))
    lines += shadow_lines(status)
    lines += experiment_lines(status, spec.stable.version, spec.canary.version)
    # The baseline column is the stable version's, or "stable" where analysed services run versions of their own.
    own = set(spec.stable_versions(spec.analysed_services)) != {spec.stable.version}
    lines += traffic_lines(status, "stable" if own else spec.stable.version, spec.canary.version)
    last = next((r for r in reversed(status.history) if r.checks), None)
    if last is not None:
        lines.append(f"  checks at the last analysis (t={last.t:.0f}s): {harm_rule(last.checks)}")
        by_service: dict[str, list[Mapping[str, Any]]] = {}
        for check in last.checks:
            by_service.setdefault(str(check.get("service", "?")), []).append(check)
        for service, checks in by_service.items():
            lines.append(f"    {service:<14} " + "  ".join(check_text(ch) for ch in checks))
    if status.history:
        lines.append(f"  last decisions ({min(decisions, len(status.history))} of {len(status.history)}):")
        lines += [decision_summary(r) for r in status.history[-decisions:]]
    return lines


def shadow_lines(status: ReleaseStatus, examples: int = 3) -> list[str]:
    """A shadow phase's comparison (docs/shadow.md): pairs, overlap and its bounds against the margin, the
    distribution of overlaps, and the searches whose answers differ most."""
    shadow = status.shadow or {}
    v = shadow.get("verdict")
    if not v:
        return []
    lines = [f"  shadow: {v['pairs']} pairs compared ({shadow.get('mirrored', 0)} searches mirrored, "
             f"{shadow.get('dropped', 0)} dropped, {shadow.get('foreign', 0)} not served by the versions asked)"]
    if v["meanOverlap"] is not None:
        low, high = v["differenceBounds"]
        within = v.get("meanOverlapBounds")
        where = f" in [{within[0]:.3f}, {within[1]:.3f}]" if within else ""
        lines.append(f"    mean RBO {v['meanOverlap']:.3f}{where} (stable with itself {v['meanNoiseOverlap']:.3f}), "
                     f"top result changed {100 * v['top1Changed']:.0f}%; difference {v['difference']:.3f} "
                     f"in [{low:.3f}, {high:.3f}], margin {v['margin']:.3f} -> {v['decision'].upper()}")
        hist = v.get("overlapHistogram") or []
        lines.append("    overlap 0.0..1.0: " + " ".join(str(n) for n in hist))
    lines.append(f"    {v['reason']}")
    for worst in (v.get("mostDifferent") or [])[:examples]:
        lines.append(f"    RBO {worst.get('overlap', 0):.2f} {str(worst.get('query', ''))[:40]!r}: stable "
                     f"{list(worst.get('stable', []))[:3]} new {list(worst.get('new', []))[:3]}")
    drift = shadow.get("scoreDrift") or {}
    if drift.get("n"):
        lines.append(f"    score drift of the documents both rank: {_num(drift.get('mean'))} (stable with itself "
                     f"{_num(drift.get('noiseMean'))}) over {drift['n']} pairs")
    latency = shadow.get("latencyMs") or {}
    if any(latency.values()):
        unanswered = shadow.get("unanswered") or {}
        lines.append("    answers to the comparator: " + "; ".join(
            f"{side} p50 {_num((latency.get(side) or {}).get('p50'))} p90 {_num((latency.get(side) or {}).get('p90'))} "
            f"ms, {unanswered.get(side, 0)} unanswered" for side in ("stable", "new")))
    if shadow.get("error"):
        lines.append(f"    comparator: {shadow['error']}")
    return lines


def experiment_lines(status: ReleaseStatus, stable: str, canary: str) -> list[str]:
    """An A/B experiment's result (docs/experiments.md): who won and why, every variant's users, samples and
    primary metric, each treatment's difference from the control with its confidence interval, and, at the
    operator's gate, what each command does."""
    experiment = status.experiment or {}
    if not experiment.get("decision"):
        return []
    headline, header, rows = experiment_table(experiment)
    lines = [f"  {headline}", f"    {experiment.get('reason') or '-'}"]
    lines += [f"    {line}" for line in table(header, rows)]
    lines.append(wrapped(confidence_text(experiment), "    "))
    if at_gate(status):
        lines.append(f"  next: {operator_choice(experiment, stable, canary)}")
    return lines


def experiment_table(experiment: Mapping[str, Any]) -> tuple[str, list[str], list[list[str]]]:
    """(headline, column names, one row per variant, the control's first) of `status.experiment`."""
    metric, control = str(experiment.get("metric") or "primary metric"), str(experiment.get("control") or "-")
    decision, comparisons = str(experiment.get("decision")), experiment.get("comparisons") or {}
    # A guardrail names the harmful variant; the primary metric's harm is the treatment it finds worse.
    harmful = experiment.get("harmful") or ", ".join(v for v, c in comparisons.items() if c.get("verdict") == "worse")
    outcome = {"winner": f"winner {experiment.get('winner')}", "harmful": f"harmful: {harmful or '-'}",
               "no_difference": "no winner (no difference shown)", "continue": "running, no decision yet",
               "error": "no decision (the last look was an error)"}.get(decision, decision)
    stopped = experiment.get("stoppedBy")
    why = f", stopped by {_STOPPED_BY.get(str(stopped), stopped)}" if stopped else ""
    looks = experiment.get("looks")
    after = f" after {experiment['durationSeconds']:.0f}s" if isinstance(experiment.get("durationSeconds"),
                                                                             int | float) else ""
    headline = (f"experiment on {metric}: {outcome}{why}{after}" + (f", {looks} looks" if looks else ""))
    rates, samples = experiment.get("rates") or {}, experiment.get("samples") or {}
    users = experiment.get("users") or {}
    header = ["variant", "users", "samples", metric, f"difference from {control} [interval]",
              "ratio [interval]", "verdict"]
    rows = [[f"{control} (control)", _num(users.get(control), "{:,}"), _num(samples.get(control), "{:,}"),
             _num(rates.get(control), "{:.4f}"), "-", "-", "-"]]
    for variant, c in comparisons.items():
        rows.append([str(variant), _num(users.get(variant), "{:,}"), _num(samples.get(variant), "{:,}"),
                     _num(rates.get(variant), "{:.4f}"),
                     _with_interval(c.get("difference"), c.get("interval"), "{:+.4f}"),
                     _with_interval(c.get("ratio"), c.get("ratioInterval"), "{:.3g}"), str(c.get("verdict") or "-")])
    return headline, header, rows


_STOPPED_BY = {"primary": "the primary metric", "maxDuration": "the maximum duration", "guardrail": "a guardrail"}


def _with_interval(value: Any, interval: Any, fmt: str) -> str:
    """`value [low, high]`; an end the status stores as null is infinite (`json_clean`)."""
    low, high = interval if isinstance(interval, list | tuple) and len(interval) == 2 else (None, None)
    ends = ("-inf" if low is None else fmt.format(low), "+inf" if high is None else fmt.format(high))
    return f"{_num(value, fmt)} [{ends[0]}, {ends[1]}]"


def confidence_text(experiment: Mapping[str, Any]) -> str:
    """What the intervals promise: their confidence, that they hold at every look, and the unit."""
    alpha = experiment.get("alphaPerComparison")
    level = f"{100 * (1 - alpha):.4g}% " if isinstance(alpha, int | float) else ""
    unit = {"user": "users as the unit", "sample": "every sample as independent"}.get(
        str(experiment.get("unit")), "unit unknown")
    return (f"intervals: {level}confidence sequences, valid at every look (alpha {_num(alpha)} per comparison; "
            f"{unit}); samples: the metric's denominator (impressions for click-through)")


def operator_choice(experiment: Mapping[str, Any], stable: str, canary: str) -> str:
    """What `canary approve` and `canary abort` do at the end of a waitForOperator experiment: approving
    promotes spec.canary whatever won."""
    winner = experiment.get("winner")
    if winner == canary:
        verdict = f"the winner {canary} is spec.canary"
    elif winner:
        verdict = f"the winner {winner} is not spec.canary: release {winner} on its own to promote it"
    else:
        verdict = "no variant won"
    return f"`canary approve` promotes {canary}, `canary abort` keeps {stable} ({verdict})"


def decision_summary(record: DecisionRecord) -> str:
    where = "A/B look" if experiment_look(record) else f"at {record.weight:3d}%"
    return (f"    {clock(record.at)}  step {record.step + 1} {where}  "
            f"{shown_verdict(record.verdict, record.counts).upper():<12} -> {record.action or '-':<10} {record.reason}")


def progress_lines(spec: ReleaseSpec, old: ReleaseStatus, new: ReleaseStatus, now: float) -> list[str]:
    """What changed between two looks at a release, one line per change, for `--watch`."""
    at = clock(now)
    lines: list[str] = []
    restarted = (new.revision, new.attempt) != (old.revision, old.attempt)
    # The decisions first: they are why the step or the phase changed.
    for record in new.history[_first_unseen(old, new, restarted):]:
        lines.append(decision_summary(record).strip())
        lines += decision_lines(record, spec.stable.version, spec.canary.version, spec.stable.versions)[1:]
    if restarted:
        v = new.versions
        what = f": {v.stable_described()} -> {v.canary}" if v is not None else ""
        lines.append(f"{at}  revision {new.revision} attempt {new.attempt} started{what}")
    if new.phase is not old.phase:
        lines.append(f"{at}  {old.phase.value} -> {new.phase.value}: {new.message}")
    elif new.canary_weight != old.canary_weight and new.step >= 0:
        # The step's weight moved (a step first scales the new version for it: that shows as its message).
        lines.append(f"{at}  step {new.step + 1}/{len(spec.strategy.steps)}: {new.canary_weight}% of traffic "
                     "in the canary lane")
    elif new.message != old.message:
        lines.append(f"{at}  {new.phase.value}: {new.message}")
    return lines


def _first_unseen(old: ReleaseStatus, new: ReleaseStatus, restarted: bool) -> int:
    """Where the decisions `old` had not seen start in `new` (the history is bounded: once full, the
    oldest records drop out as new ones come, so lengths alone say nothing)."""
    if restarted or not old.history:
        return 0
    last = old.history[-1]
    for i in range(len(new.history) - 1, -1, -1):
        if (new.history[i].at, new.history[i].t) == (last.at, last.t):
            return i + 1
    return len(new.history)


# --------------------------------------------------------------------------------------------------
# `canary list` and `canary history`
# --------------------------------------------------------------------------------------------------
def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    return ["   ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=False)).rstrip()
            for row in (header, *rows)]


LIST_HEADER = ("NAME", "NAMESPACE", "PHASE", "STEP", "WEIGHT", "STABLE->CANARY", "AGE")


def list_row(name: str, namespace: str, spec: ReleaseSpec | None, status: ReleaseStatus,
             age_seconds: float | None) -> tuple[str, ...]:
    steps = len(spec.strategy.steps) if spec is not None else None
    step = "-" if status.step < 0 else f"{status.step + 1}" + (f"/{steps}" if steps else "")
    if status.versions is not None:
        pair = f"{status.versions.replaced()}->{status.versions.canary}"
    else:
        pair = f"{spec.stable.version}->{spec.canary.version}" if spec is not None else "(invalid spec)"
    return (name, namespace, status.phase.value, step, _list_weight(spec, status), pair,
            "-" if age_seconds is None else age(age_seconds))


def _list_weight(spec: ReleaseSpec | None, status: ReleaseStatus) -> str:
    """The WEIGHT column: the canary's share of traffic; an experiment's users split while it runs (34/33/33, in
    the order of its variants, the control first), then the share of new users its end sends the treatment."""
    if spec is None or spec.experiment is None or status.phase not in (
            Phase.PROGRESSING, Phase.PAUSED, Phase.PROMOTING, Phase.ROLLING_BACK):
        return f"{status.canary_weight}%"
    if status.phase in (Phase.PROGRESSING, Phase.PAUSED) or status.scaling_to is not None:
        return "/".join(str(a.weight) for a in spec.experiment.routes.arms)
    return "100%" if status.phase is Phase.PROMOTING else "0%"


HISTORY_HEADER = ("REVISION", "ATTEMPT", "STABLE -> CANARY", "OUTCOME", "STARTED", "FINISHED", "DECISION")


def history_lines(records: Sequence[RevisionRecord]) -> list[str]:
    """One row per revision and attempt (oldest first), each followed by its images when it has any."""
    rows = [(str(r.revision), str(r.attempt), f"{r.versions.replaced()} -> {r.versions.canary}", r.outcome,
             clock(r.started_at), clock(r.finished_at), decision_time(r)) for r in records]
    lines = table(HISTORY_HEADER, rows)
    out = [lines[0]]
    for record, line in zip(records, lines[1:], strict=True):
        out.append(line)
        v = record.versions
        if v.changed or v.stable_versions:  # a stack on several versions, or a release of part of it
            changes = f"; changes {', '.join(v.changed)}" if v.changed else ""
            out.append(wrapped(f"stable: {v.stable_described()}{changes}", "    "))
        images = images_text(v)
        if images:
            out.append(wrapped(f"images: {images}", "    "))
        if record.message:
            out.append(f"    {record.message}")
    return out


def decision_time(record: RevisionRecord) -> str:
    """From the canary's first traffic (else the start) to the deciding verdict."""
    begin = record.first_canary_traffic_at or record.started_at
    if record.decided_at is None or begin is None:
        return "-"
    return f"{record.decided_at - begin:.0f}s"


def render_history(status: ReleaseStatus, as_json: bool = False) -> str:
    """`canary history`: every revision and attempt of a release, as lines or as JSON."""
    records = all_revisions(status)
    if as_json:
        return json.dumps([r.for_storage() for r in records], sort_keys=True)
    if not records:
        return "no revision has started yet"
    return "\n".join(history_lines(records))
