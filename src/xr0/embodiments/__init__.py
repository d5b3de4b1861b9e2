"""Embodiments: what a robot's actions and observations are, and how they map onto the canonical
padded 32-dim layout with an action mask (docs/method.md §4). Plugins register their own with
`@EMBODIMENTS.register("myarm")`, and call `xr0.embodiments.check(MyArm())` in their tests."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from xr0.registry import EMBODIMENTS
from xr0.types import ACTION_DIM


@dataclass(frozen=True)
class Embodiment:
    """A robot: names, cameras, control rate, limits, relative dims, chunk length, canonical mapping."""

    name: str
    action_names: tuple[str, ...]
    state_names: tuple[str, ...]
    cameras: tuple[str, ...]
    control_hz: float
    chunk: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    relative: tuple[bool, ...] = ()  # per action dim: relative to the state at frame t (arm joints/poses)
    action_slots: tuple[int, ...] = ()  # canonical index of each action dim (default 0..A-1)
    state_slots: tuple[int, ...] = ()
    relative_state_index: tuple[int, ...] = field(default=())  # state dim each relative action refers to
    camera_sizes: tuple[tuple[int, int], ...] = ()  # native (H, W) per camera, as the robot delivers them

    def to_dict(self) -> dict:
        """Every field as JSON-friendly lists: checkpoints carry it, so a served model knows its robot."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @property
    def action_dim(self) -> int:
        return len(self.action_names)

    @property
    def state_dim(self) -> int:
        return len(self.state_names)

    def slots(self, kind: str) -> tuple[int, ...]:
        given = self.action_slots if kind == "action" else self.state_slots
        n = self.action_dim if kind == "action" else self.state_dim
        return given or tuple(range(n))

    def action_mask(self) -> np.ndarray:
        """(32,) bool: the canonical dims this robot uses."""
        m = np.zeros(ACTION_DIM, dtype=bool)
        m[list(self.slots("action"))] = True
        return m

    def to_canonical(self, x: np.ndarray, kind: str = "action") -> np.ndarray:
        """(..., A) robot units → (..., 32) zero-padded canonical layout."""
        x = np.asarray(x, dtype=np.float32)
        out = np.zeros(x.shape[:-1] + (ACTION_DIM,), dtype=np.float32)
        out[..., list(self.slots(kind))] = x
        return out

    def from_canonical(self, x: np.ndarray, kind: str = "action") -> np.ndarray:
        """(..., 32) → (..., A) robot units (padding dropped)."""
        return np.asarray(x)[..., list(self.slots(kind))]

    def to_relative(self, actions: np.ndarray, state: np.ndarray) -> np.ndarray:
        """actions (T, A) absolute → relative to the state at frame t on the relative dims."""
        out = np.array(actions, dtype=np.float32, copy=True)
        for j, rel in enumerate(self.relative):
            if rel:
                out[..., j] -= state[self.relative_state_index[j] if self.relative_state_index else j]
        return out

    def to_absolute(self, actions: np.ndarray, state: np.ndarray) -> np.ndarray:
        out = np.array(actions, dtype=np.float32, copy=True)
        for j, rel in enumerate(self.relative):
            if rel:
                out[..., j] += state[self.relative_state_index[j] if self.relative_state_index else j]
        return out

    def clip(self, actions: np.ndarray) -> np.ndarray:
        return np.clip(actions, self.action_low, self.action_high)


class EmbodimentError(ValueError):
    pass


def _plain(v):
    return [_plain(x) for x in v] if isinstance(v, (tuple, list)) else v


def _tuples(v):
    return tuple(_tuples(x) for x in v) if isinstance(v, (tuple, list)) else v


def from_dict(d: dict) -> Embodiment:
    """The embodiment a checkpoint recorded: the registered one of that name when it still has the same fields
    (a plugin's own subclass keeps its methods), else a plain Embodiment rebuilt from the recorded fields."""
    from xr0.registry import RegistryError

    fields = {f.name for f in dataclasses.fields(Embodiment)}
    recorded = {k: _tuples(v) for k, v in d.items() if k in fields}
    try:
        registered = get(recorded["name"])
    except RegistryError:
        return Embodiment(**recorded)
    now = {k: _tuples(_plain(getattr(registered, k))) for k in recorded}
    changed = sorted(k for k in recorded if now[k] != recorded[k])
    if changed:
        raise EmbodimentError(f"embodiment '{recorded['name']}' differs from the one this model was trained with in "
                              f"{', '.join(changed)} (e.g. {changed[0]}: now {now[changed[0]]}, trained "
                              f"{recorded[changed[0]]}); install the plugin version the model was trained with")
    return registered


def check(emb: Embodiment) -> None:
    """Conformance check a plugin calls in one line of its tests; raises EmbodimentError naming each problem."""
    p = []
    a, s = emb.action_dim, emb.state_dim
    if a == 0 or a > ACTION_DIM:
        p.append(f"action_names: {a} dims; must be 1..{ACTION_DIM}")
    if s > ACTION_DIM:
        p.append(f"state_names: {s} dims; must be at most {ACTION_DIM}")
    if len(set(emb.action_names)) != a:
        p.append("action_names: duplicate names")
    for key, n in (("action_low", a), ("action_high", a)):
        if len(getattr(emb, key)) != n:
            p.append(f"{key}: {len(getattr(emb, key))} values for {n} action dims")
    if len(emb.action_low) == len(emb.action_high) and any(lo >= hi for lo, hi in zip(emb.action_low, emb.action_high)):
        p.append("action_low must be below action_high on every dim")
    if emb.relative and len(emb.relative) != a:
        p.append(f"relative: {len(emb.relative)} flags for {a} action dims")
    if emb.relative_state_index and len(emb.relative_state_index) != a:
        p.append(f"relative_state_index: {len(emb.relative_state_index)} entries for {a} action dims")
    if any(emb.relative) and not emb.relative_state_index and s < a:
        p.append("relative actions need relative_state_index (which state dim each action is relative to)")
    for kind, n in (("action", a), ("state", s)):
        sl = emb.slots(kind)
        if len(sl) != n or len(set(sl)) != n or any(not 0 <= i < ACTION_DIM for i in sl):
            p.append(f"{kind}_slots: must be {n} distinct indices in 0..{ACTION_DIM - 1}")
    if emb.control_hz <= 0:
        p.append("control_hz must be positive")
    if emb.chunk < 1:
        p.append("chunk must be >= 1")
    if not emb.cameras:
        p.append("cameras: name at least one camera")
    if emb.camera_sizes and (len(emb.camera_sizes) != len(emb.cameras)
                             or any(len(hw) != 2 or min(hw) < 1 for hw in emb.camera_sizes)):
        p.append(f"camera_sizes: one (H, W) of positive sizes per camera ({len(emb.cameras)}), got {emb.camera_sizes}")
    if not p:  # the canonical mapping must round-trip
        x = np.random.default_rng(0).uniform(emb.action_low, emb.action_high, size=(emb.chunk, a)).astype(np.float32)
        if not np.allclose(emb.from_canonical(emb.to_canonical(x)), x):
            p.append("to_canonical/from_canonical do not round-trip")
        if emb.action_mask().sum() != a:
            p.append("action_mask does not cover exactly the action dims")
        if emb.relative:
            st = np.random.default_rng(1).normal(size=max(s, 1)).astype(np.float32)
            if not np.allclose(emb.to_absolute(emb.to_relative(x, st), st), x, atol=1e-5):
                p.append("to_relative/to_absolute do not round-trip")
    if p:
        raise EmbodimentError(f"embodiment '{emb.name}' fails the conformance check:\n  - " + "\n  - ".join(p))


def _arm7(name: str, hz: float, chunk: int, cameras: tuple[str, ...],
          state_names: tuple[str, ...] = ("x", "y", "z", "roll", "pitch", "yaw", "gripper", "gripper_2")) -> Embodiment:
    names = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")
    return Embodiment(name=name, action_names=names, state_names=state_names, cameras=cameras, control_hz=hz,
                      chunk=chunk, action_low=(-1.0,) * 7, action_high=(1.0,) * 7)


@EMBODIMENTS.register("libero_franka")
def libero_franka() -> Embodiment:
    """LIBERO Franka Panda: 7-D delta end-effector + gripper, 2 cameras, chunk 10 (docs/method.md §4). The state is the
    8-D one of the LeRobot LIBERO datasets (openpi's and LeRobot's): end-effector position, axis-angle, 2 finger qpos."""
    return _arm7("libero_franka", 20.0, 10, ("agentview", "wrist"),
                 ("x", "y", "z", "axis_angle_x", "axis_angle_y", "axis_angle_z", "gripper_qpos_0", "gripper_qpos_1"))


@EMBODIMENTS.register("calvin")
def calvin() -> Embodiment:
    """CALVIN Franka: 7-D relative end-effector + gripper, static + gripper cameras, chunk 10."""
    return _arm7("calvin", 30.0, 10, ("static", "gripper"))


@EMBODIMENTS.register("simpler_widowx")
def simpler_widowx() -> Embodiment:
    """SimplerEnv / Bridge WidowX at 5 Hz: 7-D delta end-effector + gripper, one camera, chunk 4. The state is the
    8-D one of the Bridge LeRobot conversion (bridge_orig_lerobot): position, Euler angles, a zero pad, gripper."""
    return _arm7("simpler_widowx", 5.0, 4, ("image",), ("x", "y", "z", "roll", "pitch", "yaw", "pad", "gripper"))


@EMBODIMENTS.register("bimanual_30hz")
def bimanual_30hz() -> Embodiment:
    """A 30 Hz bimanual arm: 2 × (6 joints + gripper) = 14-D, joints relative to frame t, 3 cameras, chunk 30 (1 s)."""
    names = tuple(f"{side}_{j}" for side in ("left", "right") for j in (*[f"joint{i}" for i in range(6)], "gripper"))
    return Embodiment(name="bimanual_30hz", action_names=names, state_names=names,
                      cameras=("head", "left_wrist", "right_wrist"), control_hz=30.0, chunk=30,
                      action_low=(-3.2,) * 14, action_high=(3.2,) * 14, relative=tuple("gripper" not in n for n in names))


def get(name: str) -> Embodiment:
    """The registered embodiment `name`, built."""
    obj = EMBODIMENTS.get(name)
    return obj() if callable(obj) and not isinstance(obj, Embodiment) else obj
