"""Release hooks as the release spec declares them (`spec.hooks`), and what a call came to.

Pure: parsing and the result type only. The calls themselves are made by `controller.adapters.http.hooks.HttpHooks`
at the edge; the state machine reads `HookResult.passed`. See `controller.adapters.http.hooks` for what each kind means.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from controller.core.urls import RefusedUrl, UrlPolicy, redact_url

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
MAX_TIMEOUT_SECONDS = 300.0
MAX_RETRIES = 10


class HookKind(StrEnum):
    PRE_ROLLOUT = "preRollout"
    LOAD_TEST = "loadTest"
    CONFIRM_PROMOTION = "confirmPromotion"
    POST_ROLLOUT = "postRollout"
    ON_ROLLBACK = "onRollback"


class FailurePolicy(StrEnum):
    FAIL = "fail"
    IGNORE = "ignore"


_GATES = (HookKind.PRE_ROLLOUT, HookKind.CONFIRM_PROMOTION)
# Retries within one call; a gate is asked again next tick instead, a load test is re-fired next interval.
_DEFAULT_RETRIES = {HookKind.CONFIRM_PROMOTION: 0, HookKind.LOAD_TEST: 0}


class InvalidHook(ValueError):
    """Every problem of a hook spec, one `path: message` per entry, like `InvalidSpec`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = tuple(problems)


@dataclass(frozen=True)
class HookSpec:
    name: str
    kind: HookKind
    url: str
    timeout: float = 10.0
    retries: int = 2
    failure_policy: FailurePolicy = FailurePolicy.FAIL
    secret_file: str | None = None
    # Static fields merged into the payload (e.g. a load test's command), as Flagger's `metadata`.
    metadata: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, path: str = "spec.hooks[0]", policy: UrlPolicy | None = None) -> HookSpec:
        """Parse one hook or raise InvalidHook naming every problem by its path."""
        return _HookReader(path, policy or UrlPolicy()).read(d)

    def __repr__(self) -> str:
        return f"HookSpec({self.name!r}, {self.kind.value}, {redact_url(self.url)})"


def hooks_from_list(value: Any, path: str = "spec.hooks", policy: UrlPolicy | None = None) -> tuple[HookSpec, ...]:
    """Parse the list of hooks of a release spec, collecting the problems of all of them."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidHook([f"{path}: must be a list of hooks"])
    hooks: list[HookSpec] = []
    problems: list[str] = []
    for i, item in enumerate(value):
        try:
            hooks.append(HookSpec.from_dict(item, f"{path}[{i}]", policy))
        except InvalidHook as exc:
            problems.extend(exc.problems)
    names = [h.name for h in hooks]
    problems += [f"{path}: the name {n!r} is used more than once" for n in sorted(set(names)) if names.count(n) > 1]
    if problems:
        raise InvalidHook(problems)
    return tuple(hooks)


class _HookReader:
    KNOWN = ("name", "kind", "url", "timeout", "retries", "failurePolicy", "secretFile", "metadata")

    def __init__(self, path: str, policy: UrlPolicy) -> None:
        self.path, self.policy = path, policy
        self.problems: list[str] = []

    def problem(self, field_: str, message: str) -> None:
        self.problems.append(f"{self.path}.{field_}: {message}" if field_ else f"{self.path}: {message}")

    def read(self, d: Any) -> HookSpec:
        if not isinstance(d, Mapping):
            raise InvalidHook([f"{self.path}: must be a mapping, not {type(d).__name__}"])
        for key in d:
            if key not in self.KNOWN:
                self.problem(str(key), f"is not a known field (known: {', '.join(self.KNOWN)})")
        kind = self._kind(d.get("kind"))
        hook = HookSpec(
            name=self._name(d.get("name"), kind), kind=kind or HookKind.POST_ROLLOUT, url=self._url(d.get("url")),
            timeout=self._timeout(d.get("timeout")), retries=self._retries(d.get("retries"), kind),
            failure_policy=self._policy(d.get("failurePolicy"), kind), secret_file=self._secret(d.get("secretFile")),
            metadata=self._metadata(d.get("metadata")))
        if self.problems:
            raise InvalidHook(self.problems)
        return hook

    def _kind(self, value: Any) -> HookKind | None:
        try:
            return HookKind(value)
        except ValueError:
            known = ", ".join(k.value for k in HookKind)
            self.problem("kind", "is required" if value is None else f"{value!r} is not one of {known}")
            return None

    def _name(self, value: Any, kind: HookKind | None) -> str:
        if value is None:
            return kind.value if kind else "hook"
        if not isinstance(value, str) or not _NAME.match(value):
            self.problem("name", f"{value!r} is not a DNS label (lower-case letters, digits, '-')")
            return "hook"
        return value

    def _url(self, value: Any) -> str:
        if not isinstance(value, str) or not value:
            self.problem("url", "is required" if value is None else "must be a non-empty string")
            return ""
        try:
            self.policy.check(value)
        except RefusedUrl as exc:
            self.problem("url", str(exc))
        return value

    def _timeout(self, value: Any) -> float:
        if value is None:
            return 10.0
        seconds: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)
        elif isinstance(value, str) and (m := _DURATION.match(value.strip())):
            seconds = float(m.group(1)) * _UNITS[m.group(2)]
        if seconds is None:
            self.problem("timeout", f"{value!r} is not a duration (e.g. 5s, 500ms, 1m or seconds)")
            return 10.0
        if not 0 < seconds <= MAX_TIMEOUT_SECONDS:
            self.problem("timeout", f"{value!r} is not between 0 and {MAX_TIMEOUT_SECONDS:g}s")
        return seconds

    def _retries(self, value: Any, kind: HookKind | None) -> int:
        if value is None:
            return _DEFAULT_RETRIES.get(kind, 2) if kind else 2
        if not isinstance(value, int) or isinstance(value, bool):
            self.problem("retries", f"must be a whole number, not {type(value).__name__}")
            return 0
        if not 0 <= value <= MAX_RETRIES:
            self.problem("retries", f"{value} is not between 0 and {MAX_RETRIES}")
        if kind is HookKind.CONFIRM_PROMOTION and value:
            self.problem("retries", "a confirmPromotion gate is asked again on every tick; it takes no retries")
        return value

    def _policy(self, value: Any, kind: HookKind | None) -> FailurePolicy:
        if value is None:
            return FailurePolicy.FAIL if kind in _GATES else FailurePolicy.IGNORE
        try:
            policy = FailurePolicy(value)
        except ValueError:
            self.problem("failurePolicy", f"{value!r} is not one of fail, ignore")
            return FailurePolicy.FAIL
        if kind is HookKind.CONFIRM_PROMOTION and policy is FailurePolicy.IGNORE:
            self.problem("failurePolicy", "a confirmPromotion gate cannot ignore its answer (it would never hold)")
        return policy

    def _secret(self, value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not value.startswith("/"):
            self.problem("secretFile", f"{value!r} is not an absolute file path (mount the Secret as a file)")
            return None
        return value

    def _metadata(self, value: Any) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                     for k, v in value.items()):
            self.problem("metadata", "must be a mapping of strings to strings")
            return {}
        return dict(value)


@dataclass(frozen=True)
class HookResult:
    """What a hook call came to. `passed` already applies the kind's rule and the failure policy."""

    passed: bool
    status: int | None
    reason: str
    duration: float
    attempts: int = 0
