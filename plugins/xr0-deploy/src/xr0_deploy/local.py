"""A model in this process as a ChunkPolicy: raw observation → xr0.processor → model → actions in robot units.

Everything between the robot's world and the model is the checkpoint's Processor (the same code the training
reader ran), so robot code sends raw states and native camera frames and receives limit-checked actions.
`load_local` is the one way a checkpoint becomes a served policy: `xr0 serve`, `xr0 deploy` and `xr0 sim eval`
all call it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from xr0.processor import FRAMES, ObservationError, OutputError, Processor, collate, finish_images
from xr0_deploy.protocol import RTCSpec
from xr0_deploy.rtc import rtc_sample, rtc_weights

RequestError = ObservationError  # the server's name for "this request cannot be used"
FAST = ("auto", "on", "off")


class FlowModel(Protocol):
    """xr0's Policy interface (src/xr0/policy.py), normalised canonical 32-dim actions."""

    def predict_chunk(self, batch: dict[str, Any], prefix: Tensor | None = None, steps: int = 5,
                      noise: Tensor | None = None) -> Tensor: ...
    def context(self, batch: dict[str, Any]) -> Any: ...
    def velocity(self, ctx: Any, batch: dict[str, Any], x_tau: Tensor, tau: Tensor, prefix_len: Any = None) -> Tensor: ...


@dataclass
class Reply:
    """One answered request: actions (T, A) in `frame`, how many values were clipped to the limits, which cameras
    were missing (fed as black frames)."""

    actions: np.ndarray
    frame: str
    clipped: int
    missing_cameras: list[str]
    infer_ms: float


def _device(model: Any) -> torch.device:
    dev = getattr(model, "device", None)
    if isinstance(dev, torch.device):
        return dev
    params = getattr(model, "parameters", None)
    first = next(iter(params()), None) if callable(params) else None
    return first.device if first is not None else torch.device("cpu")


class LocalPolicy:
    """A FlowModel plus its Processor as a ChunkPolicy; the server and in-process runs share it.

    seed: every call draws its flow noise from a generator seeded with it (the released inference reseeds per
    call), so the same observation gives the same chunk; None draws fresh noise each call. max_prefix: the longest
    committed prefix Δt_c the model was trained with (the checkpoint's; None: unknown), declared in the metadata so
    the executor never grows the prefix past it."""

    def __init__(self, model: FlowModel, processor: Processor, steps: int = 5, name: str = "policy",
                 seed: int | None = None, max_prefix: int | None = None):
        self.model, self.processor, self.steps, self.name, self.seed = model, processor, steps, name, seed
        self.max_prefix = max_prefix
        self.device = _device(model)
        self.last_infer_ms = 0.0

    @property
    def chunk_len(self) -> int:
        return self.processor.chunk

    def metadata(self) -> dict[str, Any]:
        return {"policy": self.name, **self.processor.metadata(), "steps": self.steps, "prefix_actions": True,
                "rtc": True, "action_frames": list(FRAMES), "seed": self.seed, "max_prefix": self.max_prefix}

    def infer(self, obs: dict[str, Any], prefix: np.ndarray | None = None, rtc: RTCSpec | None = None) -> np.ndarray:
        """Chunk (T, A) in robot units (the processor's frame); `prefix` (P, A) committed, or guided with `rtc`."""
        return self.reply(obs, prefix, rtc).actions

    def reply(self, obs: dict[str, Any], prefix: np.ndarray | None = None, rtc: RTCSpec | None = None,
              frame: str | None = None, seed: int | None = None) -> Reply:
        t0 = time.perf_counter()
        proc = self.processor
        frame = frame or proc.frame
        if frame not in FRAMES:
            raise RequestError(f"action_frame: {frame!r} is not one of {list(FRAMES)}")
        sample = proc.observation(obs)
        raw_state = proc.raw_state(obs)
        batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in finish_images(collate([sample])).items()}
        pre = None if prefix is None or len(prefix) == 0 else proc.prefix(prefix, raw_state, frame)
        noise = self._noise(self.seed if seed is None else seed)
        with torch.no_grad():
            if rtc is not None and pre is not None:
                x = self._rtc(batch, pre, rtc, noise)
            else:
                pre_t = None if pre is None else torch.from_numpy(pre).to(self.device)[None]  # (1,P,32)
                x = self.model.predict_chunk(batch, pre_t, steps=self.steps, noise=noise)  # (1,T,32)
        actions, clipped = proc.decode(x[0], raw_state, frame)
        self.last_infer_ms = (time.perf_counter() - t0) * 1000
        missing = [c for c, present in zip(proc.cameras, sample["image_mask"]) if not present]
        return Reply(actions, frame, clipped, missing, self.last_infer_ms)

    def _noise(self, seed: int | None) -> Tensor | None:
        if seed is None:
            return None
        g = torch.Generator(device=self.device).manual_seed(int(seed))
        return torch.randn(1, self.chunk_len, 32, generator=g, device=self.device)  # (1,T,32)

    def _rtc(self, batch: dict[str, Any], pre: np.ndarray, rtc: RTCSpec, noise: Tensor | None) -> Tensor:
        T, P, dev = self.chunk_len, len(pre), self.device
        if not 0 < rtc.frozen_steps <= P:
            raise RequestError(f"rtc.frozen_steps must be in 1..{P} (the prefix length), got {rtc.frozen_steps}")
        if not (np.isfinite(rtc.max_guidance) and 0 <= rtc.max_guidance <= 1e3):
            raise RequestError(f"rtc.max_guidance must be a finite number in [0, 1000], got {rtc.max_guidance}")
        ctx = self.model.context(batch)
        target = torch.zeros(1, T, 32, device=dev)
        target[0, :P] = torch.from_numpy(pre).to(dev)  # (1,T,32) the old chunk aligned to the new one
        noise = torch.randn(1, T, 32, device=dev) if noise is None else noise  # (1,T,32)
        mask = torch.as_tensor(np.asarray(self.processor.action_mask).reshape(-1, 32).any(0), device=dev)
        return rtc_sample(lambda x, tau: self.model.velocity(ctx, batch, x, tau, None), noise, target,
                          rtc_weights(T, rtc.frozen_steps, P).to(dev), self.steps, rtc.max_guidance, mask)


def sim_policy(chunk_len: int = 10, seed: int = 0, steps: int = 5) -> LocalPolicy:
    """The tiny random policy for the simulated arm (`sim_arm`: actions std 0.25 rad, state std 0.5 rad)."""
    from xr0.embodiments import get
    from xr0.processor import ImageSpec
    from xr0_deploy.tiny import TinyFlowPolicy

    emb = get("sim_arm")
    a, s = np.zeros((chunk_len, 32)), np.zeros(32)
    stats = {"actions": {"mean": a, "std": np.where(emb.action_mask(), 0.25, 0.0)[None].repeat(chunk_len, 0)},
             "state": {"mean": s, "std": np.where(emb.to_canonical(np.ones(emb.state_dim), "state") > 0, 0.5, 0.0)}}
    proc = Processor.from_stats(emb, stats, chunk_len, ImageSpec(size=(8, 8), factor=1))
    return LocalPolicy(TinyFlowPolicy(chunk_len, seed=seed), proc, steps=steps, name=f"sim:tiny:{seed}")


def load_local(spec: str, steps: int = 5, device: str = "cpu", chunk_len: int = 10, seed: int = 0,
               fast: str = "auto", compile: bool = False, noise_seed: int | None = None,
               frame: str | None = None) -> LocalPolicy:
    """`sim:tiny` → the tiny random policy; anything else is an xr0 checkpoint (file or export directory).

    fast: `auto`/`on` serve through xr0.infer.FastPolicy (prompt planned once, CUDA graphs on a GPU) where the
    backbone declares a static prefill (xr0.backbones.protocol; `auto` says so and serves the eager path otherwise,
    `on` fails); `off` runs Policy.predict_chunk (the HF forward) as trained.
    noise_seed: reseed the flow noise on every call (see LocalPolicy); frame: the default reply frame."""
    if fast not in FAST:
        raise ValueError(f"fast must be one of {FAST}, got {fast!r}")
    if spec.startswith("sim:"):
        if spec not in ("sim:tiny",):
            raise ValueError(f"unknown simulated policy {spec!r}; available: sim:tiny")
        pol = sim_policy(chunk_len=chunk_len, seed=seed, steps=steps)
    else:
        from xr0.checkpoint import load_policy

        loaded = load_policy(spec, map_location=device)
        if not hasattr(loaded.policy, "predict_chunk") or not hasattr(loaded.policy, "velocity"):
            raise ValueError(f"{spec}: its stage ({loaded.stage}) has no flow policy (predict_chunk/velocity); serve "
                             f"a stage-2 or stage-3 checkpoint")
        if loaded.processor is None:
            raise ValueError(f"{spec}: carries no xr0_processor (written before the processor existed); re-train or "
                             f"re-import it with this version of xr0")
        model = loaded.policy
        from xr0.infer import FastPolicy, static_prefill

        if fast == "on" or (fast == "auto" and static_prefill(model) is not None):
            model = FastPolicy(model, compile=compile)  # `on` without a declared static prefill: its error names it
        elif fast == "auto":
            print(f"[xr0 serve] backbone {type(model.backbone).__name__} declares no static prefill plan: serving the "
                  f"eager path (Policy.predict_chunk)")
        pol = LocalPolicy(model, loaded.processor, steps=steps, name=spec, max_prefix=loaded.max_prefix)
    pol.seed = noise_seed
    if frame is not None:
        if frame not in FRAMES:
            raise ValueError(f"action frame must be one of {FRAMES}, got {frame!r}")
        pol.processor.frame = frame
    return pol


__all__ = ["FlowModel", "LocalPolicy", "OutputError", "Reply", "RequestError", "load_local", "sim_policy"]
