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

from xr0.embodiments import Embodiment
from xr0.registry import EMBODIMENTS
from xr0_deploy.executor import Executor, declared_chunk_len, declared_max_prefix, failure_kind
from xr0_deploy.protocol import ChunkPolicy, Limits, PolicyError, PolicyUnavailable, Reading

SIM_DOF = 7


class LimitViolation(RuntimeError):
    """The simulated arm received an action outside its limits: the safety layer let something through."""


@EMBODIMENTS.register("sim_arm")
def sim_arm() -> Embodiment:
    """The simulated position-controlled arm: 7 joints in [-1, 1] rad, one 8×8 camera, 30 Hz, chunk 10."""
    joints = tuple(f"joint{i}" for i in range(SIM_DOF))
    return Embodiment(name="sim_arm", action_names=joints, state_names=joints, cameras=("front",), control_hz=30.0,
                      chunk=10, action_low=(-1.0,) * SIM_DOF, action_high=(1.0,) * SIM_DOF, camera_sizes=((8, 8),))


class SimArm:
    """Position-controlled joints that move a fraction `gain` toward the target each tick, and cameras.

    Each camera runs at its own rate and the joints at theirs, all stamped on the arm's clock, so the runner's
    resampling is exercised. Out-of-limit commands raise: in tests that is a safety failure. `for_embodiment`
    builds one shaped like a real robot (its action/state dims, limits, cameras at their native sizes).
    """

    def __init__(self, dof: int = SIM_DOF, limit: float = 1.0, gain: float = 0.5, image_size: int = 8,
                 clock: Callable[[], float] | None = None, camera_hz: float = 15.0, joint_hz: float = 100.0,
                 seed: int = 0, max_delta: float | None = None, low: Any = None, high: Any = None,
                 state_dim: int | None = None, state_index: Any = None,
                 cameras: dict[str, tuple[int, int]] | None = None, drop_camera: dict[str, int] | None = None):
        low = np.full(dof, -limit) if low is None else np.asarray(low, np.float64)
        high = np.full(dof, limit) if high is None else np.asarray(high, np.float64)
        self.limits = Limits(low, high, max_delta)
        self.dof, self.gain = dof, gain
        self.cameras = dict(cameras or {"front": (image_size, image_size)})
        self.drop_camera = dict(drop_camera or {})  # camera → every n-th frame is dropped (a flaky USB camera)
        self.state_dim = state_dim or dof
        self.state_index = np.arange(min(dof, self.state_dim)) if state_index is None else np.asarray(state_index)
        self.pos = np.clip(np.zeros(dof), low, high)
        self.target = self.pos.copy()
        self.clock = clock
        self._t = 0.0
        self.camera_period, self.joint_period = 1.0 / camera_hz, 1.0 / joint_hz
        self._last_cam = self._last_joint = -np.inf
        self._frames = 0
        self.rng = np.random.default_rng(seed)
        self.sent: list[np.ndarray] = []  # every accepted command, for assertions
        self.holds = 0

    @classmethod
    def for_embodiment(cls, emb: Embodiment, image_sizes: dict[str, tuple[int, int]] | None = None,
                       **kw: Any) -> "SimArm":
        """A simulated arm with the embodiment's action/state dims, limits and cameras (native sizes from
        `camera_sizes`, else `image_sizes`, else 64×64)."""
        sizes = dict(zip(emb.cameras, emb.camera_sizes)) if emb.camera_sizes else dict(image_sizes or {})
        cams = {c: tuple(sizes.get(c, (64, 64))) for c in emb.cameras}
        ref = [emb.relative_state_index[j] if emb.relative_state_index else j for j in range(emb.action_dim)]
        ref = ref if all(r < emb.state_dim for r in ref) else None
        return cls(dof=emb.action_dim, low=emb.action_low, high=emb.action_high, state_dim=emb.state_dim,
                   state_index=ref, cameras=cams, **kw)

    def now(self) -> float:
        return self.clock() if self.clock else self._t

    def state(self) -> np.ndarray:
        s = np.zeros(self.state_dim)
        n = len(self.state_index)
        s[self.state_index] = self.pos[:n]
        return s

    def observe(self) -> list[Reading]:
        t, out = self.now(), []
        if t - self._last_joint >= self.joint_period - 1e-9:
            out.append(Reading("state", t, self.state()))
            self._last_joint = t
        if t - self._last_cam >= self.camera_period - 1e-9:
            self._frames += 1
            shade = int(127 + 120 * np.tanh(self.pos[0]))
            for name, (h, w) in self.cameras.items():
                every = self.drop_camera.get(name)
                if every and self._frames % every == 0:
                    out.append(Reading(f"images/{name}", t, None))  # the driver reports the frame as missing
                    continue
                out.append(Reading(f"images/{name}", t, np.full((h, w, 3), shade, np.uint8)))
            self._last_cam = t
        return out

    def act(self, action: np.ndarray) -> None:
        a = np.asarray(action, np.float64)
        if a.shape != (self.dof,) or not np.all(np.isfinite(a)):
            raise LimitViolation(f"SimArm got {a!r}: expected {self.dof} finite values")
        if np.any(a < self.limits.low) or np.any(a > self.limits.high):
            raise LimitViolation(f"SimArm got {a} outside [{self.limits.low}, {self.limits.high}]")
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
        executor.configure(declared, declared_max_prefix(policy))
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


def write_trace(trace: list[dict[str, Any]], path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """One JSON object per tick (JSON lines), after a first `{"meta": ...}` line when given (action names, limits,
    control rate, mode: what `xr0 deploy plot` labels the picture with). Written whole, then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        if meta is not None:
            f.write(json.dumps({"meta": meta}) + "\n")
        for rec in trace:
            f.write(json.dumps(rec) + "\n")
    tmp.replace(path)
    return path


def read_trace(path: str | Path) -> list[dict[str, Any]]:
    """The tick records of a trace (the meta line left out)."""
    return [r for r in _lines(path) if "meta" not in r]


def read_trace_meta(path: str | Path) -> dict[str, Any]:
    return next((r["meta"] for r in _lines(path) if "meta" in r), {})


def _lines(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
