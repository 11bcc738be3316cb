"""A service process's configuration (role, version, downstream URLs, faults), read from the environment.

Downstream URLs come from environment variables shaped like the ones Kubernetes Services give
(`ML_INFER_URL` ...). In local mode every URL points at the one mesh router port, and `<NAME>_HOST` sets
the Host header the router routes by.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from searchstack.faults import Faults

ROLES: tuple[str, ...] = ("master-search", "ml-infer", "ml-search", "keyword", "text-search")
# The services others call, and the prefix of their environment variables.
DOWNSTREAM_ENV_PREFIX: dict[str, str] = {
    "ml-infer": "ML_INFER",
    "ml-search": "ML_SEARCH",
    "keyword": "KEYWORD",
    "text-search": "TEXT_SEARCH",
}
DEFAULT_LANE_HEADER = "x-canary-lane"
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_USER_HEADER = "x-user-id"
# Per-user sums (telemetry.UserSums) keep this many user ids at most; later new users count as anonymous.
DEFAULT_MAX_TRACKED_USERS = 100_000


@dataclass(frozen=True)
class Downstream:
    """Where to reach one service: its base URL, and the Host header to send (None: the URL's host)."""

    url: str
    host: str | None = None


@dataclass(frozen=True)
class Settings:
    role: str
    version: str = "v1"
    workload: str = ""  # empty: "<role>-<version>"
    lane_header: str = DEFAULT_LANE_HEADER
    downstreams: Mapping[str, Downstream] = field(default_factory=dict)
    faults: Faults = field(default_factory=Faults)
    work_ms: float = 0.0
    timeout_s: float = DEFAULT_TIMEOUT_S
    # A/B experiments' assignment cookie: a search without it is a newly assigned user (see telemetry).
    assignment_cookie: str = "ab"
    # Per-user sums of A/B experiments (see telemetry.UserSums): the request header naming the user, and how
    # many user ids one process keeps at most.
    user_header: str = DEFAULT_USER_HEADER
    max_tracked_users: int = DEFAULT_MAX_TRACKED_USERS

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}; expected one of {', '.join(ROLES)}")
        if not self.workload:
            object.__setattr__(self, "workload", f"{self.role}-{self.version}")
        if self.work_ms < 0:
            raise ValueError(f"SEARCHSTACK_WORK_MS must be >= 0, got {self.work_ms}")
        if self.max_tracked_users < 0:
            raise ValueError(f"SEARCHSTACK_MAX_TRACKED_USERS must be >= 0, got {self.max_tracked_users}")
        if not self.user_header:
            raise ValueError("USER_HEADER must not be empty")
        for name, target in self.downstreams.items():
            parts = urlsplit(target.url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                env = DOWNSTREAM_ENV_PREFIX.get(name, name)
                raise ValueError(f"{env}_URL={target.url!r} is not an http URL")

    @property
    def served_by_entry(self) -> str:
        return f"{self.role}@{self.version}"

    def downstream(self, service: str) -> Downstream:
        return self.downstreams.get(service) or _default_downstream(service)

    @classmethod
    def from_env(cls, role: str, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        downstreams = {
            name: Downstream(
                url=env.get(f"{prefix}_URL", "").strip() or _default_downstream(name).url,
                host=env.get(f"{prefix}_HOST", "").strip() or None,
            )
            for name, prefix in DOWNSTREAM_ENV_PREFIX.items()
        }
        return cls(
            role=role,
            version=env.get("SEARCHSTACK_VERSION", "").strip() or "v1",
            workload=env.get("SEARCHSTACK_WORKLOAD", "").strip(),
            lane_header=(env.get("LANE_HEADER", "").strip() or DEFAULT_LANE_HEADER).lower(),
            downstreams=downstreams,
            faults=Faults.from_env(env),
            work_ms=_float_env(env, "SEARCHSTACK_WORK_MS", 0.0),
            timeout_s=_float_env(env, "SEARCHSTACK_TIMEOUT_S", DEFAULT_TIMEOUT_S),
            assignment_cookie=env.get("ASSIGNMENT_COOKIE", "").strip() or "ab",
            user_header=(env.get("USER_HEADER", "").strip() or DEFAULT_USER_HEADER).lower(),
            max_tracked_users=_int_env(env, "SEARCHSTACK_MAX_TRACKED_USERS", DEFAULT_MAX_TRACKED_USERS),
        )


def _default_downstream(service: str) -> Downstream:
    # What a Kubernetes Service named like the role, on the seed's port 8000, resolves to.
    return Downstream(url=f"http://{service}:8000")


def _float_env(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None


def _int_env(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None
