"""The Prometheus metrics provider: Istio's raw counters for a release, read at aligned instants.

This module owns talking to Prometheus (through prometheus-api-client): its configuration (read with the
project's one reader, `analysis.reader`), PromQL escaping, the grouped queries for a release, turning
answers into series, and custom metrics from PromQL templates. The differencing itself is
`analysis.counters` (pure).

Four queries per tick cover every service and version of a release (regex selectors, never one query per
service): for each of `istio_requests_total` and `..._bucket`, its raw samples inside the window and the
last sample of each series at or before the window start (`last_over_time`). Which metric a series is
comes from the query that selected it, never from `__name__` in the answer (stores such as
VictoriaMetrics drop it from a function's result); a series is known by its other labels.

Windows are read `lag` seconds behind the instants asked for, rounded down to the scrape interval
(`PrometheusConfig.lag`, `settled`): both edges of every window move the same way, so consecutive windows
stay contiguous, and no scrape stamped inside a window can still be landing when it is read.

Any failure — connection refused, timeout, HTTP error, a malformed answer, samples that are not counters —
raises `PrometheusUnavailable(reason)`: never a count that could pass for a healthy canary. The controller
side (`controller.adapters.prometheus.metrics`) turns it into the Metrics port's `MetricsUnavailable`.

Secrets: the config holds only the *paths* of the token/password files, so its repr and logs cannot
leak them; the files are read on each call (rotated tokens keep working) and the values only go into
request headers.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import urlsplit

import requests
import urllib3
from prometheus_api_client.exceptions import PrometheusApiClientException
from prometheus_api_client.prometheus_connect import PrometheusConnect
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from analysis.counters import (
    CounterDataError,
    IstioLabels,
    LabelSet,
    Sample,
    Series,
    increase,
    labelset,
    span_cutter,
    window_counts,
)
from analysis.observations import MetricsQuery, WindowCounts
from analysis.reader import CONFIG_WORDING, Reader
from controller.logs import remember_secret

__all__ = [
    "BasicAuth",
    "CustomMetric",
    "CustomValue",
    "CustomWindow",
    "PrometheusConfig",
    "PrometheusConfigError",
    "PrometheusMetrics",
    "PrometheusUnavailable",
    "expand_template",
    "istio_selector",
    "promql_regex",
    "promql_string",
    "settled_instant",
]

log = logging.getLogger(__name__)

REQUESTS_METRIC = "istio_requests_total"
BUCKETS_METRIC = "istio_request_duration_milliseconds_bucket"
SERVICE_LABEL = "destination_service_name"
VERSION_LABEL = "destination_version"
# Added to twice the scrape interval for the default lag: clock skew between the controller and
# Prometheus, and the query's own delay.
LAG_MARGIN_SECONDS = 5.0

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_METRIC_NAME = re.compile(r"[a-zA-Z0-9_.-]+")
_PLACEHOLDERS = (
    "namespace", "service", "version", "reporter", "services_regex", "versions_regex",
    "selector", "matchers", "window",
)
_PLACEHOLDER = re.compile(r"\{(" + "|".join(_PLACEHOLDERS) + r")\}")
_ANY_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
# RE2 metacharacters; RE2 takes a backslash before any ASCII punctuation as that literal character.
_REGEX_META = frozenset("\\.+*?()|[]{}^$")
_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_REASON_LIMIT = 300
# Retries are ours (with backoff and a reason): urllib3 must not add its own. read=False re-raises a read
# timeout as itself rather than as "max retries exceeded".
_NO_RETRY = Retry(total=0, read=False)


class PrometheusUnavailable(Exception):
    """Prometheus failed, timed out or answered something unusable; `reason` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PrometheusConfigError(ValueError):
    """A configuration value is wrong; `path` locates it (e.g. `metrics.prometheus.timeout_seconds`)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


# ---------------------------------------------------------------------------------------------------
# Escaping: every value that reaches a query goes through these.


def promql_string(value: str) -> str:
    """`value` as a double-quoted PromQL string literal (Go escaping)."""
    out = []
    for ch in value:
        if ch in '\\"':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def regex_literal(value: str) -> str:
    """An RE2 pattern matching exactly `value`."""
    return "".join("\\" + ch if ch in _REGEX_META else ch for ch in value)


def promql_regex(values: Iterable[str]) -> str:
    """A quoted PromQL regex (for `=~`) matching exactly one of `values` (which must not be empty)."""
    alternatives = sorted(set(values))
    if not alternatives:
        raise ValueError("a regex matcher needs at least one value (an empty one would match everything)")
    return promql_string("|".join(regex_literal(v) for v in alternatives))


def _duration(seconds: float) -> str:
    return f"{max(1, math.ceil(seconds * 1000))}ms"


def settled_instant(t: float, lag: float, step: float | None) -> float:
    """The instant read for an edge asked for at `t`: `lag` seconds earlier, rounded down to a whole
    multiple of `step` (the scrape interval; None: to the millisecond). A function of `t` alone, so the
    edge two consecutive windows share is read at the same instant by both."""
    if not lag and not step:
        return t
    ms = math.floor(round((t - lag) * 1000, 3))
    if step:
        step_ms = max(1, round(step * 1000))
        ms -= ms % step_ms
    return ms / 1000


# ---------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class BasicAuth:
    username: str
    password_file: str


@dataclass(frozen=True)
class CustomMetric:
    """A user's metric as PromQL templates (placeholders: see docs/metrics.md).

    kind "counter_pair": `numerator` and `denominator` select cumulative counters (plain series
    selectors); both are differenced exactly like Istio's, per (service, version).
    kind "value": `query` is any PromQL expression evaluated at the window end, one series per
    (service, version) told apart by `service_label` / `version_label`.
    """

    name: str
    kind: Literal["counter_pair", "value"]
    numerator: str = ""
    denominator: str = ""
    query: str = ""
    service_label: str = SERVICE_LABEL
    version_label: str = VERSION_LABEL

    @property
    def templates(self) -> tuple[str, ...]:
        return (self.numerator, self.denominator) if self.kind == "counter_pair" else (self.query,)

    @property
    def per_pair(self) -> bool:
        """Templates naming {service} or {version} run once per (service, version), not grouped."""
        return any(re.search(r"\{(service|version)\}", t) for t in self.templates)


@dataclass(frozen=True)
class PrometheusConfig:
    url: str
    bearer_token_file: str | None = None
    basic_auth: BasicAuth | None = None
    tls_verify: bool = True
    ca_file: str | None = None
    timeout_seconds: float = 5.0
    retries: int = 2
    backoff_seconds: float = 0.5
    # How far before a window's start to look for a series' last sample; a series with none that old
    # counts from zero, so keep it above the longest Prometheus gap you want to survive.
    lookback_seconds: float = 600.0
    # "" when the series carry no namespace label (e.g. a local router).
    namespace_label: str = "destination_service_namespace"
    # The label naming the pod a series was scraped from ("" when there is none): the judge learns from the
    # stable version's pods how much identical code differs from pod to pod (docs/analysis.md).
    pod_label: str = "pod"
    # The response codes counted as errors, as prefixes ("5": every 5xx; add "0" for the requests Envoy answered
    # with no code, the client gone or the stream reset).
    error_codes: tuple[str, ...] = ("5",)
    custom_metrics: Mapping[str, CustomMetric] = field(default_factory=dict)
    # How often Prometheus scrapes the proxies (None: not told). Window edges are rounded down to it, and
    # the default lag is derived from it.
    scrape_interval_seconds: float | None = None
    # How far behind the asked instants windows are read (None: `lag`'s default).
    lag_seconds: float | None = None

    @property
    def lag(self) -> float:
        """Seconds between an instant asked for and the one read: `lag_seconds`, else twice the scrape
        interval plus `LAG_MARGIN_SECONDS` (one interval for the scrape's own timeout, one for a scrape
        that starts just before the instant), else 0 when the scrape interval is not known either."""
        if self.lag_seconds is not None:
            return self.lag_seconds
        if self.scrape_interval_seconds is None:
            return 0.0
        return 2 * self.scrape_interval_seconds + LAG_MARGIN_SECONDS

    @property
    def settle_delay(self) -> float:
        """Seconds after a weight change before a window's first edge, read `lag` behind and rounded down
        to a scrape, falls after the change: the least `settle` with which a window holds one weight."""
        return 0.0 if self.lag == 0 else self.lag + (self.scrape_interval_seconds or 0.0)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str = "prometheus") -> PrometheusConfig:
        """Read the config with the project's one reader; the first wrong value raises PrometheusConfigError."""
        return _read_config(Reader(fail=PrometheusConfigError, wording=CONFIG_WORDING), d, path)


_CONFIG_FIELDS = (
    "url", "bearer_token_file", "basic_auth", "tls_verify", "ca_file", "timeout_seconds", "retries",
    "backoff_seconds", "lookback_seconds", "namespace_label", "pod_label", "error_codes", "custom_metrics",
    "scrape_interval_seconds", "lag_seconds",
)


def _read_config(r: Reader, d: Any, p: str) -> PrometheusConfig:
    d = r.fields(d, p, _CONFIG_FIELDS)
    token = r.optional_string(d.get("bearer_token_file"), f"{p}.bearer_token_file")
    basic = _basic_auth(r, d.get("basic_auth"), f"{p}.basic_auth")
    if token and basic:
        r.problem(p, "set bearer_token_file or basic_auth, not both")
    return PrometheusConfig(
        url=_url(r, d.get("url"), f"{p}.url"),
        bearer_token_file=token,
        basic_auth=basic,
        tls_verify=r.boolean(d.get("tls_verify", True), f"{p}.tls_verify"),
        ca_file=r.optional_string(d.get("ca_file"), f"{p}.ca_file"),
        timeout_seconds=r.number(d.get("timeout_seconds", 5.0), f"{p}.timeout_seconds", 0, math.inf, what="positive"),
        retries=r.integer(d.get("retries", 2), f"{p}.retries", 0, what="a whole number >= 0"),
        backoff_seconds=r.number(d.get("backoff_seconds", 0.5), f"{p}.backoff_seconds", 0, math.inf,
                                 open_low=False, what=">= 0"),
        lookback_seconds=r.number(d.get("lookback_seconds", 600.0), f"{p}.lookback_seconds", 0, math.inf,
                                  what="positive"),
        namespace_label=_label_name(r, d.get("namespace_label", "destination_service_namespace"),
                                    f"{p}.namespace_label", empty_ok=True),
        pod_label=_label_name(r, d.get("pod_label", "pod"), f"{p}.pod_label", empty_ok=True),
        error_codes=_error_codes(r, d.get("error_codes", ["5"]), f"{p}.error_codes"),
        custom_metrics=_custom_metrics(r, d.get("custom_metrics", {}), f"{p}.custom_metrics"),
        scrape_interval_seconds=r.optional_number(d.get("scrape_interval_seconds"),
                                                  f"{p}.scrape_interval_seconds", 0, 3600),
        lag_seconds=r.optional_number(d.get("lag_seconds"), f"{p}.lag_seconds", 0, 3600, open_low=False),
    )


def _url(r: Reader, value: Any, where: str) -> str:
    url = r.optional_string(value, where)
    if not url:
        r.problem(where, "is required (e.g. http://prometheus.istio-system:9090)")
        return ""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        r.problem(where, f"must be an http(s):// URL with a host, got {url!r}")
    if parts.username or parts.password:
        r.problem(where, "must not carry credentials; use basic_auth.password_file")
    if parts.query or parts.fragment:
        r.problem(where, "must not have a query string or fragment")
    return url.rstrip("/")


def _basic_auth(r: Reader, value: Any, where: str) -> BasicAuth | None:
    if value is None:
        return None
    d = r.fields(value, where, ("username", "password_file"))
    username = r.optional_string(d.get("username"), f"{where}.username")
    password_file = r.optional_string(d.get("password_file"), f"{where}.password_file")
    if not username:
        r.problem(f"{where}.username", "is required")
    if not password_file:
        r.problem(f"{where}.password_file", "is required (a file holding the password)")
    return BasicAuth(username or "", password_file or "")


def _error_codes(r: Reader, value: Any, where: str) -> tuple[str, ...]:
    codes = r.items(value, where, "response code prefixes: ['5']")
    for i, code in enumerate(codes):
        valid = isinstance(code, str | int) and not isinstance(code, bool)
        if not valid or not re.fullmatch(r"[0-9]{1,3}", str(code)):
            r.problem(f"{where}[{i}]", f"{code!r} is not a response code prefix (1-3 digits)")
    return tuple(str(c) for c in codes)


def _custom_metrics(r: Reader, value: Any, where: str) -> dict[str, CustomMetric]:
    metrics = r.mapping(value, where)
    return {name: _custom_metric(r, name, spec, f"{where}.{name}") for name, spec in metrics.items()}


_TEMPLATES: dict[str, tuple[str, ...]] = {"counter_pair": ("numerator", "denominator"), "value": ("query",)}


def _custom_metric(r: Reader, name: str, spec: Any, where: str) -> CustomMetric:
    r.string(name, where, _METRIC_NAME, what="a custom metric name (letters, digits, '_', '.', '-')")
    d = r.mapping(spec, where)
    kind = r.choice(d.get("kind"), f"{where}.kind", tuple(_TEMPLATES))
    r.unknown_fields(d, where, ("kind", "service_label", "version_label", *_TEMPLATES[kind]))
    templates = {}
    for key in _TEMPLATES[kind]:
        template = r.optional_string(d.get(key), f"{where}.{key}")
        if not template:
            r.problem(f"{where}.{key}", f"is required for kind {kind!r}")
        _check_placeholders(r, template or "", f"{where}.{key}", allow_window=(kind == "value"))
        templates[key] = template or ""
    return CustomMetric(
        name=name,
        kind="value" if kind == "value" else "counter_pair",
        service_label=_label_name(r, d.get("service_label", SERVICE_LABEL), f"{where}.service_label"),
        version_label=_label_name(r, d.get("version_label", VERSION_LABEL), f"{where}.version_label"),
        **templates,
    )


def _check_placeholders(r: Reader, template: str, where: str, allow_window: bool) -> None:
    for match in _ANY_PLACEHOLDER.finditer(template):
        word = match.group(1)
        if word not in _PLACEHOLDERS:
            r.problem(where, f"unknown placeholder {{{word}}}; known: {_PLACEHOLDERS}")
        elif word == "window" and not allow_window:
            r.problem(where, "{window} is for kind 'value'; counters are differenced over the window already")


def _label_name(r: Reader, value: Any, where: str, empty_ok: bool = False) -> str:
    # Label names go into queries unquoted, so they must be proper label names, nothing else.
    if empty_ok and value == "":
        return ""
    return r.string(value, where, _LABEL_NAME, what="a Prometheus label name")


# ---------------------------------------------------------------------------------------------------
# Queries


def _matchers(query: MetricsQuery, namespace_label: str, service_label: str, version_label: str,
              pair: tuple[str, str] | None) -> list[str]:
    matchers = []
    if namespace_label and query.namespace:
        matchers.append(f"{namespace_label}={promql_string(query.namespace)}")
    if pair is None:
        matchers.append(f"{service_label}=~{promql_regex(query.services)}")
        matchers.append(f"{version_label}=~{promql_regex(query.versions)}")
    else:
        matchers.append(f"{service_label}={promql_string(pair[0])}")
        matchers.append(f"{version_label}={promql_string(pair[1])}")
    return matchers


def istio_selector(query: MetricsQuery, namespace_label: str, metric: str) -> str:
    """One selector for one Istio metric (`metric`, a constant of this module) of every service and
    version of the query. The metric is a matcher inside the braces, so the selector also reads as a plain
    label matcher list."""
    matchers = [f"__name__={promql_string(metric)}",
                *_matchers(query, namespace_label, SERVICE_LABEL, VERSION_LABEL, None)]
    matchers.append(f"reporter={promql_string(query.reporter)}")
    return "{" + ",".join(matchers) + "}"


def expand_template(template: str, query: MetricsQuery, namespace_label: str, service_label: str,
                    version_label: str, window_seconds: float, pair: tuple[str, str] | None = None) -> str:
    """The template with every placeholder replaced by an escaped (and quoted) value."""
    matchers = ",".join(_matchers(query, namespace_label, service_label, version_label, pair))
    service, version = pair if pair is not None else ("", "")
    values = {
        "namespace": promql_string(query.namespace),
        "service": promql_string(service),
        "version": promql_string(version),
        "reporter": promql_string(query.reporter),
        "services_regex": promql_regex(query.services),
        "versions_regex": promql_regex(query.versions),
        "selector": "{" + matchers + "}",
        "matchers": matchers,
        "window": _duration(window_seconds),
    }
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def _reason(error: BaseException, timeout: float) -> str:
    """What went wrong, short: no URL (it repeats the whole query), no object addresses."""
    if isinstance(error, requests.Timeout):
        return f"timed out after {timeout:g} s"
    if isinstance(error, requests.ConnectionError):
        cause = error.args[0] if error.args else error
        inner = getattr(cause, "reason", cause)  # urllib3's MaxRetryError wraps the real failure
        # NewConnectionError (refused, unreachable) subclasses ConnectTimeoutError in urllib3.
        timed_out = isinstance(inner, urllib3.exceptions.TimeoutError)
        if timed_out and not isinstance(inner, urllib3.exceptions.NewConnectionError):
            return f"timed out after {timeout:g} s"
        detail = re.sub(r"^<[^>]*>: ", "", str(inner))
        return f"connection failed: {detail}"[:_REASON_LIMIT]
    if isinstance(error, requests.exceptions.InvalidHeader):  # its message repeats the header, credentials too
        return f"{type(error).__name__}: a request header was refused"
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= _REASON_LIMIT else text[:_REASON_LIMIT] + "..."


def _retryable(error: Exception) -> bool:
    if isinstance(error, requests.Timeout | requests.ConnectionError):
        return True
    if isinstance(error, PrometheusApiClientException):
        status = re.match(r"HTTP Status Code (\d+)", str(error))
        return status is not None and int(status.group(1)) in _RETRYABLE_STATUS
    return False


def _labels_of(item: Any, where: str) -> dict[str, str]:
    if not isinstance(item, dict) or not isinstance(item.get("metric"), dict):
        raise PrometheusUnavailable(f"malformed answer to the {where} query: a result without labels")
    labels: dict[str, str] = item["metric"]
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise PrometheusUnavailable(f"malformed answer to the {where} query: labels are not strings")
    return labels


def _sample(pair: Any, where: str) -> Sample:
    try:
        t, v = pair
        return float(t), float(v)
    except (TypeError, ValueError):
        raise PrometheusUnavailable(f"malformed answer to the {where} query: sample {pair!r}") from None


def _as_list(result: Any, where: str) -> list[Any]:
    if not isinstance(result, list):
        raise PrometheusUnavailable(f"malformed answer to the {where} query: result is not a list")
    return result


def _matrix(result: Any, where: str) -> list[tuple[dict[str, str], list[Sample]]]:
    out = []
    for item in _as_list(result, where):
        labels = _labels_of(item, where)
        values = item.get("values")
        if not isinstance(values, list):
            raise PrometheusUnavailable(f"malformed answer to the {where} query: expected a range of samples")
        out.append((labels, [_sample(v, where) for v in values]))
    return out


def _vector(result: Any, where: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for item in _as_list(result, where):
        labels = _labels_of(item, where)
        if "value" not in item:
            raise PrometheusUnavailable(f"malformed answer to the {where} query: expected one sample each")
        out.append((labels, _sample(item["value"], where)[1]))
    return out


@dataclass(frozen=True)
class CustomValue:
    """A custom metric of one (service, version): a counter pair's increases, or one value."""

    numerator: float
    denominator: float | None = None

    @property
    def ratio(self) -> float | None:
        if self.denominator is None:
            return self.numerator
        return self.numerator / self.denominator if self.denominator else None


@dataclass(frozen=True)
class CustomWindow:
    name: str
    start: float
    end: float
    values: Mapping[tuple[str, str], CustomValue]
    absent: frozenset[tuple[str, str]] = frozenset()


@contextlib.contextmanager
def _usable_counters() -> Iterator[None]:
    """Counters Prometheus gave that cannot be counted (not finite, negative, no common +Inf bucket, ...) make the
    source unavailable, never a count."""
    try:
        yield
    except CounterDataError as error:
        raise PrometheusUnavailable(f"unusable counters from Prometheus: {error}") from None


class PrometheusMetrics:
    """Exact window counts and custom metrics of a release from Prometheus.

    `queries_sent` and `query_seconds` count every HTTP query (including retries) for benchmarks.
    """

    def __init__(self, config: PrometheusConfig, *, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._sleep = sleep
        self._clock = clock
        self._labels = IstioLabels(namespace=config.namespace_label or None, pod=config.pod_label or None)
        self._client = PrometheusConnect(
            url=config.url,
            retry=_NO_RETRY,
            session=self._session(config),
            timeout=config.timeout_seconds,  # type: ignore[arg-type]  # hinted int; requests takes float
        )
        self.queries_sent = 0
        self.query_seconds = 0.0

    def __repr__(self) -> str:
        return f"PrometheusMetrics(url={self._config.url!r})"

    @property
    def config(self) -> PrometheusConfig:
        return self._config

    @staticmethod
    def _session(config: PrometheusConfig) -> requests.Session:
        session = requests.Session()
        session.verify = (config.ca_file or True) if config.tls_verify else False
        session.mount(config.url, HTTPAdapter(max_retries=_NO_RETRY))
        return session

    def close(self) -> None:
        self._client.close()

    def instant(self, promql: str, at: float, what: str) -> list[tuple[dict[str, str], float]]:
        """An instant vector at `at` (each series' labels and value), with the retries of every query;
        raises PrometheusUnavailable naming `what`. The caller escapes what it puts into `promql`."""
        return _vector(self._query(promql, at, what), what)

    # --- the Metrics port -------------------------------------------------------------------------

    def settled(self, start: float, end: float) -> tuple[float, float]:
        """The instants a window asked for as (start, end] is read at (see `settled_instant`)."""
        lag, step = self._config.lag, self._config.scrape_interval_seconds
        return settled_instant(start, lag, step), settled_instant(end, lag, step)

    def window(self, query: MetricsQuery, start: float, end: float) -> WindowCounts:
        """Exact counts for every service and version of `query`, in four queries: those of (start, end]
        read `lag` behind (`settled`). The answer carries the instants asked for, so the next window,
        starting at this `end`, is read from exactly where this one stopped."""
        if end < start:
            raise ValueError(f"window end {end} is before its start {start}")
        if not query.services or not query.versions:
            return WindowCounts(start=start, end=end, counts={})
        query = self._counted(query)
        a, b = self.settled(start, end)
        requests, buckets = self._istio_series(query, a, b)
        with _usable_counters():
            counts = window_counts(query, requests, buckets, a, b, self._labels)
        return replace(counts, start=start, end=end)

    def windows(self, query: MetricsQuery, edges: Sequence[tuple[float, float]]) -> tuple[WindowCounts, ...]:
        """`window` of each (start, end] in `edges` (oldest first, each starting where the one before ended, as
        the stable version's history is asked for) in the four queries of one window over their whole span,
        the samples then cut per window (`span_cutter`): 30 windows of history are one read, not 30. Edges
        that are not contiguous are read one by one."""
        if not edges:
            return ()
        if any(e < s for s, e in edges):
            raise ValueError(f"a window ends before it starts: {list(edges)}")
        query = self._counted(query)
        contiguous = all(a[1] == b[0] for a, b in itertools.pairwise(edges))
        if not contiguous or not query.services or not query.versions:
            return tuple(self.window(query, s, e) for s, e in edges)
        instants = [self.settled(s, e) for s, e in edges]
        series = self._istio_series(query, instants[0][0], instants[-1][1])
        with _usable_counters():
            requests, buckets = (span_cutter(s) for s in series)
            return tuple(replace(window_counts(query, requests(a, b), buckets(a, b), a, b, self._labels),
                                 start=start, end=end)
                         for (start, end), (a, b) in zip(edges, instants, strict=True))

    def _counted(self, query: MetricsQuery) -> MetricsQuery:
        """`query` counting as errors the response codes this source's configuration names (`error_codes`)."""
        return replace(query, error_codes=self._config.error_codes)

    def _istio_series(self, query: MetricsQuery, start: float, end: float) -> tuple[list[Series], list[Series]]:
        """The request counters' and the latency buckets' series of `query` over (start, end] (`_counter_series`)."""
        label = self._config.namespace_label
        return (self._counter_series(istio_selector(query, label, REQUESTS_METRIC), start, end),
                self._counter_series(istio_selector(query, label, BUCKETS_METRIC), start, end))

    # --- custom metrics ---------------------------------------------------------------------------

    def custom(self, name: str, query: MetricsQuery, start: float, end: float) -> CustomWindow:
        """A configured custom metric per (service, version) of `query` for (start, end]."""
        metric = self._config.custom_metrics.get(name)
        if metric is None:
            raise KeyError(f"no custom metric {name!r}; configured: {sorted(self._config.custom_metrics)}")
        pairs = [(s, v) for s in query.services for v in query.versions]
        scopes: list[tuple[str, str] | None] = list(pairs) if metric.per_pair else [None]
        values: dict[tuple[str, str], CustomValue] = {}
        a, b = self.settled(start, end)  # read as the Istio counters are: the same lag, the same edges
        for scope in scopes:
            evaluate = self._counter_pair if metric.kind == "counter_pair" else self._value
            values.update(evaluate(metric, query, a, b, scope))
        absent = frozenset(p for p in pairs if p not in values)
        if metric.kind == "counter_pair":  # a missing counter series is zero, as for Istio's
            values = {p: values.get(p, CustomValue(0.0, 0.0)) for p in pairs}
        return CustomWindow(name=name, start=start, end=end, values=values, absent=absent)

    def _expand(self, metric: CustomMetric, template: str, query: MetricsQuery, start: float, end: float,
                scope: tuple[str, str] | None) -> str:
        return expand_template(template, query, self._config.namespace_label, metric.service_label,
                               metric.version_label, end - start, scope)

    def _pair_of(self, metric: CustomMetric, query: MetricsQuery, labels: Mapping[str, str],
                 scope: tuple[str, str] | None) -> tuple[str, str] | None:
        if scope is not None:
            return scope
        pair = (labels.get(metric.service_label, ""), labels.get(metric.version_label, ""))
        return pair if pair[0] in query.services and pair[1] in query.versions else None

    def _counter_pair(self, metric: CustomMetric, query: MetricsQuery, start: float, end: float,
                      scope: tuple[str, str] | None) -> dict[tuple[str, str], CustomValue]:
        totals: list[dict[tuple[str, str], float]] = []
        present: set[tuple[str, str]] = set()
        for template in (metric.numerator, metric.denominator):
            selector = self._expand(metric, template, query, start, end, scope)
            series = self._counter_series(selector, start, end)
            sums: dict[tuple[str, str], float] = {}
            for s in series:
                pair = self._pair_of(metric, query, s.labels, scope)
                if pair is None or not any(t <= end for t, _ in s.samples):
                    continue
                present.add(pair)
                try:
                    sums[pair] = sums.get(pair, 0.0) + increase(s.samples, start, end)
                except CounterDataError as error:
                    raise PrometheusUnavailable(f"custom metric {metric.name}: {error}") from None
            totals.append(sums)
        return {p: CustomValue(totals[0].get(p, 0.0), totals[1].get(p, 0.0)) for p in present}

    def _value(self, metric: CustomMetric, query: MetricsQuery, start: float, end: float,
               scope: tuple[str, str] | None) -> dict[tuple[str, str], CustomValue]:
        promql = self._expand(metric, metric.query, query, start, end, scope)
        where = f"custom metric {metric.name}"
        values: dict[tuple[str, str], CustomValue] = {}
        for labels, value in _vector(self._query(promql, _ms_ceil(end), where), where):
            pair = self._pair_of(metric, query, labels, scope)
            if pair is None or math.isnan(value):
                continue  # NaN is "no data" (e.g. 0/0): the pair is reported absent
            if pair in values:
                raise PrometheusUnavailable(
                    f"{where} returned several series for {pair[0]}/{pair[1]}; aggregate with "
                    f"sum by ({metric.service_label}, {metric.version_label}) (...)"
                )
            values[pair] = CustomValue(value)
        return values

    # --- raw samples ------------------------------------------------------------------------------

    def _counter_series(self, selector: str, start: float, end: float) -> list[Series]:
        """Raw samples in the window plus each series' last value at or before `start`.

        Times go to Prometheus in whole milliseconds (its resolution): the range query reaches back to
        the millisecond at or before `start`, where the baseline query stands, so no sample between
        them is missed; `analysis.counters` then cuts exactly at (start, end].

        A series is known by its labels without `__name__`: `last_over_time` keeps the name in
        Prometheus but not in every store, and a baseline filed under another name than its samples
        would count the series from zero. Two series told apart only by their name (a selector of
        several metrics) are refused rather than merged.
        """
        start_ms, end_ms = math.floor(start * 1000) / 1000, _ms_ceil(end)
        inside = self._query(f"{selector}[{_duration(end_ms - start_ms)}]", end_ms, "window samples")
        lookback = _duration(self._config.lookback_seconds)
        before = self._query(f"last_over_time({selector}[{lookback}])", start_ms, "window start")
        samples: dict[LabelSet, list[Sample]] = {}
        for labels, values in _matrix(inside, "window samples"):
            _unique(samples, labels, "window samples").extend(values)
        baselines: dict[LabelSet, list[Sample]] = {}
        for labels, value in _vector(before, "window start"):
            _unique(baselines, labels, "window start").append((start_ms, value))
        for key, baseline in baselines.items():
            samples.setdefault(key, []).extend(baseline)
        return [Series(dict(key), tuple(s)) for key, s in samples.items()]

    def _query(self, promql: str, at: float, what: str) -> Any:
        """One instant query, retried with exponential backoff on connection errors, timeouts and 5xx."""
        # Set on every query: the secret files are re-read, so rotated credentials keep working.
        self._client.headers = self._auth_headers() or {}
        self._client.auth = self._basic_auth()  # type: ignore[assignment]  # hinted tuple; None is "no auth"
        attempts = self._config.retries + 1
        for attempt in range(attempts):
            try:
                return self._timed_query(promql, at)
            except (requests.RequestException, PrometheusApiClientException, ValueError, KeyError,
                    TypeError) as error:
                reason = f"Prometheus query for {what} failed: {_reason(error, self._config.timeout_seconds)}"
                if not _retryable(error) or attempt + 1 == attempts:
                    tries = f" (after {attempt + 1} attempts)" if attempt else ""
                    raise PrometheusUnavailable(reason + tries) from None
                log.warning("%s; retrying (%d/%d)", reason, attempt + 1, self._config.retries)
                self._sleep(self._config.backoff_seconds * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def _timed_query(self, promql: str, at: float) -> Any:
        began = self._clock()
        self.queries_sent += 1
        try:
            return self._client.custom_query(promql, params={"time": f"{at:.3f}"})
        finally:
            elapsed = self._clock() - began
            self.query_seconds += elapsed
            log.debug("prometheus query %s at %.3f took %.3fs", promql, at, elapsed)

    def _auth_headers(self) -> dict[str, str] | None:
        if not self._config.bearer_token_file:
            return None
        token = _read_secret(self._config.bearer_token_file, "bearer token", header=True)
        return {"Authorization": f"Bearer {token}"}

    def _basic_auth(self) -> tuple[str, str] | None:
        auth = self._config.basic_auth
        if auth is None:
            return None
        return auth.username, _read_secret(auth.password_file, "basic auth password")


def _unique(seen: dict[LabelSet, list[Sample]], labels: Mapping[str, str], where: str) -> list[Sample]:
    """A new, empty sample list for the series `labels` (its identity: every label but `__name__`)."""
    key = labelset({k: v for k, v in labels.items() if k != "__name__"})
    if key in seen:
        raise PrometheusUnavailable(
            f"the {where} query returned several series with the same labels but their metric name; "
            "a counter selector must select one metric"
        )
    seen[key] = []
    return seen[key]


def _ms_ceil(t: float) -> float:
    return math.ceil(t * 1000) / 1000


def _read_secret(path: str, what: str, *, header: bool = False) -> str:
    """The secret in the file at `path`, without surrounding whitespace, redacted from the logs from now on.

    `header`: the value goes into an HTTP header as it is, so it must be printable ASCII without spaces. Any
    other character is refused here, by the file's name alone: the HTTP library would refuse the header with
    an error that repeats its whole value, and that error would reach the release's status."""
    try:
        with open(path, encoding="utf-8") as f:
            value = f.read().strip()
    except (OSError, UnicodeDecodeError) as error:
        detail = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise PrometheusUnavailable(f"cannot read the {what} file {path}: {detail}") from None
    if not value:
        raise PrometheusUnavailable(f"the {what} file {path} is empty")
    remember_secret(value)
    if header and not all("!" <= c <= "~" for c in value):
        raise PrometheusUnavailable(f"the {what} file {path} holds a space, a line break, a control or a non-ASCII "
                                    "character inside the value; a header cannot carry it")
    return value
