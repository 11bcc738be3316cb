"""The release report: valid HTML, well-formed inline SVG, the expected charts and series, escaping, and a
real render in headless Chromium when it is installed."""

from __future__ import annotations

import os
import struct
import subprocess
import xml.etree.ElementTree as ET
import zlib
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from controller.core.spec.release import parse_release
from controller.core.status import HISTORY_LIMIT, DecisionRecord, Phase, ReleaseStatus
from controller.present.charts import Series, line_chart, nice_ticks
from controller.present.report import render_report
from tests.support.tools import require_tool

SERVICES = ("master-search", "ml-search")
EVIL = '<script>alert("x")</script>'


def _check(service: str, check: str, e: float, verdict: str = "pass", **estimates: float) -> dict[str, Any]:
    return {"service": service, "check": check, "verdict": verdict, "eValue": e, "threshold": 400.0,
            "pValue": min(1.0, 1 / e), "samples": {"baseline": 900, "canary": 100}, "estimates": estimates}


def _record(t: float, weight: int, verdict: str, e_slow: float, canary_errors: int) -> DecisionRecord:
    checks = []
    for s in SERVICES:
        checks += [
            _check(s, "errorRate", 1.0, rateBaseline=0.0, rateCanary=canary_errors / 100),
            _check(s, "slowTail", e_slow if s == "ml-search" else 0.5,
                   "fail" if s == "ml-search" and e_slow >= 400 else "pass"),
            _check(s, "latencyShift", 2.0, p50BaselineMs=20.0, p50CanaryMs=22.0, p99BaselineMs=90.0,
                   p99CanaryMs=140.0 + t),
            _check(s, "sampleRatio", 0.2, canaryShare=weight / 100, intendedShare=weight / 100),
        ]
    counts = {s: {"baseline": {"requests": 400, "errors": 1}, "canary": {"requests": 100, "errors": canary_errors}}
              for s in SERVICES}
    return DecisionRecord(at=1000.0 + t, t=t, step=0 if t < 20 else 1, weight=weight, verdict=verdict,
                          reason="ml-search slowTail crossed" if verdict == "fail" else "no check crossed",
                          action="roll back" if verdict == "fail" else "next step", checks=tuple(checks),
                          counts=counts)


def _release(name: str = "search-v2") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "shop"},
            "spec": {"stack": {"entry": "master-search", "services": list(SERVICES)},
                     "stable": {"version": "v1"}, "canary": {"version": "v2", "images": {"ml-search": "ml:2"}}}}


def _status(message: str = "ml-search slowTail: e-value 2.6e+03 >= 400") -> dict[str, Any]:
    status = ReleaseStatus(phase=Phase.PROGRESSING, started_at=1000.0, first_canary_traffic_at=1003.0)
    for record in (_record(10, 10, "pass", 3.0, 0), _record(20, 10, "pass", 40.0, 2), _record(30, 25, "fail", 2600, 9)):
        status = status.with_decision(record)
    status = status.with_phase(Phase.ROLLED_BACK, 1040.0, message)
    judge = {"boundsMs": [5, 25, 100], "services": {"ml-search": {"baseline": {"buckets": [10, 80, 10, 0]},
                                                                  "canary": {"buckets": [5, 40, 40, 15]}}}}
    status = replace(status, decided_at=1030.0, canary_off_at=1035.0, judge_state=judge)
    return status.for_storage()


class _Collector(HTMLParser):
    """Checks nesting of non-void elements and collects the raw text of every <svg> and <script>."""

    VOID = {"meta", "br", "img", "input", "link", "hr", "col", "path", "circle", "rect", "line"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
            return
        self.stack.pop()


def _parse(html: str) -> _Collector:
    parser = _Collector()
    parser.feed(html)
    parser.close()
    return parser


def _svgs(html: str) -> list[ET.Element]:
    out, start = [], 0
    while (i := html.find("<svg", start)) >= 0:
        j = html.index("</svg>", i) + len("</svg>")
        out.append(ET.fromstring(html[i:j]))  # noqa: S314 - our own output
        start = j
    return out


def _chart(svgs: list[ET.Element], kind: str, title_part: str = "") -> ET.Element:
    ns = "{http://www.w3.org/2000/svg}"
    for svg in svgs:
        title = svg.findtext(f"{ns}title") or ""
        if svg.get("data-chart") == kind and title_part in title:
            return svg
    raise AssertionError(f"no {kind} chart with {title_part!r}")


def _series(svg: ET.Element) -> list[str]:
    return [g.get("data-series", "") for g in svg.iter("{http://www.w3.org/2000/svg}g")
            if g.get("class") == "series"]


def test_report_is_valid_html_with_well_formed_svgs() -> None:
    html = render_report(_release(), _status())
    parsed = _parse(html)
    assert parsed.errors == []
    assert parsed.stack == []
    svgs = _svgs(html)
    # weight + four per service
    assert len(svgs) == 1 + 4 * len(SERVICES)
    assert all(svg.get("data-chart") for svg in svgs)


def test_report_is_self_contained() -> None:
    html = render_report(_release(), _status())
    tags = _parse(html).tags
    assert not [t for t, _ in tags if t in ("script", "link", "img", "iframe")]
    for _, attrs in tags:
        for key, value in attrs.items():
            if key in ("src", "href") and value:
                pytest.fail(f"external reference {key}={value}")
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in html
    assert "@import" not in html and "url(" not in html


def test_report_has_every_chart_and_series() -> None:
    svgs = _svgs(render_report(_release(), _status()))
    assert _series(_chart(svgs, "weight")) == ["canary weight (v2)"]
    assert _series(_chart(svgs, "latency", "ml-search")) == ["v1 p50", "v1 p99", "v2 p50", "v2 p99"]
    assert _series(_chart(svgs, "errors", "master-search")) == ["v1 errors", "v2 errors"]
    evalues = _chart(svgs, "evalues", "ml-search")
    assert _series(evalues) == ["errorRate", "slowTail", "latencyShift", "sampleRatio"]
    rules = [g.get("data-rule") for g in evalues.iter("{http://www.w3.org/2000/svg}g") if g.get("class") == "rule"]
    assert rules == ["the regression sum (or a check alone) fails at 400"]
    assert _series(_chart(svgs, "distribution", "ml-search")) == ["v1", "v2"]
    # One verdict marker per analysis on the weight chart.
    circles = _chart(svgs, "weight").iter("{http://www.w3.org/2000/svg}circle")
    markers = [c for c in circles if c.get("class") == "marker"]
    assert len(markers) == 3


def test_failing_service_comes_first_and_outcome_explains() -> None:
    html = render_report(_release(), _status())
    assert html.index('id="svc-ml-search"') < html.index('id="svc-master-search"')
    outcome = html[html.index('class="outcome"'):html.index("<h2>Traffic")]
    assert "RolledBack" in outcome
    assert "ml-search slowTail: e-value 2.6e+03 &gt;= 400" in outcome
    assert "27.0 s" in outcome  # time to decision: decidedAt - firstCanaryTrafficAt
    assert "e-value 2.6e+03, a term of the sum that fails at 400" in outcome


def test_decision_log_has_numbers_of_every_decision() -> None:
    html = render_report(_release(), _status())
    log = html[html.index("<h2>Decision log"):]
    # The failing decision row, and its failing check (ml-search slowTail) in the detail table.
    assert log.count('<td class="v-fail">fail</td>') == 2
    assert log.count("<details") == 3 and log.count("<details open>") == 1
    for t in ("10.0", "20.0", "30.0"):
        assert f'<td class="num">{t}</td>' in log
    assert "e-value 2.6e+03, a term of the sum that fails at 400" in log  # the last decision's largest term
    assert "e-value 40, a term of the sum that fails at 400" in log
    # What the harm rule compares: the 6 regression checks' e-values summed (1 + 0.5 + 2 and 1 + 3 + 2 first).
    assert '<td class="num">9.5 / 400</td>' in log and '<td class="num">2.61e+03 / 400</td>' in log
    assert "100 / 9" in log  # canary requests / errors at the entry service in the last interval


def test_a_checks_estimates_read_as_words_with_its_safety_bound_first() -> None:
    """The detail table's estimates: the safety bound against its margin in words (what a pass waits on), then
    the other estimates as name=value, a confidence sequence as [low, high]; no Python dict in the page."""
    status = _status()
    last = status["history"][-1]["checks"]
    last[0]["estimates"] = {"ratio": 1.5, "ratioConfidenceSequence": [0.42, 3.97],
                            "safety": {"shown": False, "bound": 3.97, "margin": 1.5, "on": "ratio",
                                       "requestsNeeded": 2400}}
    last[1]["estimates"] = {"safety": {"shown": True, "bound": 0.0123, "margin": 0.02, "on": "excess",
                                       "requestsNeeded": 0}, "thresholdMs": 250.0}
    html = render_report(_release(), status)
    assert ("<b>safety: bound 3.97 &ge; margin 1.5 on the ratio (not yet shown; at about 2,400 canary requests in "
            "all, if the estimate holds)</b>, ratio=1.5, ratioConfidenceSequence=[0.42, 3.97]") in html
    assert "<b>safety: bound 0.0123 &lt; margin 0.02 on the excess (shown)</b>, thresholdMs=250" in html
    assert "{" not in html[html.index("<h2>Decision log"):].replace("{}", "")


def test_every_user_string_is_escaped() -> None:
    release = _release(name=EVIL)
    release["metadata"]["namespace"] = EVIL
    release["spec"]["canary"]["version"] = EVIL
    status = _status(message=EVIL)
    status["history"][-1]["reason"] = EVIL
    status["history"][-1]["checks"][0]["service"] = EVIL
    status["conditions"] = [{"type": EVIL, "status": "True", "reason": EVIL, "message": EVIL}]
    html = render_report(release, status, title=EVIL)
    assert "<script" not in html
    assert "&lt;script&gt;" in html
    assert _parse(html).errors == []
    for svg in _svgs(html):
        assert svg.get("data-chart")


def test_a_long_release_whose_older_decisions_are_compacted_renders_them_all() -> None:
    """Past the whole decisions' byte budget (controller.core.status.bounded_history) older decisions keep only
    each check's verdict, e-value and threshold: they still have their row, their e-values and markers."""
    status = ReleaseStatus(phase=Phase.PROGRESSING, started_at=1000.0)
    for i in range(HISTORY_LIMIT):
        status = status.with_decision(_record(float(10 * i + 10), 10, "pass", 3.0 + i, 0))
    compacted = [r for r in status.history if "estimates" not in r.checks[0]]
    assert compacted and len(compacted) < len(status.history)
    html = render_report(_release(), status.for_storage())
    assert _parse(html).errors == []
    log = html[html.index("<h2>Decision log"):]
    assert log.count("<details") == len(status.history)
    svgs = _svgs(html)
    assert _series(_chart(svgs, "evalues", "ml-search")) == ["errorRate", "slowTail", "latencyShift", "sampleRatio"]
    circles = _chart(svgs, "weight").iter("{http://www.w3.org/2000/svg}circle")
    assert len([c for c in circles if c.get("class") == "marker"]) == len(status.history)


def test_empty_history_renders() -> None:
    html = render_report(_release(), ReleaseStatus().for_storage())
    parsed = _parse(html)
    assert parsed.errors == [] and parsed.stack == []
    assert "Pending" in html
    assert "No analysis has run yet" in html
    for svg in _svgs(html):
        assert svg.get("data-chart")


def test_garbage_status_does_not_crash() -> None:
    html = render_report({"metadata": "x", "spec": []}, {"history": [1, {"checks": "no", "t": "x"}], "phase": 3})
    assert _parse(html).errors == []


def test_line_chart_log_scale_and_gaps() -> None:
    chart = line_chart("e", [Series("a", ((0, 1e-3), (1, None), (2, 1e6)))], log_y=True)
    svg = ET.fromstring(chart)  # noqa: S314 - our own output
    path = next(svg.iter("{http://www.w3.org/2000/svg}path")).get("d", "")
    assert path.count("M") == 2  # the gap lifts the pen
    ticks = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text") if t.get("class") == "tick"]
    y_ticks = ticks[:ticks.index("0")]  # y ticks come first, then the x ticks from 0
    assert y_ticks[0] == "1e-3" and "1000" in y_ticks and len(y_ticks) >= 4


def test_nice_ticks_cover_range() -> None:
    ticks = nice_ticks(0, 97, 4)
    assert ticks[0] <= 0 and ticks[-1] >= 97
    assert len(ticks) <= 6
    assert nice_ticks(0, 0.37, 4) == [0, 0.1, 0.2, 0.3, 0.4]


# --- a real browser --------------------------------------------------------------------------------

def _chromium() -> str:
    return require_tool("chromium", "chromium-browser", install="apt-get install chromium")


def _png_pixels(data: bytes) -> tuple[int, int, bytes, int]:
    """Decode an 8-bit RGB/RGBA non-interlaced PNG (what Chromium writes) into raw unfiltered rows."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    height = channels = 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and color in (2, 6)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw, stride = zlib.decompress(idat), width * channels
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b, c = prev[i], prev[i - channels] if i >= channels else 0
            pred = (0, a, b, (a + b) // 2, _paeth(a, b, c))[f] if f else 0
            line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, b"".join(rows), channels


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


@pytest.mark.integration
@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(render_report(_release(), _status()), encoding="utf-8")
    shot = tmp_path / "shot.png"
    profile = tmp_path / "profile"
    profile.mkdir()
    cmd = [str(_chromium()), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=800,600", page.as_uri()]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "HOME": str(tmp_path)})
    try:
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    assert shot.exists(), "chromium wrote no screenshot"
    width, height, pixels, channels = _png_pixels(shot.read_bytes())
    assert (width, height) == (800, 600)
    lum = [sum(pixels[i:i + 3]) / 3 for i in range(0, len(pixels), channels * 7)]
    mean = sum(lum) / len(lum)
    variance = sum((x - mean) ** 2 for x in lum) / len(lum)
    # A blank page (or an error page) is one flat colour; the report has text and charts.
    assert variance > 100, f"screenshot looks blank (variance {variance:.1f})"
    dark = sum(1 for x in lum if x < 100) / len(lum)
    assert dark > 0.005, "no text or lines drawn"


def test_an_experiments_report_says_who_won_with_its_interval_and_what_the_operator_decides() -> None:
    experiment = {"decision": "winner",
                  "reason": "v2 beats v1 on click-through: difference in [0.003289, 0.09442] (confidence interval, "
                            "valid at every look)",
                  "winner": "v2", "metric": "click-through", "control": "v1", "treatment": "v2",
                  "comparisons": {"v2": {"difference": 0.0489, "interval": [0.0033, 0.0944], "ratio": 1.51,
                                         "ratioInterval": [1.06, 2.17], "verdict": "better"}},
                  "alphaPerComparison": 0.05, "rates": {"v1": 0.095, "v2": 0.1438}, "samples": {"v1": 1716, "v2": 723},
                  "unit": "user", "users": {"v1": 245, "v2": 235}, "durationSeconds": 61.1, "looks": 5,
                  "stoppedBy": "primary"}
    status = ReleaseStatus(phase=Phase.PAUSED, started_at=1000.0, experiment=experiment).with_condition(
        "Paused", "True", "AwaitingPromotion", "experiment ended", 1061.0).for_storage()
    html = render_report(_release(), status)
    assert not _parse(html).errors
    section = html[html.index("<h2>Experiment</h2>"):html.index("<h2>Traffic</h2>")]
    assert "experiment on click-through: winner v2, stopped by the primary metric after 61s, 5 looks" in section
    assert "<td>v2</td><td>235</td><td>723</td><td>0.1438</td><td>+0.0489 [+0.0033, +0.0944]</td>" in section
    assert "95% confidence sequences, valid at every look" in section
    assert "`canary approve` promotes v2, `canary abort` keeps v1" in section
    assert "<h2>Experiment</h2>" not in render_report(_release(), _status())  # a canary release has none


def test_an_experiments_decision_log_shows_each_looks_decision_not_the_guardrails_verdict() -> None:
    """The log's verdict column, the weight chart's markers and the outcome's last verdict of an experiment are its
    decision at each look (`counts["primary"]["decision"]`); they had shown the guardrails' `inconclusive`."""
    status = ReleaseStatus(phase=Phase.PROGRESSING, started_at=1000.0, first_canary_traffic_at=1003.0)
    for t, decision, action in ((10, "continue", "continue"), (20, "winner", "promote v2")):
        record = _record(t, 50, "inconclusive", 3.0, 0)
        counts = {**record.counts, "primary": {"decision": decision, "reason": "v2 beats v1"}}
        status = status.with_decision(replace(record, counts=counts, action=action, reason="guardrails: no harm shown"))
    html = render_report(_release(), status.for_storage())
    log = html[html.index("<h2>Decision log"):]
    assert '<td class="v-inconclusive">continue</td>' in log and '<td class="v-pass">winner</td>' in log
    assert ">inconclusive</td>" not in log
    assert "t=20.0s 50%: winner → promote v2" in html  # the weight chart's marker
    assert "last verdict: winner" in html
    canary = render_report(_release(), _status())
    assert "last verdict: fail" in canary and '<td class="v-pass">pass</td>' in canary  # a canary's: its verdict


def test_a_stack_whose_services_run_stable_versions_of_their_own_is_labelled_per_service() -> None:
    """A stack an earlier release changed in part (`spec.stable.versions`): each service's charts and the decision
    log name the version that service's baseline runs; the header says what the stack runs. They had all said the
    stack's version."""
    release = _release()
    release["spec"]["stable"]["versions"] = {"ml-search": "v1-model"}
    release["spec"]["stack"]["entry"] = "ml-search"
    html = render_report(release, _status())
    assert not _parse(html).errors
    assert "stable <b>v1 (ml-search v1-model)</b> → canary <b>v2</b>" in html
    svgs = _svgs(html)
    assert _series(_chart(svgs, "latency", "ml-search")) == ["v1-model p50", "v1-model p99", "v2 p50", "v2 p99"]
    assert _series(_chart(svgs, "latency", "master-search")) == ["v1 p50", "v1 p99", "v2 p50", "v2 p99"]
    assert _series(_chart(svgs, "errors", "ml-search")) == ["v1-model errors", "v2 errors"]
    assert _series(_chart(svgs, "distribution", "ml-search")) == ["v1-model", "v2"]
    assert "<th>v1-model req / err</th><th>v2 req / err</th>" in html  # the entry's counts


def test_an_abn_experiments_report_shows_every_variants_traffic() -> None:
    """An A/B/n experiment's further variants (their counts under `variants`) get their own error series and
    decision-log column; they had been left out, as if the experiment had two."""
    release = _release()
    release["spec"]["strategy"] = {"abTest": {"variants": [{"name": "v1", "weight": 34}, {"name": "v2", "weight": 33},
                                                           {"name": "v3", "weight": 33}],
                                              "primaryMetric": {"kind": "proportion", "name": "click-through"}}}
    assert parse_release(release).experiment is not None  # the spec as the controller reads it
    status = ReleaseStatus(phase=Phase.PROGRESSING, started_at=1000.0, first_canary_traffic_at=1003.0)
    for t, errors in ((10, 1), (20, 4)):
        record = _record(t, 33, "inconclusive", 3.0, 0)
        counts = {s: {**c, "variants": {"v3": {"requests": 100, "errors": errors}}} for s, c in record.counts.items()}
        status = status.with_decision(replace(record, counts=counts))
    html = render_report(release, status.for_storage())
    assert not _parse(html).errors
    assert "further variants <b>v3</b>" in html
    errors = _chart(_svgs(html), "errors", "ml-search")
    assert _series(errors) == ["v1 errors", "v2 errors", "v3 errors"]
    # Traffic: each variant's share of the entry's requests (400 / 100 / 100), not the treatment's share of its
    # pair with the control (33%), which the status keeps as the canary weight.
    traffic = _chart(_svgs(html), "weight")
    assert _series(traffic) == ["v1", "v2", "v3"]
    assert "t=20.0s: inconclusive → next step" in ET.tostring(traffic, encoding="unicode")
    assert "33%" not in ET.tostring(traffic, encoding="unicode")
    assert "<th>v2 req / err</th><th>v3 req / err</th>" in html
    assert '<td class="num">100 / 4</td>' in html
    two = render_report(_release(), _status())
    assert "further variants" not in two and "v3" not in two
