"""The ShadowPairs port over HTTP: the controller reads a shadow phase's pairs from the comparator.

On a cluster the comparator is the Service the release names (`spec.strategy.shadow.comparator`) in the release's
namespace, `http://<comparator>.<namespace>.svc:<port>`; the local platform gives its comparator's address.
An answer that cannot be read is a TemporaryError: the phase holds (and never passes) until it can be.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from analysis.shadow import ShadowPair
from controller.adapters.shadow.comparator import PAIRS_PATH
from controller.core.observation import MirroredPair, ShadowBatch
from controller.core.plan import ShadowRoutes
from controller.ports import TemporaryError


class HttpShadowPairs:
    def __init__(self, url: str | None = None, client: httpx.Client | None = None, timeout: float = 3.0) -> None:
        self.url = url  # None: the comparator's Service in the release's namespace
        self.client = client or httpx.Client(timeout=timeout)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> HttpShadowPairs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def base_url(self, namespace: str, routes: ShadowRoutes) -> str:
        return self.url or f"http://{routes.comparator}.{namespace}.svc:{routes.port}"

    def pairs(self, namespace: str, routes: ShadowRoutes, epoch: str, after: int) -> ShadowBatch:
        url = self.base_url(namespace, routes).rstrip("/") + PAIRS_PATH
        try:
            response = self.client.get(url, params={"epoch": epoch, "after": after})
        except httpx.HTTPError as exc:
            raise TemporaryError(f"shadow comparator {url} unreachable: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise TemporaryError(f"shadow comparator {url} answered HTTP {response.status_code}")
        try:
            return batch_from_json(response.json())
        except (ValueError, KeyError, TypeError) as exc:
            raise TemporaryError(f"shadow comparator {url} answered something unreadable: {exc}") from None


def batch_from_json(data: Mapping[str, Any]) -> ShadowBatch:
    """A comparator's answer (`comparator.PairLog.since`) as the core's data; KeyError/TypeError/ValueError when
    it is not one."""
    pairs = tuple(
        MirroredPair(ShadowPair(str(p["query"]), _ids(p["stable"]), _ids(p["stableAgain"]), _ids(p["new"])),
                     {str(k): str(v) for k, v in dict(p.get("served") or {}).items()},
                     score_drift=_optional_float(p.get("scoreDrift")),
                     score_drift_noise=_optional_float(p.get("scoreDriftNoise")))
        for p in data["pairs"])
    latency = {str(side): None if v is None else {str(k): float(x) for k, x in dict(v).items()}
               for side, v in dict(data.get("latencyMs") or {}).items()}
    return ShadowBatch(epoch=str(data["epoch"]), head=int(data["head"]), pairs=pairs,
                       mirrored=int(data.get("mirrored", 0)), dropped=int(data.get("dropped", 0)),
                       unanswered={str(k): int(v) for k, v in dict(data.get("unanswered") or {}).items()},
                       latency_ms=latency)


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _ids(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise TypeError(f"a ranking is a list of ids, not {type(value).__name__}")
    return tuple(str(v) for v in value)
