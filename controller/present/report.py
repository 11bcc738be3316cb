"""The release report: one self-contained HTML file explaining what a release did and why.

Built from the release object (metadata + spec, as stored) and its persisted status
(`ReleaseStatus.for_storage()`): the outcome and its reason first, then the canary weight with every
verdict, per service the latency, error rates, latency distribution and each check's e-value against its
threshold, and the decision log with the numbers behind each decision. No scripts, no external fonts or
styles, charts are inline SVG: the file opens offline and can be attached to a ticket. Every string from
the release or its status is escaped. Reading is defensive: a report of a release with an invalid spec or
no history yet still renders.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any

from controller.core.operations import at_gate
from controller.core.status import ReleaseStatus, shown_verdict, versions_described
from controller.present.charts import (
    CANARY_COLOR,
    PALETTE,
    STABLE_COLOR,
    VERDICT_COLORS,
    Marker,
    Rule,
    Series,
    bar_chart,
    line_chart,
)
from controller.present.view import (
    REGRESSION_CHECKS,
    confidence_text,
    experiment_table,
    operator_choice,
)

CHECK_NAMES = ("errorRate", "slowTail", "latencyShift", "sampleRatio")
# The smallest e-value drawn on the log scale: anything below says "no evidence" just as well.
E_VALUE_FLOOR = 1e-3
PHASE_COLORS = {"Succeeded": "#009E73", "RolledBack": "#D55E00", "Failed": "#B00020", "Aborted": "#CC79A7",
                "RollingBack": "#D55E00", "Paused": "#E69F00"}

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:24px;color:#1b1b1b;
background:#fafafa;max-width:1240px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}.sub{color:#555;margin:0 0 14px}
.outcome{border-left:6px solid var(--c);background:#fff;padding:12px 16px;margin:12px 0;box-shadow:0 1px 2px #0002}
.outcome .phase{font-size:20px;font-weight:700;color:var(--c)}.outcome .why{font-size:15px;margin:6px 0}
.facts{display:grid;grid-template-columns:repeat(4,minmax(0,1fr));gap:8px;margin-top:10px}
.fact{background:#f3f3f3;padding:6px 8px;border-radius:4px}.fact b{display:block;font-size:16px}
.fact span{font-size:12px;color:#555}
.grid2{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:10px}
.card{background:#fff;box-shadow:0 1px 2px #0002;padding:6px}
svg.chart{width:100%;height:auto;display:block}
svg .chart-title{font-size:13px;font-weight:600}svg .tick{font-size:10px;fill:#555}
svg .axis-label,svg .legend,svg .rule-label{font-size:11px;fill:#333}svg .plot{fill:#fff;stroke:#bbb}
svg .grid{stroke:#eee}svg .no-data{font-size:13px;fill:#888}
table{border-collapse:collapse;width:100%;background:#fff;font-size:12px}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}th{background:#f0f0f0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.v-pass{color:#00795a;font-weight:600}.v-fail{color:#c03d00;font-weight:700}
.v-inconclusive{color:#a86f00;font-weight:600}.v-error{color:#a0407f;font-weight:600}
tr.row-fail td{background:#fff0e8}details{margin:2px 0}summary{cursor:pointer;color:#333}.muted{color:#777}
"""


def render_report(release: Mapping[str, Any], status: Mapping[str, Any], *, title: str | None = None) -> str:
    """The whole report as one HTML document (a str; write it with encoding="utf-8")."""
    view = _View(release, status)
    page_title = title or f"Release {view.name}: {view.phase}"
    body = [
        _header(view, page_title),
        _outcome(view),
        _experiment_section(view),
        _shadow_section(view),
        _weight_section(view),
        _services_section(view),
        _decision_log(view),
        _conditions(view),
        f'<p class="muted">From the persisted release status as of {escape(_when(view.as_of))}.</p>',
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{escape(page_title)}"
            f"</title><style>{_CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


class _View:
    """The release and status read defensively into the few things the report shows."""

    def __init__(self, release: Mapping[str, Any], status: Mapping[str, Any]) -> None:
        meta, spec = _map(release.get("metadata")), _map(release.get("spec"))
        self.status = status
        self.name = str(meta.get("name", "?"))
        self.namespace = str(meta.get("namespace", "default"))
        self.stable = str(_map(spec.get("stable")).get("version", "stable"))
        # `spec.stable.versions`: services of a stack an earlier release changed in part run their own version.
        self.stable_versions = {str(k): str(x) for k, x in _map(_map(spec.get("stable")).get("versions")).items()}
        self.canary = str(_map(spec.get("canary")).get("version", "canary"))
        # An A/B/n experiment's variants besides the stable and the canary version, in the spec's order.
        ab_test = _map(_map(spec.get("strategy")).get("abTest"))
        self.experiment = bool(ab_test)
        variants = (str(_map(x).get("name", "")) for x in _seq(ab_test.get("variants")))
        self.variants = [x for x in dict.fromkeys(variants) if x and x not in (self.stable, self.canary)]
        self.images = _map(_map(spec.get("canary")).get("images"))
        self.phase = str(status.get("phase", "Pending"))
        self.message = str(status.get("message", ""))
        self.history: list[Mapping[str, Any]] = [h for h in _seq(status.get("history")) if isinstance(h, Mapping)]
        stack = _map(spec.get("stack"))
        listed = [str(x) for x in _seq(stack.get("services"))]
        # The entry service is the one every request crosses: its counts are the release's traffic.
        self.entry = str(stack.get("entry") or (listed[0] if listed else ""))
        self.started_at = _float(status.get("startedAt"))
        # The report is pure (no clock): "as of" is the latest instant the status itself records.
        instants = [_float(h.get("at")) for h in self.history]
        instants += [_float(status.get(k)) for k in ("finishedAt", "phaseSince", "lastAnalysisAt", "startedAt")]
        self.as_of = max((x for x in instants if x is not None), default=None)
        self.services = self._services(spec)

    def stable_of(self, service: str) -> str:
        """The version `service` runs as the stable one: its own in `spec.stable.versions`, else the stack's."""
        return self.stable_versions.get(service, self.stable)

    @property
    def stable_described(self) -> str:
        """`v1`, or `v1 (ml-infer v2-model)` when services run stable versions of their own."""
        return versions_described(self.stable, self.stable_versions)

    def _services(self, spec: Mapping[str, Any]) -> list[str]:
        seen: list[str] = []
        for record in self.history:
            for check in _seq(record.get("checks")):
                service = str(_map(check).get("service", ""))
                if service and service not in seen:
                    seen.append(service)
        if not seen:
            seen = [str(s) for s in _seq(_map(spec.get("stack")).get("services"))]
        # The service that came closest to (or crossed) a threshold first: that is where to look.
        return sorted(seen, key=lambda s: -self.worst_ratio(s))

    def worst_ratio(self, service: str) -> float:
        ratios = [(_float(c.get("eValue")) or 0.0) / (_float(c.get("threshold")) or math.inf)
                  for c in self.checks_of(service)]
        return max(ratios, default=0.0)

    def checks_of(self, service: str, record: Mapping[str, Any] | None = None) -> Iterable[Mapping[str, Any]]:
        for rec in [record] if record is not None else self.history:
            for check in _seq(rec.get("checks")):
                if isinstance(check, Mapping) and check.get("service") == service:
                    yield check

    def rel(self, epoch: Any) -> float | None:
        value = _float(epoch)
        return None if value is None or self.started_at is None else value - self.started_at


# --- sections ----------------------------------------------------------------------------------------

def _header(v: _View, page_title: str) -> str:
    images = ", ".join(f"{escape(str(k))}={escape(str(i))}" for k, i in v.images.items())
    return (f"<h1>{escape(page_title)}</h1>"
            f'<p class="sub">namespace <b>{escape(v.namespace)}</b> · stable <b>{escape(v.stable_described)}</b> → '
            f"canary <b>{escape(v.canary)}</b>"
            + (f" · further variants <b>{escape(', '.join(v.variants))}</b>" if v.variants else "")
            + f" · services {escape(', '.join(v.services) or '-')}"
            + (f" · images {images}" if images else "") + "</p>")


def _outcome(v: _View) -> str:
    s = v.status
    color = PHASE_COLORS.get(v.phase, "#0072B2")
    facts = [
        ("time to decision", _duration(_span(s.get("firstCanaryTrafficAt"), s.get("decidedAt"))),
         "first canary request → deciding verdict"),
        ("release duration", _duration(_span(s.get("startedAt"), s.get("finishedAt"))), "start → final phase"),
        ("canary requests", f"{int(_float(s.get('totalCanaryRequests')) or 0):,}",
         "the busiest service's, in the analysed windows (not in the warm-up or windows not judged)"),
    ]
    last = v.history[-1] if v.history else None
    # An experiment's last look shows its decision; a canary's, the verdict the status keeps.
    latest = _shown(last) if last is not None and _shown(last) != last.get("verdict") else s.get("lastVerdict")
    facts.append(("analyses", str(len(v.history)), f"last verdict: {latest or '-'}"))
    why = v.message or (str(last.get("reason", "")) if last else "") or "no decision yet"
    fact_html = "".join(f'<div class="fact"><b>{escape(value)}</b><span>{escape(label)} — {escape(hint)}</span></div>'
                        for label, value, hint in facts)
    culprits = _failing_checks(last) if last else []
    culprit_html = ""
    if culprits:
        items = "".join(f"<li>{_check_sentence(c)}</li>" for c in culprits)
        culprit_html = f"<p>Checks that failed at the deciding analysis:</p><ul>{items}</ul>"
    return (f'<section class="outcome" style="--c:{color}"><div class="phase" data-phase="{escape(v.phase)}">'
            f"{escape(v.phase)}</div><div class=\"why\">{escape(why)}</div>{culprit_html}"
            f'<div class="facts">{fact_html}</div></section>')


def _experiment_section(v: _View) -> str:
    """An A/B experiment's result: who won and why, each variant's numbers and each treatment's difference from
    the control with its confidence interval, and at the operator's gate what approving and aborting do."""
    experiment = _map(v.status.get("experiment"))
    if not experiment.get("decision"):
        return ""
    headline, header, rows = experiment_table(experiment)
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    choice = (f"<p><b>Next:</b> {escape(operator_choice(experiment, v.stable_described, v.canary))}</p>"
              if _at_gate(v.status) else "")
    return (f"<h2>Experiment</h2><div class=\"card\"><p><b>{escape(headline)}</b></p>"
            f"<p>{escape(str(experiment.get('reason') or '-'))}</p><table><tr>{head}</tr>{body}</table>"
            f'<p class="muted">{escape(confidence_text(experiment))}</p>{choice}</div>')


def _at_gate(status: Mapping[str, Any]) -> bool:
    """`operations.at_gate` of a status read as stored; a status that does not parse is at no gate."""
    try:
        return at_gate(ReleaseStatus.from_storage(status))
    except (ValueError, TypeError, KeyError, AttributeError):
        return False


def _weight_section(v: _View) -> str:
    if v.experiment:
        return _experiment_traffic_section(v)
    first = v.rel(v.status.get("firstCanaryTrafficAt"))
    points: list[tuple[float, float | None]] = [(0.0, 0.0)]
    if first:
        points.append((first, 0.0))
    markers = []
    for record in v.history:
        t, weight = _float(record.get("t")) or 0.0, _float(record.get("weight")) or 0.0
        verdict = _shown(record)
        points.append((t, weight))
        markers.append(Marker(t, weight, VERDICT_COLORS.get(_verdict_class(verdict), "#777"),
                              f"t={t:.1f}s {weight:g}%: {verdict} → {record.get('action', '')}"))
    points += _final_weight_points(v, points[-1][1] or 0.0)
    chart = line_chart("Canary weight (%) and each analysis verdict",
                       [Series(f"canary weight ({v.canary})", tuple(points), CANARY_COLOR, steps=True)],
                       y_label="% of traffic", y_min=0, y_max=100, markers=markers, kind="weight",
                       width=1200, height=240)
    legend = " ".join(f'<span class="v-{k}">● {k}</span>' for k in VERDICT_COLORS)
    return f'<h2>Traffic</h2><div class="card">{chart}<p class="muted">Verdicts: {legend}</p></div>'


def _experiment_traffic_section(v: _View) -> str:
    """An experiment's traffic: each variant's share of the entry's requests in each look, as served (its users
    are split by the variants' weights, and a returning user stays on their variant). The look's decision is a
    marker on the treatment's line. The status's canary weight is the treatment's share of its pair with the
    control, which the guardrails judge, not a split of the traffic, so it is not drawn."""
    roles = _versions_of(v, v.entry)
    shares: list[list[tuple[float, float | None]]] = [[] for _ in roles]
    markers = []
    for record in v.history:
        t = _float(record.get("t")) or 0.0
        entry = _map(_map(record.get("counts")).get(v.entry))
        served = [_float(_at(entry, path).get("requests")) or 0.0 for path, _, _ in roles]
        for points, n in zip(shares, served, strict=True):
            points.append((t, 100 * n / sum(served) if sum(served) else None))
        verdict = _shown(record)
        markers.append(Marker(t, shares[1][-1][1] or 0.0, VERDICT_COLORS.get(_verdict_class(verdict), "#777"),
                              f"t={t:.1f}s: {verdict} → {record.get('action', '')}"))
    chart = line_chart(f"Each variant's share of {v.entry}'s requests per look (%), and each look's decision",
                       [Series(name, tuple(points), color) for (_, name, color), points in zip(roles, shares,
                                                                                            strict=True)],
                       y_label="% of requests", y_min=0, y_max=100, markers=markers, kind="weight",
                       width=1200, height=240)
    legend = " ".join(f'<span class="v-{k}">● {k}</span>' for k in VERDICT_COLORS)
    return (f'<h2>Traffic</h2><div class="card">{chart}<p class="muted">Decisions, coloured as verdicts: {legend}'
            "</p></div>")


def _versions_of(v: _View, service: str) -> list[tuple[tuple[str, ...], str, str]]:
    """Each version a look counts for `service`: where its counts are in `counts[service]`, its name, its colour
    (the stable version that service runs, the canary, then an A/B/n experiment's further variants)."""
    versions: list[tuple[tuple[str, ...], str, str]] = [(("baseline",), v.stable_of(service), STABLE_COLOR),
                                                        (("canary",), v.canary, CANARY_COLOR)]
    return versions + [(("variants", name), name, PALETTE[(i + 2) % len(PALETTE)]) for i, name in enumerate(v.variants)]


def _at(counts: Mapping[str, Any], path: tuple[str, ...]) -> Mapping[str, Any]:
    """`counts[path[0]][path[1]]...`, each level read defensively."""
    for key in path:
        counts = _map(counts.get(key))
    return counts


def _final_weight_points(v: _View, last_weight: float) -> list[tuple[float, float | None]]:
    """The last weight holds until the routes changed for good: 100% on promotion, 0% on rollback."""
    if v.phase == "Succeeded":
        t, final = v.rel(v.status.get("finishedAt")), 100.0
    elif v.phase in ("RolledBack", "Aborted", "Failed", "RollingBack"):
        t, final = v.rel(v.status.get("canaryOffAt")) or v.rel(v.status.get("finishedAt")), 0.0
    else:
        return []
    return [] if t is None else [(t, last_weight), (t, final)]


def _services_section(v: _View) -> str:
    if not v.services:
        return "<h2>Services</h2><p class=\"muted\">No services analysed yet.</p>"
    cards = [f'<h3 id="svc-{escape(s)}">{escape(s)}</h3><div class="grid2">'
             f'<div class="card">{_latency_chart(v, s)}</div><div class="card">{_evalue_chart(v, s)}</div>'
             f'<div class="card">{_error_chart(v, s)}</div><div class="card">{_distribution_chart(v, s)}</div></div>'
             for s in v.services]
    return ("<h2>Services</h2><p class=\"muted\">Ordered by how close each came to a threshold. Latency "
            "quantiles and e-values are cumulative over the analysis; error rates are per interval.</p>"
            + "".join(cards))


def _latency_chart(v: _View, service: str) -> str:
    stable = v.stable_of(service)
    keys = (("p50BaselineMs", f"{stable} p50", STABLE_COLOR, True), ("p99BaselineMs", f"{stable} p99",
            STABLE_COLOR, False), ("p50CanaryMs", f"{v.canary} p50", CANARY_COLOR, True),
            ("p99CanaryMs", f"{v.canary} p99", CANARY_COLOR, False))
    series = [Series(label, tuple(_check_points(v, service, "latencyShift", lambda c, k=key: _estimate(c, k))),
                     color, dashed=dashed) for key, label, color, dashed in keys]
    return line_chart(f"{service}: latency p50 / p99 (ms)", [s for s in series if s.points],
                      y_label="ms", kind="latency")


def _error_chart(v: _View, service: str) -> str:
    """Each version's error rate per interval: the stable one, the canary, and an A/B/n experiment's further
    variants (their counts are under the service's `variants`)."""
    series = []
    for path, version, color in _versions_of(v, service):
        points = []
        for record in v.history:
            counts = _at(_map(_map(record.get("counts")).get(service)), path)
            requests = _float(counts.get("requests")) or 0.0
            rate = 100 * (_float(counts.get("errors")) or 0.0) / requests if requests else None
            points.append((_float(record.get("t")) or 0.0, rate))
        series.append(Series(f"{version} errors", tuple(points), color))
    return line_chart(f"{service}: error rate per interval (%)", series, y_label="% of requests", kind="errors")


def _evalue_chart(v: _View, service: str) -> str:
    series: list[Series] = []
    thresholds: set[float] = set()
    for i, check in enumerate(CHECK_NAMES):
        points = tuple(_check_points(v, service, check,
                                     lambda c: max(_float(c.get("eValue")) or E_VALUE_FLOOR, E_VALUE_FLOOR)))
        if points:
            series.append(Series(check, points, PALETTE[(i + 2) % len(PALETTE)]))
        thresholds.update(t for c in v.checks_of(service) if (t := _float(c.get("threshold"))))
    rules = [Rule(t, f"the regression sum (or a check alone) fails at {t:g}", "#B00020") for t in sorted(thresholds)]
    return line_chart(f"{service}: e-value of each check vs threshold (log)", series, y_label="e-value",
                      log_y=True, rules=rules, kind="evalues")


def _distribution_chart(v: _View, service: str) -> str:
    judged = _map(_map(_map(v.status.get("judgeState")).get("services")).get(service))
    bounds = [b for b in _seq(_map(v.status.get("judgeState")).get("boundsMs")) if isinstance(b, (int, float))]
    base = [_float(x) or 0.0 for x in _seq(_map(judged.get("baseline")).get("buckets"))]
    can = [_float(x) or 0.0 for x in _seq(_map(judged.get("canary")).get("buckets"))]
    title = f"{service}: latency distribution (share of requests per bucket)"
    if not base or not can or len(base) != len(can):
        return bar_chart(title, [], [], kind="distribution")
    labels = [f"≤{b:g}" for b in bounds] + ["+Inf"]
    used = [i for i in range(len(base)) if base[i] or can[i]]
    lo, hi = min(used, default=0), max(used, default=0) + 1
    shares = [[100 * x / (sum(vals) or 1) for x in vals[lo:hi]] for vals in (base, can)]
    return bar_chart(title, labels[lo:hi], [(v.stable_of(service), shares[0], STABLE_COLOR),
                                            (v.canary, shares[1], CANARY_COLOR)],
                     y_label="% of requests", x_label="latency bucket (ms)", kind="distribution",
                     value_format=lambda x: f"{x:.1f}%")


def _shadow_section(v: _View) -> str:
    """A shadow phase (docs/shadow.md): the verdict and its numbers, the distribution of overlaps, and the searches
    whose answers differed most, both lists side by side."""
    shadow = _map(v.status.get("shadow"))
    verdict = _map(shadow.get("verdict"))
    if not verdict:
        return ""
    decision = str(verdict.get("decision", "inconclusive"))
    low, high = [*_seq(verdict.get("differenceBounds")), None, None][:2]
    facts = (f'<p><span class="v-{escape(decision)}">{escape(decision.upper())}</span> after '
             f"{escape(_num(verdict.get('pairs'), '{:.0f}'))} pairs of answers: mean RBO "
             f"{escape(_num(verdict.get('meanOverlap')))}{escape(_within(verdict.get('meanOverlapBounds')))} against "
             "the stable version's "
             f"{escape(_num(verdict.get('meanNoiseOverlap')))} with itself; difference "
             f"{escape(_num(verdict.get('difference')))} in [{escape(_num(low))}, {escape(_num(high))}] against the "
             f"margin {escape(_num(verdict.get('margin')))}. {escape(str(verdict.get('reason', '')))}.</p>")
    hist = [_float(x) or 0.0 for x in _seq(verdict.get("overlapHistogram"))]
    labels = [f"{i / max(len(hist) - 1, 1):.1f}" for i in range(len(hist))]
    chart = bar_chart("Rank-biased overlap of the new version's answer with the stable one's", labels,
                      [(v.canary, hist, CANARY_COLOR)], y_label="searches", x_label="RBO", kind="overlap",
                      value_format=lambda x: f"{x:.0f}")
    rows = "".join(
        f"<tr><td>{escape(str(w.get('query', '')))}</td><td class=\"num\">{escape(_num(w.get('overlap'), '{:.2f}'))}"
        f"</td><td>{escape(', '.join(str(d) for d in _seq(w.get('stable'))))}</td>"
        f"<td>{escape(', '.join(str(d) for d in _seq(w.get('new'))))}</td></tr>"
        for w in (_map(x) for x in _seq(verdict.get("mostDifferent"))))
    table = (f"<table><tr><th>search</th><th>RBO</th><th>{escape(v.stable_described)} (top-k)</th>"
             f"<th>{escape(v.canary)} (top-k)</th></tr>{rows}</table>") if rows else ""
    return (f"<h2>Shadow phase: rankings compared</h2>{facts}<div class=\"card\">{chart}</div>"
            f"<h3>The searches whose answers differ most</h3>{table}")


def _within(interval: Any) -> str:
    bounds = [_float(x) for x in _seq(interval)]
    return f" in [{_num(bounds[0])}, {_num(bounds[1])}]" if len(bounds) == 2 else ""


def _decision_log(v: _View) -> str:
    if not v.history:
        return "<h2>Decision log</h2><p class=\"muted\">No analysis has run yet.</p>"
    rows, versions = [], _versions_of(v, v.entry)
    for i, record in enumerate(v.history):
        verdict = _shown(record)
        worst = max(_seq(record.get("checks")), default=None, key=lambda c: _float(_map(c).get("eValue")) or 0.0)
        cells = "".join(f'<td class="num">{cell}</td>' for cell in _entry_counts(v, record))
        rows.append(
            f'<tr><td class="num">{_num(record.get("t"), "{:.1f}")}</td><td class="num">{_step(record)}</td>'
            f'<td class="num">{_num(record.get("weight"), "{:g}")}%</td>'
            f'<td class="v-{escape(_verdict_class(verdict))}">'
            f"{escape(verdict)}</td><td>{escape(str(record.get('action', '')))}</td>"
            f"<td>{escape(str(record.get('reason', '')))}</td>{cells}"
            f'<td class="num">{_harm_sum(record)}</td>'
            f"<td>{_check_sentence(_map(worst)) if worst else '-'}</td></tr>"
            f'<tr><td></td><td colspan="{7 + len(versions)}">'
            f"{_checks_details(record, open_=i == len(v.history) - 1)}</td></tr>")
    head = ("<tr><th>t (s)</th><th>step</th><th>weight</th><th>verdict</th><th>action</th><th>reason</th>"
            + "".join(f"<th>{escape(name)} req / err</th>" for _, name, _ in versions) +
            "<th>harm: regression e-values sum / fails at</th><th>largest term</th></tr>")
    return f'<h2>Decision log</h2><table class="decisions">{head}{"".join(rows)}</table>'


def _checks_details(record: Mapping[str, Any], open_: bool) -> str:
    rows = []
    for c in (_map(c) for c in _seq(record.get("checks"))):
        verdict = str(c.get("verdict", ""))
        samples = _map(c.get("samples"))
        estimates = _estimates_cell(_map(c.get("estimates")))
        row_class = ' class="row-fail"' if verdict in ("fail", "error") else ""
        rows.append(f"<tr{row_class}><td>{escape(str(c.get('service', '')))}</td>"
                    f"<td>{escape(str(c.get('check', '')))}</td>"
                    f'<td class="v-{escape(verdict)}">{escape(verdict)}</td>'
                    f'<td class="num">{_num(c.get("eValue"))}</td><td class="num">{_num(c.get("threshold"))}</td>'
                    f'<td class="num">{_num(c.get("pValue"))}</td>'
                    f'<td class="num">{_num(samples.get("baseline"), "{:g}")} / {_num(samples.get("canary"), "{:g}")}'
                    f"</td><td>{estimates}</td></tr>")
    table = ("<table><tr><th>service</th><th>check</th><th>verdict</th><th>e-value</th>"
             "<th title=\"the regression e-values of every service, summed, fail the release here; a check alone "
             "does too\">sum fails at</th>"
             "<th>p-value</th><th>samples (stable / canary)</th><th>estimates</th></tr>" + "".join(rows) + "</table>")
    return f"<details{' open' if open_ else ''}><summary>all {len(rows)} checks</summary>{table}</details>"


def _estimates_cell(estimates: Mapping[str, Any]) -> str:
    """A check's estimates as read: the safety bound against its margin first (what a pass waits on), in words,
    then every other estimate as name=value, nested values flattened (a confidence sequence as [low, high])."""
    parts = []
    safety = _map(estimates.get("safety"))
    if safety.get("margin") is not None:
        shown = bool(safety.get("shown"))
        text = (f"safety: bound {_short(safety.get('bound'))} {'&lt;' if shown else '&ge;'} margin "
                f"{_short(safety.get('margin'))}{' on the ' + escape(str(safety['on'])) if safety.get('on') else ''}"
                f" ({'shown' if shown else 'not yet shown'}")
        needed = _float(safety.get("requestsNeeded"))
        if not shown and needed is not None:
            text += f"; at about {needed:,.0f} canary requests in all, if the estimate holds"
        if safety.get("why"):
            text += f"; {escape(str(safety['why']))}"
        parts.append(f"<b>{text})</b>")
    for key, value in estimates.items():
        if key == "safety":
            continue
        shown_value = (", ".join(f"{k}={_short(x)}" for k, x in value.items()) if isinstance(value, Mapping)
                       else _short(value))
        parts.append(f"{escape(str(key))}={escape(shown_value)}")
    return ", ".join(parts)


def _conditions(v: _View) -> str:
    rows = "".join(
        f"<tr><td>{escape(str(c.get('type', '')))}</td><td>{escape(str(c.get('status', '')))}</td>"
        f"<td>{escape(str(c.get('reason', '')))}</td><td>{escape(str(c.get('message', '')))}</td>"
        f"<td>{escape(_when(_float(c.get('lastTransitionTime'))))}</td></tr>"
        for c in (_map(c) for c in _seq(v.status.get("conditions"))))
    if not rows:
        return ""
    return ("<h2>Conditions</h2><table><tr><th>type</th><th>status</th><th>reason</th><th>message</th>"
            f"<th>since</th></tr>{rows}</table>")


# --- reading helpers ---------------------------------------------------------------------------------

def _check_points(v: _View, service: str, check: str, value: Any) -> list[tuple[float, float | None]]:
    points = []
    for record in v.history:
        for c in v.checks_of(service, record):
            if c.get("check") == check:
                points.append((_float(record.get("t")) or 0.0, value(c)))
    return points


def _shown(record: Mapping[str, Any]) -> str:
    """A look's verdict as shown: a canary's verdict, an experiment's decision (`status.shown_verdict`)."""
    return shown_verdict(str(record.get("verdict", "")), _map(record.get("counts")))


# An experiment's decisions drawn in the colours of the verdicts they read like.
_DECISION_CLASSES = {"winner": "pass", "continue": "inconclusive", "no_difference": "inconclusive", "harmful": "fail"}


def _verdict_class(verdict: str) -> str:
    return _DECISION_CLASSES.get(verdict, verdict)


def _failing_checks(record: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [_map(c) for c in _seq(record.get("checks")) if _map(c).get("verdict") in ("fail", "error")]


def _check_sentence(c: Mapping[str, Any]) -> str:
    """A check as the rule uses it: its e-value is a term of the regression sum that fails at the threshold
    (sample-ratio: alone against it); its safety bound against the margin decides a pass."""
    term = "alone" if c.get("check") == "sampleRatio" else "a term of the sum that"
    safety = _map(_map(c.get("estimates")).get("safety"))
    bound = ""
    if safety.get("margin") is not None:
        bound = (f"; safety bound {_num(safety.get('bound'))} {'&lt;' if safety.get('shown') else '&ge;'} "
                 f"margin {_num(safety.get('margin'))}")
    return (f"<b>{escape(str(c.get('service', '?')))}</b> {escape(str(c.get('check', '?')))}: "
            f"e-value {_num(c.get('eValue'))}, {term} fails at {_num(c.get('threshold'))}{bound}"
            f" (<span class=\"v-{escape(str(c.get('verdict', '')))}\">{escape(str(c.get('verdict', '')))}</span>)")


def _harm_sum(record: Mapping[str, Any]) -> str:
    """The number the harm rule compares: the regression e-values of every service, summed, against K/alpha."""
    checks = [_map(c) for c in _seq(record.get("checks"))]
    terms = [_float(c.get("eValue")) or 0.0 for c in checks if c.get("check") in REGRESSION_CHECKS]
    threshold = next((_float(c.get("threshold")) for c in checks if _float(c.get("threshold"))), None)
    if not terms or threshold is None:
        return "-"
    return f"{_num(sum(terms))} / {_num(threshold)}"


def _entry_counts(v: _View, record: Mapping[str, Any]) -> list[str]:
    """The entry service's requests / errors in one look, per version `_versions_of` names."""
    counts = _map(record.get("counts"))
    service = v.entry if v.entry in counts else next(iter(counts), "")
    c = _map(counts.get(service))
    return [f"{_num(_at(c, path).get('requests'), '{:g}')} / {_num(_at(c, path).get('errors'), '{:g}')}"
            for path, _, _ in _versions_of(v, service)]


def _estimate(check: Mapping[str, Any], key: str) -> float | None:
    return _float(_map(check.get("estimates")).get(key))


def _step(record: Mapping[str, Any]) -> str:
    step = _float(record.get("step"))
    return "-" if step is None else str(int(step) + 1)


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _seq(value: Any) -> Sequence[Any]:
    return value if isinstance(value, (list, tuple)) else ()


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _span(start: Any, end: Any) -> float | None:
    a, b = _float(start), _float(end)
    return None if a is None or b is None else b - a


def _num(value: Any, fmt: str = "{:.3g}") -> str:
    number = _float(value)
    return "-" if number is None else escape(fmt.format(number))


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_short(x) for x in value) + "]"
    return str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def _when(epoch: float | None) -> str:
    if not epoch:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
