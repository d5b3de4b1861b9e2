"""A model in this process as a ChunkPolicy: observation dict → batch (normalised) → chunk (robot units).

Normalisation lives here, on the serving side, from the checkpoint's statistics (SPEC: statistics travel
with the checkpoint), so robot code sends raw states and receives raw actions.
"""
from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from xr0_deploy.protocol import RTCSpec
from xr0_deploy.rtc import rtc_sample, rtc_weights

DIM = 32  # canonical padded width (xr0.types.ACTION_DIM)
STD_FLOOR = 1e-6  # padded dims carry std 0: dividing by it would blow up


class RequestError(ValueError):
    """The observation or prefix cannot be used; the message says which field and what was expected."""


class FlowModel(Protocol):
    """xr0's Policy interface (src/xr0/policy.py), normalised canonical 32-dim actions."""

    def predict_chunk(self, batch: dict[str, Any], prefix: Tensor | None = None, steps: int = 5) -> Tensor: ...
    def context(self, batch: dict[str, Any]) -> Any: ...
    def velocity(self, ctx: Any, batch: dict[str, Any], x_tau: Tensor, tau: Tensor, prefix_len: int = 0) -> Tensor: ...


def _stat(node: Any, key: str) -> np.ndarray | None:
    if node is None or node.get(key) is None:
        return None
    return np.asarray(node[key], dtype=np.float64)


class Normalizer:
    """Raw robot vectors ↔ the model's normalised canonical 32-dim vectors (mean/std statistics).

    stats = {"actions": {"mean", "std"} of shape (32,) or (T, 32) (per-timestep), "state": {...} or None};
    a width equal to the number of valid action dims is accepted too. Raw actions are the valid dims of
    `action_mask`, in order; the raw state fills `state_slots` of the canonical state (default: the first dims).
    """

    def __init__(self, stats: dict[str, Any] | None = None, action_mask: Any = None, state_dim: int | None = None,
                 state_slots: Any = None):
        stats = stats or {}
        unknown = set(stats) - {"actions", "state", "action_mask"}
        if unknown:
            raise ValueError(f"normalisation stats: unknown keys {sorted(unknown)}; expected actions, state")
        mask = np.ones(DIM, bool) if action_mask is None else np.asarray(action_mask, bool).reshape(-1)
        if mask.shape != (DIM,):
            raise ValueError(f"action_mask must have {DIM} entries, got {mask.shape}")
        self.action_mask, self.idx = mask, np.flatnonzero(mask)
        self.a_mean, self.a_std = self._canonical(stats.get("actions"), "actions")
        s_mean = _stat(stats.get("state"), "mean")
        self.state_dim = state_dim or (s_mean.shape[-1] if s_mean is not None else None)
        self.state_slots = None if state_slots is None else np.asarray(state_slots, int).reshape(-1)
        self.s_mean, self.s_std = self._canonical(stats.get("state"), "state", scatter=False)
        if self.state_slots is not None and self.state_dim is not None and len(self.state_slots) != self.state_dim:
            raise ValueError(f"state_slots has {len(self.state_slots)} entries for a {self.state_dim}-dim state")

    def _canonical(self, node: Any, what: str, scatter: bool = True) -> tuple[np.ndarray, np.ndarray]:
        mean, std = _stat(node, "mean"), _stat(node, "std")
        if mean is None or std is None:
            if node is not None and (mean is None) != (std is None):
                raise ValueError(f"normalisation stats.{what} needs both mean and std")
            return np.zeros(DIM), np.ones(DIM)
        out = []
        for arr in (mean, std):
            w = arr.shape[-1]
            full = np.zeros(arr.shape[:-1] + (DIM,)) if w != DIM else arr
            if w != DIM:
                if scatter and w == len(self.idx):
                    full[..., self.idx] = arr
                elif not scatter and self.state_slots is not None and w == len(self.state_slots):
                    full[..., self.state_slots] = arr
                elif not scatter and w <= DIM:
                    full[..., :w] = arr
                else:
                    raise ValueError(f"normalisation stats.{what} has width {w}; expected {DIM} or the "
                                     f"{len(self.idx)} valid action dims")
            out.append(full)
        std = np.where(np.abs(out[1]) < STD_FLOOR, 1.0, out[1])
        return out[0], std

    def _rows(self, arr: np.ndarray, n: int) -> np.ndarray:
        if arr.ndim == 1:
            return np.broadcast_to(arr, (n, DIM))
        if arr.shape[0] < n:
            raise RequestError(f"per-timestep statistics cover {arr.shape[0]} steps, {n} requested")
        return arr[:n]

    @property
    def action_dim(self) -> int:
        return len(self.idx)

    def state_to_model(self, state: np.ndarray) -> np.ndarray:
        slots = np.arange(len(state)) if self.state_slots is None else self.state_slots
        s = np.zeros(DIM)
        s[slots] = state
        out = (s - self.s_mean) / self.s_std
        pad = np.ones(DIM, bool)
        pad[slots] = False
        out[pad] = 0.0  # padding stays zero whatever the statistics say
        return out

    def actions_to_model(self, actions: np.ndarray) -> np.ndarray:
        n = len(actions)
        full = np.zeros((n, DIM))
        full[:, self.idx] = actions
        out = (full - self._rows(self.a_mean, n)) / self._rows(self.a_std, n)
        out[:, ~self.action_mask] = 0.0
        return out

    def actions_from_model(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        raw = x * self._rows(self.a_std, n) + self._rows(self.a_mean, n)
        return raw[:, self.idx]


def _as_array(value: Any, field: str) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        try:
            value = np.asarray(value)
        except Exception as exc:
            raise RequestError(f"{field}: cannot read as an array ({exc})") from exc
    if value.dtype.kind not in "biuf":
        raise RequestError(f"{field}: expected a numeric array, got dtype {value.dtype}")
    return value


def _image(value: Any, field: str) -> np.ndarray:
    img = _as_array(value, field)
    if img.ndim != 3:
        raise RequestError(f"{field}: expected an image (H, W, 3) or (3, H, W), got shape {img.shape}")
    if img.shape[-1] == 3 and img.shape[0] != 3:
        img = img.transpose(2, 0, 1)  # HWC → CHW
    if img.shape[0] != 3:
        raise RequestError(f"{field}: expected 3 colour channels, got shape {img.shape}")
    img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
    if not np.all(np.isfinite(img)):
        raise RequestError(f"{field}: NaN or inf in the image")
    return img


def collect_images(obs: dict[str, Any], cameras: list[str] | None) -> dict[str, np.ndarray]:
    """Images from `images: {camera: array}` or openpi-style `observation/<name>` 3-D arrays."""
    found: dict[str, np.ndarray] = {}
    if "images" in obs:
        if not isinstance(obs["images"], dict):
            raise RequestError("images: expected a mapping camera name -> image array")
        found = {str(k): _image(v, f"images/{k}") for k, v in obs["images"].items()}
    else:
        for k, v in obs.items():
            if isinstance(k, str) and k.startswith("observation/") and "state" not in k:
                found[k.split("/", 1)[1]] = _image(v, k)
    if cameras:
        extra = sorted(set(found) - set(cameras))
        if extra:
            raise RequestError(f"images: unknown cameras {extra}; this policy uses {cameras}")
    return found


class LocalPolicy:
    """A FlowModel plus its statistics as a ChunkPolicy; the server and in-process runs share it."""

    def __init__(self, model: FlowModel, normalizer: Normalizer, steps: int = 5, chunk_len: int | None = None,
                 cameras: list[str] | None = None, embodiment: str | None = None, name: str = "policy",
                 robot: Any = None):
        """`robot`: the xr0 Embodiment (or None); its relative dims are trained relative to the state at frame t,
        so chunks go back to absolute robot units here and prefixes arrive absolute."""
        self.model, self.norm, self.steps, self.robot = model, normalizer, steps, robot
        self.chunk_len = chunk_len or getattr(model, "chunk_len", None)
        self.cameras, self.embodiment, self.name = cameras, embodiment, name
        self.last_infer_ms = 0.0

    def metadata(self) -> dict[str, Any]:
        return {"policy": self.name, "chunk_len": self.chunk_len, "action_dim": self.norm.action_dim,
                "state_dim": self.norm.state_dim, "embodiment": self.embodiment, "cameras": self.cameras,
                "steps": self.steps, "prefix_actions": True, "rtc": True}

    def _relative(self) -> bool:
        return self.robot is not None and any(getattr(self.robot, "relative", ()))

    def raw_state(self, obs: dict[str, Any]) -> np.ndarray:
        if not isinstance(obs, dict):
            raise RequestError(f"the observation must be a mapping, got {type(obs).__name__}")
        key = "state" if "state" in obs else "observation/state" if "observation/state" in obs else None
        if key is None:
            raise RequestError("missing 'state' (or openpi's 'observation/state'): the raw robot state vector")
        state = _as_array(obs[key], key).astype(np.float64).reshape(-1) if np.ndim(obs[key]) <= 1 else None
        if state is None:
            raise RequestError(f"{key}: expected a 1-D vector, got shape {np.shape(obs[key])}")
        want = self.norm.state_dim
        if (want is not None and len(state) != want) or len(state) > DIM:
            raise RequestError(f"{key}: expected {want or f'<= {DIM}'} values, got {len(state)}")
        if not np.all(np.isfinite(state)):
            raise RequestError(f"{key}: NaN or inf in the state")
        return state

    def to_batch(self, obs: dict[str, Any]) -> dict[str, Any]:
        state = self.raw_state(obs)
        prompt = obs.get("prompt", obs.get("instruction", ""))
        if not isinstance(prompt, str):
            raise RequestError(f"prompt: expected a string, got {type(prompt).__name__}")
        images = collect_images(obs, self.cameras)
        names = self.cameras or sorted(images)
        shapes = {v.shape for v in images.values()}
        if len(shapes) > 1:
            raise RequestError(f"images: all cameras need the same size, got {sorted(shapes)}")
        if self.cameras and not images:
            raise RequestError(f"images: this policy needs cameras {self.cameras}, none sent")
        shape = shapes.pop() if shapes else (3, 1, 1)
        frames = np.stack([images.get(n, np.zeros(shape, np.float32)) for n in names]) if names else \
            np.zeros((0,) + shape, np.float32)
        return {
            "images": torch.from_numpy(frames)[None],  # (1,V,3,H,W) in [0,1]
            "image_mask": torch.tensor([[n in images for n in names]], dtype=torch.bool),  # (1,V)
            "instruction": [prompt],
            "state": torch.from_numpy(self.norm.state_to_model(state)).float()[None],  # (1,32)
            "action_mask": torch.from_numpy(self.norm.action_mask)[None],  # (1,32)
            "embodiment": [self.embodiment or ""],
        }

    def _prefix(self, prefix: Any, state: np.ndarray | None = None) -> np.ndarray:
        p = _as_array(prefix, "prefix_actions").astype(np.float64)
        if p.ndim != 2 or p.shape[1] != self.norm.action_dim:
            raise RequestError(f"prefix_actions: expected (P, {self.norm.action_dim}), got {p.shape}")
        if self.chunk_len is not None and len(p) > self.chunk_len:
            raise RequestError(f"prefix_actions: {len(p)} steps, longer than the chunk ({self.chunk_len})")
        if not np.all(np.isfinite(p)):
            raise RequestError("prefix_actions: NaN or inf")
        if self._relative() and state is not None:
            p = self.robot.to_relative(p, state).astype(np.float64)
        return self.norm.actions_to_model(p)

    def infer(self, obs: dict[str, Any], prefix: np.ndarray | None = None, rtc: RTCSpec | None = None) -> np.ndarray:
        """Chunk (T, A) in robot units; `prefix` (P, A) is committed (trained prefix) or, with `rtc`, guided."""
        t0 = time.perf_counter()
        batch = self.to_batch(obs)
        state = self.raw_state(obs)
        pre = None if prefix is None or len(prefix) == 0 else self._prefix(prefix, state)
        with torch.no_grad():
            if rtc is not None and pre is not None:
                x = self._rtc(batch, pre, rtc)
            else:
                pre_t = None if pre is None else torch.from_numpy(pre).float()[None]  # (1,P,32)
                x = self.model.predict_chunk(batch, pre_t, steps=self.steps)  # (1,T,32)
        if self.chunk_len is None:
            self.chunk_len = int(x.shape[1])
        out = self.norm.actions_from_model(x[0].double().cpu().numpy())
        if self._relative():
            out = self.robot.to_absolute(out, state).astype(np.float64)
        self.last_infer_ms = (time.perf_counter() - t0) * 1000
        return out

    def _rtc(self, batch: dict[str, Any], pre: np.ndarray, rtc: RTCSpec) -> Tensor:
        if self.chunk_len is None:
            self.chunk_len = int(self.model.predict_chunk(batch, None, steps=1).shape[1])  # learn T once
        T, P = self.chunk_len, len(pre)
        if not 0 < rtc.frozen_steps <= P:
            raise RequestError(f"rtc.frozen_steps must be in 1..{P} (the prefix length), got {rtc.frozen_steps}")
        ctx = self.model.context(batch)
        target = torch.zeros(1, T, DIM)
        target[0, :P] = torch.from_numpy(pre).float()  # (1,T,32) old chunk aligned to the new one
        draw = getattr(self.model, "draw_noise", None)
        noise = draw(1) if draw else torch.randn(1, T, DIM)  # (1,T,32)
        mask = torch.from_numpy(self.norm.action_mask)
        return rtc_sample(lambda x, tau: self.model.velocity(ctx, batch, x, tau, 0), noise, target,
                          rtc_weights(T, rtc.frozen_steps, P), self.steps, rtc.max_guidance, mask)


SIM_DOF = 7


def sim_policy(chunk_len: int = 10, dof: int = SIM_DOF, seed: int = 0, steps: int = 5) -> LocalPolicy:
    """The tiny random policy with statistics for a `dof`-joint simulated arm (actions std 0.25 rad)."""
    from xr0_deploy.tiny import TinyFlowPolicy

    mask = np.arange(DIM) < dof
    stats = {"actions": {"mean": np.zeros(dof), "std": np.full(dof, 0.25)},
             "state": {"mean": np.zeros(dof), "std": np.full(dof, 0.5)}}
    return LocalPolicy(TinyFlowPolicy(chunk_len, seed=seed), Normalizer(stats, mask), steps=steps,
                       cameras=None, embodiment="sim_arm", name=f"sim:tiny:{seed}")


FAST = ("auto", "on", "off")


def load_local(spec: str, steps: int = 5, device: str = "cpu", chunk_len: int = 10, seed: int = 0,
               fast: str = "auto", compile: bool = False) -> LocalPolicy:
    """`sim:tiny` → the tiny random policy; anything else is an xr0 checkpoint (file or export directory).

    fast: `auto`/`on` serve through xr0.infer.FastPolicy (prompt planned once, CUDA graphs on a GPU) where the
    backbone is Qwen3-VL (`on` fails otherwise); `off` runs Policy.predict_chunk (the HF forward) as trained."""
    if fast not in FAST:
        raise ValueError(f"fast must be one of {FAST}, got {fast!r}")
    if spec.startswith("sim:"):
        if spec not in ("sim:tiny",):
            raise ValueError(f"unknown simulated policy {spec!r}; available: sim:tiny")
        return sim_policy(chunk_len=chunk_len, seed=seed, steps=steps)
    from xr0.checkpoint import load_policy

    loaded = load_policy(spec, map_location=device)
    if not hasattr(loaded.policy, "predict_chunk") or not hasattr(loaded.policy, "velocity"):
        raise ValueError(f"{spec}: its stage ({loaded.stage}) has no flow policy (predict_chunk/velocity); serve "
                         f"a stage-2 or stage-3 checkpoint")
    stats = loaded.stats if isinstance(loaded.stats, dict) else {}
    robot = _embodiment(loaded.embodiment)
    mask = stats.get("action_mask")
    if mask is None and robot is not None:
        mask = robot.action_mask()
    if mask is None:  # no embodiment (synthetic data) and no mask in the stats: every canonical dim
        mask = np.ones(DIM, bool)
    if robot is not None and not np.array_equal(np.asarray(mask, bool), robot.action_mask()):
        raise ValueError(f"{spec}: the statistics' action_mask does not match embodiment {robot.name}'s slots")
    norm = Normalizer({k: v for k, v in stats.items() if k in ("actions", "state")}, mask,
                      state_dim=robot.state_dim if robot is not None else None,
                      state_slots=robot.slots("state") if robot is not None else None)
    head = getattr(loaded.policy, "head", None)
    model = loaded.policy
    if fast == "on" or (fast == "auto" and hasattr(getattr(model, "backbone", None), "hf")):
        from xr0.infer import FastPolicy

        model = FastPolicy(model, compile=compile)
    return LocalPolicy(model, norm, steps=steps, chunk_len=getattr(head, "chunk", None),
                       cameras=list(robot.cameras) if robot is not None and robot.cameras else None,
                       embodiment=loaded.embodiment, name=spec, robot=robot)


def _embodiment(name: str | None) -> Any:
    """The registered xr0 Embodiment `name`, or None (no name, or not registered: e.g. synthetic data)."""
    if not name:
        return None
    from xr0.embodiments import get
    from xr0.registry import RegistryError

    try:
        return get(name)
    except RegistryError:
        return None
