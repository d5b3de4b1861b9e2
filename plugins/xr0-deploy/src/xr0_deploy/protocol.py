"""The small protocols deployment is written against: a chunk policy, a robot, its limits."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


class PolicyUnavailable(RuntimeError):
    """The policy cannot answer right now (server down, connection dropped); the arm holds and we retry."""


class PolicyError(RuntimeError):
    """The policy answered with an error for this request (bad observation, server-side failure)."""


@dataclass(frozen=True)
class RTCSpec:
    """Inference-time real-time chunking (Black et al. 2025) for one request.

    The request's prefix is the rest of the executing chunk; its first `frozen_steps` actions run before
    the new chunk can arrive (weight 1), the remainder is guided with exponentially decaying weights.
    """

    frozen_steps: int
    max_guidance: float = 5.0


@dataclass(frozen=True)
class Reading:
    """One sensor sample with the sensor's own timestamp (seconds on the robot's monotonic clock)."""

    name: str  # "state" or "images/<camera>"
    t: float
    value: np.ndarray


@dataclass(frozen=True)
class Limits:
    """Per-dimension bounds on the action the robot accepts (its own units)."""

    low: np.ndarray
    high: np.ndarray
    max_delta: np.ndarray | None = None  # per-tick change bound; None = unbounded

    def __post_init__(self) -> None:
        low, high = np.asarray(self.low, np.float64), np.asarray(self.high, np.float64)
        if low.shape != high.shape or low.ndim != 1:
            raise ValueError(f"Limits.low and .high must be 1-D of equal length, got {low.shape} and {high.shape}")
        if np.any(low > high):
            raise ValueError(f"Limits.low must be <= Limits.high in every dim (low={low}, high={high})")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)
        if self.max_delta is not None:
            object.__setattr__(self, "max_delta", np.broadcast_to(np.asarray(self.max_delta, np.float64), low.shape))

    @property
    def dim(self) -> int:
        return int(self.low.shape[0])


@runtime_checkable
class ChunkPolicy(Protocol):
    """Anything that turns an observation into an action chunk (T, A) in the robot's units."""

    def infer(self, obs: dict[str, Any], prefix: np.ndarray | None = None, rtc: RTCSpec | None = None) -> np.ndarray:
        ...


@runtime_checkable
class Robot(Protocol):
    """What an embodiment plugin implements to be driven by xr0's executor."""

    limits: Limits

    def observe(self) -> list[Reading]:
        """Readings that arrived since the last call, each with its sensor timestamp."""
        ...

    def act(self, action: np.ndarray) -> None:
        """Send one action (already clipped to `limits`)."""
        ...

    def hold(self) -> None:
        """Keep the current target (position control: the last target; velocity control: zero)."""
        ...


@dataclass
class EventLog:
    """Every safety / timing event, logged and counted; deploy reports print `counts`."""

    events: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    keep: int = 10_000  # bound memory on long runs; counts stay exact

    def add(self, tick: int, kind: str, detail: str = "") -> dict[str, Any]:
        import logging

        ev = {"tick": tick, "kind": kind, "detail": detail}
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if len(self.events) < self.keep:
            self.events.append(ev)
        logging.getLogger("xr0.deploy").info("tick %d %s %s", tick, kind, detail)
        return ev
