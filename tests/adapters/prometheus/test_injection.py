"""Hostile names never change what a PromQL query means; webhook URLs are limited as documented.

`tests/adapters/prometheus/test_provider.py` already checks the escaping functions on a handful of values and one
injection attempt against a real Prometheus. This module adds the property over arbitrary text, for every
query the controller builds: the Istio window queries (`PrometheusMetrics.window`), every custom-metric
template placeholder (`custom`, grouped and per pair), and the business metric of A/B experiments
(`controller.adapters.prometheus.business`). Each query is built twice, once with plain names and once with
hostile ones, and must have the same tokens outside its string literals (the same meaning), with every
literal decoding to exactly the value it stands for, and every regex matching exactly the intended names.
A real Prometheus then parses hostile queries: no parse error, and an injected `or vector(1)` finds
nothing.

Also the URL policy of webhooks and hooks: http(s) only, no credentials in the URL, the optional
allow-list, and what the client refuses to send.
"""

from __future__ import annotations

import http.server
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analysis.observations import MetricsQuery
from controller.adapters.http.webhook import RetryPolicy, WebhookClient
from controller.adapters.prometheus.business import PrometheusBusinessMetrics
from controller.adapters.prometheus.client import PrometheusConfig, PrometheusMetrics, PrometheusUnavailable
from controller.adapters.prometheus.server import PrometheusProcess
from controller.core.urls import RefusedUrl, UrlPolicy
from controller.ports import BusinessQuery, MetricsUnavailable

CUSTOM = {
    "error_ratio": {"kind": "counter_pair", "numerator": 'istio_requests_total{{matchers},response_code=~"5.."}',
                    "denominator": "istio_requests_total{selector}"},
    "every_placeholder": {"kind": "value",
                          "query": "sum by (destination_service_name, destination_version) (rate(m{"
                                   "ns={namespace},svc=~{services_regex},ver=~{versions_regex},"
                                   "reporter={reporter}}[{window}]))"},
    "per_pair": {"kind": "value", "query": "sum(m{svc={service},ver={version}}) + count(m{selector})"},
    "ctr": {"kind": "counter_pair", "numerator": "searchstack_clicks_total{selector}",
            "denominator": "searchstack_impressions_total{selector}",
            "service_label": "service", "version_label": "version"},
}
# Plain names the hostile ones stand in for, position by position.
PLAIN_NS, PLAIN_SERVICES, PLAIN_VERSIONS = "nsplain", ("svcplaina", "svcplainb"), ("verplaina", "verplainb")
PLAIN_REPORTER = "repplain"

FRAGMENTS = ['"', "'", "`", "\\", "}", "{", ",", "=", "=~", "!=", "|", ".*", "(", ")", "[5m]", " or vector(1)",
             "\n", "\t", "\x00", "\x7f", "#", "\u2028", "é", "💥", "$", "^", "+", "?", "\\x41", "\\u0041"]
hostile_text = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(min_size=1, max_size=6).filter(
    lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s))), min_size=1, max_size=6).map("".join)


# --- a PromQL lexer just good enough to compare queries ----------------------------------------------------

TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|`[^`]*`)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<number>\d+(?:\.\d+)?(?:ms|s|m|h|d|w|y)?)
  | (?P<op>=~|!~|!=|==|<=|>=|[{}()\[\],=+\-*/^%<>])
""", re.VERBOSE | re.DOTALL)
ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "r": "\r", "t": "\t", "a": "\a", "b": "\b", "f": "\f",
           "v": "\v"}


def tokens(promql: str) -> list[tuple[str, str]]:
    out, i = [], 0
    while i < len(promql):
        m = TOKEN.match(promql, i)
        assert m is not None, f"not PromQL at {i}: {promql[i:i + 20]!r} in {promql!r}"
        if m.lastgroup != "space":
            out.append((m.lastgroup or "", m.group(0)))
        i = m.end()
    return out


def decode(literal: str) -> str:
    """A PromQL (Go) string literal's value."""
    if literal[0] == "`":
        return literal[1:-1]
    body, out, i = literal[1:-1], [], 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        kind = body[i + 1]
        if kind in ESCAPES:
            out.append(ESCAPES[kind])
            i += 2
        elif kind == "x":
            out.append(chr(int(body[i + 2:i + 4], 16)))
            i += 4
        elif kind in "uU":
            width = 4 if kind == "u" else 8
            out.append(chr(int(body[i + 2:i + 2 + width], 16)))
            i += 2 + width
        else:
            raise AssertionError(f"unknown escape \\{kind} in {literal!r}")
    return "".join(out)


def shape(promql: str) -> list[tuple[str, str | None]]:
    return [(kind, None if kind == "string" else text) for kind, text in tokens(promql)]


def strings(promql: str) -> list[tuple[bool, str]]:
    """Every string literal's value, and whether it is a regex (the right side of `=~` or `!~`)."""
    out, previous = [], ""
    for kind, text in tokens(promql):
        if kind == "string":
            out.append((previous in ("=~", "!~"), decode(text)))
        previous = text
    return out


# --- building every query -------------------------------------------------------------------------------

class Recording(PrometheusMetrics):
    """The provider with its HTTP query replaced by a recorder that answers "no data"."""

    def __init__(self) -> None:
        super().__init__(PrometheusConfig.from_dict({"url": "http://127.0.0.1:9", "custom_metrics": CUSTOM}))
        self.sent: list[str] = []

    def _timed_query(self, promql: str, at: float) -> Any:
        self.sent.append(promql)
        return []


def every_query(namespace: str, services: tuple[str, ...], versions: tuple[str, ...], reporter: str) -> list[str]:
    provider = Recording()
    query = MetricsQuery(namespace, services, versions, reporter=reporter)
    provider.window(query, 100.0, 160.0)
    for name in CUSTOM:
        provider.custom(name, query, 100.0, 160.0)
    business = PrometheusBusinessMetrics(provider)
    with pytest.raises(MetricsUnavailable):  # no series at all: unavailable, never zero
        business.business(BusinessQuery(namespace, services[0], versions, "ctr", "proportion"), 100.0, 160.0)
    provider.close()
    return provider.sent


def distinct(n: int) -> st.SearchStrategy[list[str]]:
    return st.lists(hostile_text, min_size=n, max_size=n, unique=True)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names=distinct(6))
def test_hostile_names_keep_the_meaning_of_every_query(names: list[str]) -> None:
    ns, services, versions, reporter = names[0], (names[1], names[2]), (names[3], names[4]), names[5]
    mapping = dict(zip((PLAIN_NS, *PLAIN_SERVICES, *PLAIN_VERSIONS, PLAIN_REPORTER), names, strict=True))
    plain = every_query(PLAIN_NS, PLAIN_SERVICES, PLAIN_VERSIONS, PLAIN_REPORTER)
    hostile = every_query(ns, services, versions, reporter)
    assert len(plain) == len(hostile) > 10
    for p, h in zip(plain, hostile, strict=True):
        assert shape(h) == shape(p), f"the query's structure changed:\n{p}\n{h}"
        for (regex, plain_value), (_, value) in zip(strings(p), strings(h), strict=True):
            names_in = plain_value.split("|") if regex else [plain_value]
            if not set(names_in) <= set(mapping):  # the template's own constants are untouched
                assert value == plain_value
            elif regex:
                wanted = {mapping[v] for v in names_in}
                assert matches_exactly(value, wanted, set(names) - wanted), (value, wanted)
            else:  # an exact matcher or a quoted placeholder
                assert value == mapping[plain_value]


def matches_exactly(regex: str, wanted: set[str], others: set[str]) -> bool:
    """The (RE2, here Python) regex, anchored as PromQL anchors it, matches these values and no other."""
    rx = re.compile(regex, re.DOTALL)
    near_misses = {w + "x" for w in wanted} | {w[:-1] for w in wanted} | {"", ".*", "x"} | others
    return all(rx.fullmatch(w) for w in wanted) and not any(rx.fullmatch(o) for o in near_misses - wanted)


def test_the_lexer_sees_an_unescaped_injection() -> None:
    """The comparison above can fail: a naive builder that pastes a name into quotes changes the shape."""
    naive = 'm{svc="%s"}'
    assert shape(naive % 'x"} or vector(1) or m{a="') != shape(naive % "plain")
    assert strings('m{a="x\\"y\\n\\x00",b=~"c|d"}') == [(False, 'x"y\n\x00'), (True, "c|d")]


# --- against a real Prometheus ------------------------------------------------------------------------------

class EmptyExporter(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def prometheus() -> Iterator[PrometheusProcess]:
    """A real Prometheus scraping a target with no series: every query built here must find nothing."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), EmptyExporter)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    try:
        with PrometheusProcess([f"127.0.0.1:{server.server_address[1]}"], scrape_interval_s=1.0) as prom:
            yield prom
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.integration
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=distinct(5))
def test_a_real_prometheus_parses_hostile_queries_and_finds_nothing(names: list[str],
                                                                     prometheus: PrometheusProcess) -> None:
    provider = PrometheusMetrics(PrometheusConfig.from_dict(
        {"url": prometheus.url, "retries": 0, "custom_metrics": CUSTOM}))
    try:
        query = MetricsQuery(names[0], (names[1], f'{names[2]}"}} or vector(1) or m{{a="'), (names[3], names[4]))
        window = provider.window(query, 100.0, 160.0)  # a parse error would be PrometheusUnavailable (HTTP 400)
        assert window.counts == {} or all(c.requests == 0 for c in window.counts.values())
        for name in ("every_placeholder", "per_pair"):
            assert provider.custom(name, query, 100.0, 160.0).values == {}  # vector(1) would be a value
    except PrometheusUnavailable as exc:
        pytest.fail(f"Prometheus refused a query built from {names!r}: {exc}")
    finally:
        provider.close()


# --- webhook URLs -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "file:///etc/passwd", "gopher://127.0.0.1:70/x", "ftp://example.com/x", "javascript:alert(1)",
    "data:text/plain,hi", "//example.com/no-scheme", "example.com/no-scheme", "http:///no-host",
    "https://user:pass@example.com/x", "https://token@example.com/x", "http://[::1/x", "http://h:99999/x",
    "HTTP://example.com:-1/x",
])
def test_the_url_policy_refuses_what_is_not_plain_http(url: str) -> None:
    with pytest.raises(RefusedUrl) as refused:
        UrlPolicy().check(url)
    for part in ("passwd", "pass@", "token@", "alert"):
        assert part not in str(refused.value)  # the message shows scheme and host only


@pytest.mark.parametrize(("host", "allowed"), [
    ("hooks.example.com", True), ("HOOKS.Example.COM", True), ("a.hooks.example.com", False),
    ("chat.example.org", True), ("deep.chat.example.org", True), ("example.org", False),
    ("evilchat.example.org", False), ("hooks.example.com.evil.net", False), ("127.0.0.1", False),
])
def test_the_allow_list_matches_hosts_exactly_or_by_subdomain(host: str, allowed: bool) -> None:
    policy = UrlPolicy.allowing(["hooks.example.com", "*.chat.example.org", "chat.example.org"])
    if allowed:
        policy.check(f"https://{host}/x")
    else:
        with pytest.raises(RefusedUrl, match="allow-list"):
            policy.check(f"https://{host}/x")


def test_an_empty_allow_list_allows_nothing_and_none_allows_any_host() -> None:
    with pytest.raises(RefusedUrl, match="allow-list"):
        UrlPolicy.allowing([]).check("https://hooks.example.com/x")
    UrlPolicy.allowing(None).check("https://hooks.example.com/x")


@pytest.mark.parametrize("url", [
    "http://example.com/tok\nen", "http://example.com/a b", "http://ex\x00ample.com/x", "http://example.com/\x7f",
    "http://a..b/x", "http://" + "a" * 80 + ".example.com/x", "http://xn--abc/x",
])
def test_the_webhook_client_never_raises_on_urls_it_cannot_send(url: str) -> None:
    """Regression: the client promised never to raise, yet httpx raised InvalidURL/UnicodeError for these."""
    client = WebhookClient(timeout=0.5, sleep=lambda seconds: None, retry=RetryPolicy(attempts=3))
    delivery = client.post(url, b"{}")
    assert not delivery.ok and delivery.attempts <= 1
    assert "refused" in delivery.reason or "invalid URL" in delivery.reason
    assert "\n" not in delivery.reason and "\x00" not in delivery.reason


def test_the_url_policy_refuses_control_characters() -> None:
    with pytest.raises(RefusedUrl):
        UrlPolicy().check("http://example.com/tok\nen")
