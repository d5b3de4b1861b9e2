"""A simulated arm and the tick-driven simulation that writes the executor's trace.

Latency is simulated in ticks: a request made on tick k is answered on tick k + d, whatever the policy's
real compute time, so traces are exact and tests never depend on the machine's speed.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from xr0_deploy.executor import Executor, declared_chunk_len, failure_kind
from xr0_deploy.protocol import ChunkPolicy, Limits, PolicyError, PolicyUnavailable, Reading


class LimitViolation(RuntimeError):
    """The simulated arm received an action outside its limits: the safety layer let something through."""


class SimArm:
    """Position-controlled joints that move a fraction `gain` toward the target each tick, one camera.

    The camera runs at its own rate and the joints at theirs, both stamped on the arm's clock, so the
    runner's resampling is exercised. Out-of-limit commands raise: in tests that is a safety failure.
    """

    def __init__(self, dof: int = 7, limit: float = 1.0, gain: float = 0.5, image_size: int = 8,
                 clock: Callable[[], float] | None = None, camera_hz: float = 15.0, joint_hz: float = 100.0,
                 seed: int = 0, max_delta: float | None = None):
        self.limits = Limits(np.full(dof, -limit), np.full(dof, limit), max_delta)
        self.dof, self.gain, self.image_size = dof, gain, image_size
        self.pos = np.zeros(dof)
        self.target = np.zeros(dof)
        self.clock = clock
        self._t = 0.0
        self.camera_period, self.joint_period = 1.0 / camera_hz, 1.0 / joint_hz
        self._last_cam = self._last_joint = -np.inf
        self.rng = np.random.default_rng(seed)
        self.sent: list[np.ndarray] = []  # every accepted command, for assertions
        self.holds = 0

    def now(self) -> float:
        return self.clock() if self.clock else self._t

    def observe(self) -> list[Reading]:
        t, out = self.now(), []
        if t - self._last_joint >= self.joint_period - 1e-9:
            out.append(Reading("state", t, self.pos.copy()))
            self._last_joint = t
        if t - self._last_cam >= self.camera_period - 1e-9:
            shade = int(127 + 120 * np.tanh(self.pos[0]))
            img = np.full((self.image_size, self.image_size, 3), shade, np.uint8)
            out.append(Reading("images/front", t, img))
            self._last_cam = t
        return out

    def act(self, action: np.ndarray) -> None:
        a = np.asarray(action, np.float64)
        if a.shape != (self.dof,) or not np.all(np.isfinite(a)):
            raise LimitViolation(f"SimArm got {a!r}: expected {self.dof} finite values")
        if np.any(a < self.limits.low) or np.any(a > self.limits.high):
            raise LimitViolation(f"SimArm got {a} outside [{self.limits.low[0]}, {self.limits.high[0]}]")
        self.target = a
        self.sent.append(a)

    def hold(self) -> None:
        self.holds += 1  # the target stays where it is

    def step(self, dt: float) -> None:
        """Advance the physics by one control period (simulation only)."""
        self.pos = self.pos + self.gain * (self.target - self.pos)
        self._t += dt


def latest_obs(readings: Iterable[Reading], prompt: str = "") -> dict[str, Any]:
    """Observation dict from readings, keeping the newest per sensor (tick-exact simulation)."""
    obs: dict[str, Any] = {"prompt": prompt, "images": {}}
    for r in readings:
        if r.name.startswith("images/"):
            obs["images"][r.name.split("/", 1)[1]] = r.value
        else:
            obs[r.name] = r.value
    if not obs["images"]:
        del obs["images"]
    return obs


def simulate(executor: Executor, policy: ChunkPolicy, arm: SimArm, ticks: int,
             latency: int | Callable[[int], int], hz: float = 30.0, prompt: str = "") -> list[dict[str, Any]]:
    """Run `ticks` control ticks; request n is answered `latency(n)` ticks after it was made (>= 1).
    Settings that do not fit the policy's declared chunk length fail here, before the first tick."""
    lat = latency if callable(latency) else (lambda n, d=int(latency): d)
    if executor.chunk_len is None and (declared := declared_chunk_len(policy)) is not None:
        executor.configure(declared)
    pending: list[tuple[int, int, np.ndarray | None, str, str]] = []  # (ready tick, id, chunk, error, kind)
    latest: dict[str, Any] = {}
    for k in range(ticks):
        for item in sorted((p for p in pending if p[0] <= k), key=lambda p: p[:2]):
            pending.remove(item)
            _, rid, chunk, err, kind = item
            executor.deliver(rid, chunk) if chunk is not None else executor.fail(rid, err, kind)
        for r in arm.observe():
            latest[r.name] = r
        step = executor.tick(k)
        if step.request is not None:
            req = step.request
            d = int(lat(req.id))
            if d < 1:
                raise ValueError(f"simulated latency must be >= 1 tick, got {d} for request {req.id}")
            try:
                chunk, err, kind = policy.infer(latest_obs(latest.values(), prompt), req.prefix, req.rtc), "", ""
            except (PolicyUnavailable, PolicyError, ValueError) as exc:
                chunk, err, kind = None, f"{type(exc).__name__}: {exc}", failure_kind(exc)
            pending.append((k + d, req.id, chunk, err, kind))
        if step.action is not None:
            arm.act(step.action)
        else:
            arm.hold()
        arm.step(1.0 / hz)
    return executor.trace


def write_trace(trace: list[dict[str, Any]], path: str | Path) -> Path:
    """One JSON object per tick (JSON lines)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for rec in trace:
            f.write(json.dumps(rec) + "\n")
    return path


def read_trace(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
