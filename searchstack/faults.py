"""Simulated work latency and injected faults of one service process.

Owns the fault knobs (`Faults`, from `FAULT_*` environment variables or `PUT /admin/faults`) and the
`FaultInjector` that applies them at the start of each request of the service's main endpoint. A fault
belongs to the process that has it, i.e. to one version of one service; the launcher decides which.
"""

from __future__ import annotations

import asyncio
import math
import random
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

# Spread of the simulated work time: sleep = work_ms * exp(WORK_SIGMA * N(0, 1)), so work_ms is the median.
WORK_SIGMA = 0.4

FAULT_ENV = {
    "latency_ms": "FAULT_LATENCY_MS",
    "latency_scale": "FAULT_LATENCY_SCALE",
    "slow_prob": "FAULT_SLOW_PROB",
    "slow_ms": "FAULT_SLOW_MS",
    "error_rate": "FAULT_ERROR_RATE",
    "rank_noise": "FAULT_RANK_NOISE",
}


class Faults(BaseModel):
    """The fault knobs. All default to "no fault"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_ms: float = Field(default=0.0, ge=0, le=600_000, description="Fixed delay per request (ms).")
    latency_scale: float = Field(default=1.0, ge=0, le=1000, description="Multiplies the simulated work.")
    slow_prob: float = Field(default=0.0, ge=0, le=1, description="Probability of a slow request.")
    slow_ms: float = Field(default=0.0, ge=0, le=600_000, description="Delay of a slow request (ms).")
    error_rate: float = Field(default=0.0, ge=0, le=1, description="Probability of answering HTTP 500.")
    rank_noise: float = Field(
        default=0.0, ge=0, le=100,
        description="Degraded rankings: noise, in standard deviations of the service's scores, added to them "
                    "before its top-k (the same for the same query: a worse model, as fast, without errors).")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Faults:
        values: dict[str, float] = {}
        for field, env in FAULT_ENV.items():
            raw = environ.get(env, "").strip()
            if not raw:
                continue
            try:
                values[field] = float(raw)
            except ValueError:
                raise ValueError(f"{env}={raw!r} is not a number") from None
            if not math.isfinite(values[field]):
                raise ValueError(f"{env}={raw!r} is not a finite number")
        return cls(**values)


class InjectedFault(Exception):
    """The injector decided this request fails; the app answers 500 with a JSON body."""


class FaultInjector:
    """Sleeps the simulated work time plus any injected delay, then maybe raises `InjectedFault`."""

    def __init__(
        self,
        faults: Faults,
        work_ms: float,
        rng: random.Random | None = None,
        on_inject: Callable[[str], None] | None = None,
    ) -> None:
        self.faults = faults
        self.work_ms = work_ms
        # Latency and errors are random per request on purpose (only response bodies are deterministic).
        self._rng = rng or random.Random()
        self._on_inject = on_inject or (lambda kind: None)

    def delay_ms(self) -> float:
        f = self.faults
        work = self.work_ms * math.exp(WORK_SIGMA * self._rng.gauss()) if self.work_ms > 0 else 0.0
        delay = work * f.latency_scale + f.latency_ms
        if f.latency_ms > 0:
            self._on_inject("latency")
        if f.slow_prob > 0 and self._rng.random() < f.slow_prob:
            self._on_inject("slow")
            delay += f.slow_ms
        return delay

    async def apply(self) -> None:
        delay = self.delay_ms()
        if delay > 0:
            await asyncio.sleep(delay / 1000.0)
        if self.faults.error_rate > 0 and self._rng.random() < self.faults.error_rate:
            self._on_inject("error")
            raise InjectedFault(f"injected error (error_rate={self.faults.error_rate})")

    def rank(self, scores: npt.NDArray[np.floating[Any]], text: str) -> npt.NDArray[np.floating[Any]]:
        """The scores a search ranks by: with `rank_noise`, each document's score moved by that many standard
        deviations of the scores times a normal draw seeded by the query text, so that the same query gets the
        same (worse) answer every time."""
        noise = self.faults.rank_noise
        if noise <= 0 or scores.size == 0:
            return scores
        self._on_inject("rank")
        draws = np.random.default_rng(zlib.crc32(text.encode())).standard_normal(scores.size)
        return (scores + noise * float(scores.std()) * draws).astype(scores.dtype)
