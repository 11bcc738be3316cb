"""Release hooks as the release spec declares them (`spec.hooks`), and what a call came to.

Pure: parsing and the result type only. Parsing goes through the project's one reader (`analysis.reader`):
`read_hooks` records its problems on the release's reader, `hooks_from_list` / `HookSpec.from_dict` raise
`InvalidHook` with all of them. The calls themselves are made by `controller.adapters.http.hooks.HttpHooks`
at the edge; the state machine reads `HookResult.passed`. See `controller.adapters.http.hooks` for what each kind means.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from analysis.reader import Reader
from controller.core.urls import RefusedUrl, UrlPolicy, redact_url

_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_SECRET_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]{1,253}")
HOOK_FIELDS = ("name", "kind", "url", "timeout", "retries", "failurePolicy", "secretRef", "secretFile", "metadata")
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
class SecretRef:
    """`secretRef: {name, key}`: one key of a Kubernetes Secret in the release's own namespace."""

    name: str
    key: str


@dataclass(frozen=True)
class HookSpec:
    name: str
    kind: HookKind
    url: str
    timeout: float = 10.0
    retries: int = 2
    failure_policy: FailurePolicy = FailurePolicy.FAIL
    secret_file: str | None = None
    secret_ref: SecretRef | None = None
    # Static fields merged into the payload (e.g. a load test's command), as Flagger's `metadata`.
    metadata: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, path: str = "spec.hooks[0]", policy: UrlPolicy | None = None) -> HookSpec:
        """Parse one hook or raise InvalidHook naming every problem by its path."""
        r = Reader()
        hook = read_hook(r, d, path, policy)
        r.raise_if_problems(InvalidHook)
        assert hook is not None, "a hook without problems"
        return hook

    def __repr__(self) -> str:
        return f"HookSpec({self.name!r}, {self.kind.value}, {redact_url(self.url)})"


def hooks_from_list(value: Any, path: str = "spec.hooks", policy: UrlPolicy | None = None) -> tuple[HookSpec, ...]:
    """Parse the list of hooks of a release spec or raise InvalidHook with the problems of all of them."""
    r = Reader()
    hooks = read_hooks(r, value, path, policy)
    r.raise_if_problems(InvalidHook)
    return hooks


def read_hooks(r: Reader, value: Any, path: str = "spec.hooks", policy: UrlPolicy | None = None
               ) -> tuple[HookSpec, ...]:
    """The hooks of `value` (None: none), every problem recorded on `r`; a hook with problems is left out."""
    if value is None:
        return ()
    hooks = [hook for i, item in enumerate(r.items(value, path, "hooks", non_empty=False))
             if (hook := read_hook(r, item, f"{path}[{i}]", policy)) is not None]
    names = [h.name for h in hooks]
    for name in sorted(set(names)):
        if names.count(name) > 1:
            r.problem(path, f"the name {name!r} is used more than once")
    return tuple(hooks)


def read_hook(r: Reader, value: Any, path: str, policy: UrlPolicy | None = None) -> HookSpec | None:
    """One hook, or None after recording its problems on `r`."""
    if not isinstance(value, Mapping):
        r.mapping(value, path)  # records why it is not one
        return None
    mark = len(r.problems)
    d = r.fields(value, path, HOOK_FIELDS)
    # A stand-in kind for a wrong one: the hook is dropped, so its kind-dependent defaults do not matter.
    kind = HookKind(r.choice(d.get("kind"), f"{path}.kind", tuple(HookKind)))
    hook = HookSpec(
        name=r.string(d.get("name"), f"{path}.name", _NAME, default=kind.value,
                      what="a DNS label (lower-case letters, digits, '-')"),
        kind=kind, url=_url(r, d.get("url"), f"{path}.url", policy or UrlPolicy()),
        timeout=_timeout(r, d.get("timeout"), f"{path}.timeout"),
        retries=_retries(r, d.get("retries"), f"{path}.retries", kind),
        failure_policy=_failure_policy(r, d.get("failurePolicy"), f"{path}.failurePolicy", kind),
        secret_file=_secret_file(r, d.get("secretFile"), f"{path}.secretFile"),
        secret_ref=_secret_ref(r, d.get("secretRef"), f"{path}.secretRef"),
        metadata=_metadata(r, d.get("metadata"), f"{path}.metadata"))
    if hook.secret_file is not None and hook.secret_ref is not None:
        r.problem(path, "give at most one of secretRef and secretFile")
    return hook if len(r.problems) == mark else None


def _url(r: Reader, value: Any, path: str, policy: UrlPolicy) -> str:
    url = r.string(value, path)
    if url:
        try:
            policy.check(url)
        except RefusedUrl as exc:
            r.problem(path, str(exc))
    return url


def _timeout(r: Reader, value: Any, path: str) -> float:
    seconds = r.duration(value, path, default=10.0)  # refuses a negative number itself
    if seconds == 0 or seconds > MAX_TIMEOUT_SECONDS:
        r.problem(path, f"{value!r} is not between 0 and {MAX_TIMEOUT_SECONDS:g}s")
    return seconds


def _retries(r: Reader, value: Any, path: str, kind: HookKind) -> int:
    retries = r.integer(value, path, 0, MAX_RETRIES, default=_DEFAULT_RETRIES.get(kind, 2),
                        what=f"between 0 and {MAX_RETRIES}")
    if kind is HookKind.CONFIRM_PROMOTION and retries:
        r.problem(path, "a confirmPromotion gate is asked again on every tick; it takes no retries")
    return retries


def _failure_policy(r: Reader, value: Any, path: str, kind: HookKind) -> FailurePolicy:
    default = FailurePolicy.FAIL if kind in _GATES else FailurePolicy.IGNORE
    policy = FailurePolicy(r.choice(value, path, tuple(FailurePolicy), default=default))
    if kind is HookKind.CONFIRM_PROMOTION and policy is FailurePolicy.IGNORE:
        r.problem(path, "a confirmPromotion gate cannot ignore its answer (it would never hold)")
    return policy


def _secret_file(r: Reader, value: Any, path: str) -> str | None:
    if value is not None and not (isinstance(value, str) and value.startswith("/")):
        r.problem(path, f"{value!r} is not an absolute file path (mount the Secret as a file)")
        return None
    return value


def _secret_ref(r: Reader, value: Any, path: str) -> SecretRef | None:
    if value is None:
        return None
    d = r.fields(value, path, ("name", "key"))
    name = r.string(d.get("name"), f"{path}.name", _SECRET_NAME, what="a Secret's name (a DNS subdomain)")
    key = r.string(d.get("key"), f"{path}.key", _SECRET_KEY, what="a Secret's key (letters, digits, '-', '_', '.')")
    return SecretRef(name, key)


def _metadata(r: Reader, value: Any, path: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        r.problem(path, "must be a mapping of strings to strings")
        return {}
    return dict(value)


@dataclass(frozen=True)
class HookRules:
    """What a runner lets a release's hooks do: which URLs they may call, where their secrets may come from.

    The cluster controller (`HookRules.cluster`): URLs by the admin's policy (in-cluster Services plus an
    allow-list), secrets from `secretRef` only; a `secretFile` would let a namespace editor make the
    controller read any file of its pod (its service-account token) as a key. A local run
    (`HookRules.local`): `secretFile` under one of `secret_dirs` only (the release's workdir, the
    `--hook-secret-dir` flags). Checked by `refusals` before anything is called.
    """

    urls: UrlPolicy = field(default_factory=UrlPolicy)
    secret_files: bool = False
    secret_dirs: tuple[str, ...] = ()

    @classmethod
    def cluster(cls, allow_hosts: Sequence[str] | None = None) -> HookRules:
        return cls(UrlPolicy.in_cluster(allow_hosts), secret_files=False)

    @classmethod
    def local(cls, secret_dirs: Sequence[str], urls: UrlPolicy | None = None) -> HookRules:
        dirs = tuple(posixpath.normpath(d) for d in secret_dirs if d and d.startswith("/"))
        return cls(urls or UrlPolicy(), secret_files=True, secret_dirs=dirs)

    def allows_file(self, path: str) -> bool:
        """Lexically under one of `secret_dirs` (the adapter checks again after resolving links)."""
        path = posixpath.normpath(path)
        return self.secret_files and any(path.startswith(d.rstrip("/") + "/") for d in self.secret_dirs)


def refusals(hook: HookSpec, rules: HookRules) -> list[str]:
    """Why this runner must not call this hook (its URL, its secret's source); empty when it may."""
    problems = []
    try:
        rules.urls.check(hook.url)
    except RefusedUrl as exc:
        problems.append(f"hook {hook.name}: url: {exc}")
    if hook.secret_file is not None and not rules.secret_files:
        problems.append(f"hook {hook.name}: secretFile: the cluster controller reads no file for a release; "
                        "name a Kubernetes Secret of the release's namespace with secretRef: {name, key}")
    elif hook.secret_file is not None and not rules.allows_file(hook.secret_file):
        where = ", ".join(rules.secret_dirs) or "none configured"
        problems.append(f"hook {hook.name}: secretFile: {hook.secret_file} is outside the directories a local run "
                        f"reads secrets from (the release's workdir and --hook-secret-dir: {where})")
    return problems


@dataclass(frozen=True)
class HookResult:
    """What a hook call came to. `passed` already applies the kind's rule and the failure policy."""

    passed: bool
    status: int | None
    reason: str
    duration: float
    attempts: int = 0
