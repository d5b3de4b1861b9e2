"""Δt_inf, the inference latency in control ticks, estimated from the latencies measured so far."""
from __future__ import annotations

import math
from collections import deque

ESTIMATORS = ("max", "quantile")


class LatencyEstimator:
    """Rolling max (default: the safe choice for Δt_c ≥ Δt_inf) or a quantile over the last `window` chunks."""

    def __init__(self, kind: str = "max", window: int = 20, quantile: float = 0.9, initial: int | None = None):
        if kind not in ESTIMATORS:
            raise ValueError(f"latency estimator must be one of {ESTIMATORS}, got {kind!r}")
        if window < 1:
            raise ValueError(f"latency window must be >= 1, got {window}")
        if not 0.0 < quantile <= 1.0:
            raise ValueError(f"latency quantile must be in (0, 1], got {quantile}")
        self.kind, self.quantile = kind, quantile
        self._seen: deque[int] = deque(maxlen=window)
        self._initial = initial

    def add(self, ticks: int) -> None:
        self._seen.append(int(ticks))

    def estimate(self) -> int | None:
        """Current Δt_inf in ticks, or the initial guess (None) before any chunk arrived."""
        if not self._seen:
            return self._initial
        if self.kind == "max":
            return max(self._seen)
        ordered = sorted(self._seen)
        # nearest-rank quantile: an integer tick count that was actually observed
        return ordered[max(0, math.ceil(self.quantile * len(ordered)) - 1)]
