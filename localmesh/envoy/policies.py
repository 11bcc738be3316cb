"""The per-route policies of an Istio HTTP route in Envoy's terms: timeout, retries, fault injection, mirroring.

This module owns the fields the project's validator (`controller.adapters.istio.validate`) refuses and Envoy
obeys: each is checked here (shape, range, the values Envoy
accepts) and translated as istiod does (`pilot/pkg/networking/core/route/route.go`, `route/retry/retry.go`).
Everything is pure. A field that cannot be translated raises `Refusal(path, reason)`; the caller names the object.
"""

from __future__ import annotations

import http
import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "GRPC_STATUS",
    "ISTIO_DEFAULT_RETRIES",
    "RETRY_ON",
    "Refusal",
    "envoy_duration",
    "fault_filter_config",
    "mirror_fraction",
    "retry_policy",
    "route_timeout",
]

Obj = dict[str, Any]

# Istio's mesh-wide default (meshConfig.defaultHttpRetryPolicy) when a route sets no `retries`: istiod puts it on
# every outbound route. The translation applies it only when asked (`Options.default_retries`).
ISTIO_DEFAULT_RETRIES: Mapping[str, Any] = {
    "attempts": 2, "retryOn": "connect-failure,refused-stream,unavailable,cancelled,503",
}
# Envoy's `retry_on` conditions (router filter docs: x-envoy-retry-on and x-envoy-retry-grpc-on).
RETRY_ON = frozenset({
    "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "envoy-ratelimited",
    "retriable-4xx", "refused-stream", "retriable-status-codes", "retriable-headers", "http3-post-connect-failure",
    "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
})
# gRPC status names as Istio's `abort.grpcStatus` takes them, in code order (OK = 0 ... UNAUTHENTICATED = 16).
GRPC_STATUS = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
    "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)")
_UNIT_NS = {"h": 3_600 * 10**9, "m": 60 * 10**9, "s": 10**9, "ms": 10**6, "us": 10**3, "µs": 10**3, "ns": 1}
_ONE_MS_NS = 10**6


class Refusal(Exception):
    """A part of an object the translation cannot express: where (path inside the object) and why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def _fields(value: Any, path: str, known: frozenset[str], kind: str) -> Mapping[str, Any]:
    """`value` as an object whose keys are all in `known`, else a Refusal naming the first stranger."""
    if not isinstance(value, dict):
        raise Refusal(path, f"{value!r} is not an object ({kind})")
    for key in value:
        if key not in known:
            raise Refusal(f"{path}.{key}", f"not translated: {kind} fields here are {sorted(known)}")
    return value


def _duration_ns(value: Any, path: str, minimum_ns: int) -> int:
    """Nanoseconds of an Istio duration ("10s", "250ms", "1m30s", "1.5s"), refused below `minimum_ns`."""
    if not isinstance(value, str) or not value or _DURATION.sub("", value) != "":
        raise Refusal(path, f"{value!r} is not a duration such as '10s', '250ms' or '1m30s'")
    total = 0
    for number, unit in _DURATION.findall(value):
        whole, _, frac = number.partition(".")
        total += int(whole) * _UNIT_NS[unit]
        if frac:
            total += int(frac) * _UNIT_NS[unit] // 10 ** len(frac)
    if total < minimum_ns:
        raise Refusal(path, f"{value!r} is shorter than {minimum_ns / _ONE_MS_NS:g}ms")
    return total


def envoy_duration(nanoseconds: int) -> str:
    """A protobuf JSON duration ("0s", "1.5s", "0.25s") for Envoy."""
    seconds, rest = divmod(nanoseconds, 10**9)
    return f"{seconds}s" if rest == 0 else f"{seconds}.{rest:09d}".rstrip("0") + "s"


def route_timeout(value: Any, path: str) -> str:
    """Istio's `timeout`; absent means no timeout at all ("0s"), as istiod sets (Envoy's own default is 15s)."""
    return "0s" if value is None else envoy_duration(_duration_ns(value, path, 0))


def _percent(value: Any, path: str) -> Obj:
    """An Istio `Percent` ({value: 0..100}) as Envoy's FractionalPercent per million, as istiod rounds it."""
    pct = _fields(value, path, frozenset({"value"}), "Percent").get("value", 0)
    if isinstance(pct, bool) or not isinstance(pct, int | float) or not 0 <= pct <= 100:
        raise Refusal(f"{path}.value", f"{pct!r} is not a percentage in 0..100")
    return {"numerator": int(pct * 10_000), "denominator": "MILLION"}


def _retry_on(value: Any, path: str) -> tuple[str, list[int]]:
    """Istio's `retryOn`: Envoy conditions and HTTP status codes, comma-separated; codes go to
    `retriable_status_codes` and bring the `retriable-status-codes` condition with them."""
    if not isinstance(value, str):
        raise Refusal(path, f"{value!r} is not a string")
    conditions: list[str] = []
    codes: list[int] = []
    for part in (p.strip() for p in value.split(",")):
        if part.isdigit() and int(part) in http.HTTPStatus._value2member_map_:
            codes.append(int(part))
        elif part in RETRY_ON:
            conditions.append(part)
        elif part:
            raise Refusal(path, f"{part!r} is neither an HTTP status code nor one of Envoy's {sorted(RETRY_ON)}")
    if codes and "retriable-status-codes" not in conditions:
        conditions.append("retriable-status-codes")
    return ",".join(conditions), codes


_RETRY_FIELDS = frozenset({"attempts", "perTryTimeout", "retryOn", "retryRemoteLocalities",
                           "retryIgnorePreviousHosts", "backoff"})
_PREVIOUS_HOSTS = {"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}
_PREVIOUS_PRIORITIES = {"name": "envoy.retry_priorities.previous_priorities", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
    "update_frequency": 2}}


def retry_policy(value: Any, path: str) -> Obj | None:
    """Istio's `retries` as Envoy's RetryPolicy, istiod's way: its default policy (2 attempts, connect-failure,
    refused-stream, unavailable, cancelled, 503; other hosts first) overridden field by field; `attempts: 0` means
    no retries at all (None)."""
    spec = _fields(value, path, _RETRY_FIELDS, "HTTPRetry")
    attempts = spec.get("attempts", 0)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
        raise Refusal(f"{path}.attempts", f"{attempts!r} is not a whole number >= 0")
    for flag in ("retryRemoteLocalities", "retryIgnorePreviousHosts"):
        if flag in spec and not isinstance(spec[flag], bool):
            raise Refusal(f"{path}.{flag}", f"{spec[flag]!r} is not a boolean")
    retry_on, codes = _retry_on(spec.get("retryOn", ISTIO_DEFAULT_RETRIES["retryOn"]), f"{path}.retryOn")
    policy: Obj = {"retry_on": retry_on, "num_retries": attempts, "host_selection_retry_max_attempts": 5}
    if codes:
        policy["retriable_status_codes"] = codes
    if spec.get("retryIgnorePreviousHosts", True):
        policy["retry_host_predicate"] = [_PREVIOUS_HOSTS]
    if "perTryTimeout" in spec:
        policy["per_try_timeout"] = envoy_duration(_duration_ns(spec["perTryTimeout"], f"{path}.perTryTimeout",
                                                                _ONE_MS_NS))
    if "backoff" in spec:
        policy["retry_back_off"] = {"base_interval": envoy_duration(
            _duration_ns(spec["backoff"], f"{path}.backoff", _ONE_MS_NS))}
    if spec.get("retryRemoteLocalities"):
        policy["retry_priority"] = _PREVIOUS_PRIORITIES
    return None if attempts == 0 else policy


def _delay(value: Any, path: str) -> Obj:
    spec = _fields(value, path, frozenset({"fixedDelay", "exponentialDelay", "percentage", "percent"}), "Delay")
    if "exponentialDelay" in spec:
        raise Refusal(f"{path}.exponentialDelay", "not translated: Istio itself drops exponential delays")
    if "fixedDelay" not in spec:
        raise Refusal(path, "needs fixedDelay")
    out: Obj = {"fixed_delay": envoy_duration(_duration_ns(spec["fixedDelay"], f"{path}.fixedDelay", _ONE_MS_NS))}
    if "percentage" in spec:
        out["percentage"] = _percent(spec["percentage"], f"{path}.percentage")
    else:  # the deprecated integer `percent`; neither means no request is delayed, as in Istio
        percent = spec.get("percent", 0)
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
            raise Refusal(f"{path}.percent", f"{percent!r} is not a whole percentage in 0..100")
        out["percentage"] = {"numerator": percent, "denominator": "HUNDRED"}
    return out


def _abort(value: Any, path: str) -> Obj:
    spec = _fields(value, path, frozenset({"httpStatus", "grpcStatus", "http2Error", "percentage"}), "Abort")
    if "http2Error" in spec:
        raise Refusal(f"{path}.http2Error", "not translated: Istio itself drops HTTP/2 error aborts")
    if ("httpStatus" in spec) == ("grpcStatus" in spec):
        raise Refusal(path, "needs exactly one of httpStatus, grpcStatus")
    # An abort without a percentage aborts no request: Envoy's default fraction is 0, as in Istio.
    out: Obj = {"percentage": _percent(spec.get("percentage", {"value": 0}), f"{path}.percentage")}
    if "httpStatus" in spec:
        status = spec["httpStatus"]
        if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
            raise Refusal(f"{path}.httpStatus", f"{status!r} is not an HTTP status Envoy can answer (200..599)")
        out["http_status"] = status
    else:
        name = spec["grpcStatus"]
        if name not in GRPC_STATUS:
            raise Refusal(f"{path}.grpcStatus", f"{name!r} is not one of {list(GRPC_STATUS)}")
        out["grpc_status"] = GRPC_STATUS.index(name)
    return out


def fault_filter_config(value: Any, path: str) -> Obj:
    """Istio's `fault` as the per-route config of Envoy's fault filter (envoy.filters.http.fault)."""
    spec = _fields(value, path, frozenset({"delay", "abort"}), "HTTPFaultInjection")
    if not spec:
        raise Refusal(path, "needs a delay or an abort")
    out: Obj = {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}
    if "delay" in spec:
        out["delay"] = _delay(spec["delay"], f"{path}.delay")
    if "abort" in spec:
        out["abort"] = _abort(spec["abort"], f"{path}.abort")
    return out


def mirror_fraction(percentage: Any, path: str) -> Obj | None:
    """The share of requests `mirror` copies: all of them without `mirrorPercentage`, none at 0 (no policy)."""
    if percentage is None:
        return {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
    fraction = _percent(percentage, path)
    return {"default_value": fraction} if fraction["numerator"] > 0 else None
