"""The processor: the one path between a robot's world and the model, in both directions.

Observation → model sample: the raw state in robot units is laid out in the canonical 32 dims and normalised
with the data card's statistics; every camera, at whatever native size it arrives, is brought to the trained
image size by one resize policy; a missing camera (`None`, an omitted key, or a frame the episode recorded as
missing) becomes an all-zero frame with `image_mask` False — in training and in serving alike, and the VLM then
sees a black image at that camera's place. Model chunk → robot actions: un-normalised, back from the canonical
layout, relative dims made absolute against the observed state (or left as deltas when the `delta` frame is
asked for), and clipped to the embodiment's limits, with the count of clipped values reported.

The WebDataset reader, `xr0 serve`, `xr0 deploy`, `xr0 sim eval` and the release import all go through this
class; it is saved in every checkpoint and export (`xr0_processor`), so serving needs only the checkpoint.
What the backbone does with the sample afterwards (pixel mean/std, patchify, the prompt template) is the
backbone's own input spec; the processor records it so a served model can be checked against what it was
trained with.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from xr0.embodiments import Embodiment
from xr0.types import ACTION_DIM, STD_FLOOR

RESIZE = ("letterbox", "stretch")
RESAMPLE = ("bilinear", "bicubic", "nearest")
FRAMES = ("absolute", "delta")
STATE_NORM = ("meanstd", "none")
MAX_STAT = 1e8  # a mean or std beyond this is a unit or data error, and un-normalising with it overflows float32
MAX_STATE_Z = 100.0  # a state this many std from the training mean is a unit or wiring error, not a robot pose


class ObservationError(ValueError):
    """An observation (or prefix) cannot be used; the message names the field and says what was expected."""


class OutputError(RuntimeError):
    """The model's chunk is not fit to leave the server (non-finite values)."""


# ---------------------------------------------------------------- images
def smart_size(h: int, w: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen-VL's smart resize: sides a multiple of `factor`, the pixel count within [min, max], aspect kept."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    return tuple(int(x) for x in smart_resize(h, w, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels))


@dataclass(frozen=True)
class ImageSpec:
    """How every camera frame is brought to the model's size.

    size: (H, W) for every camera, a multiple of the backbone's patch·merge; None: each frame's own smart
    resize (the released Qwen-VL preprocessing), which then must agree across cameras.
    resize: `letterbox` keeps the aspect ratio (scale to fit, centre, black bars); `stretch` resizes to the size.
    """

    size: tuple[int, int] | None = (224, 224)
    resize: str = "letterbox"
    resample: str = "bilinear"
    factor: int = 28
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280

    def __post_init__(self) -> None:
        if self.size is not None:
            h, w = (int(self.size), int(self.size)) if isinstance(self.size, int) else (int(x) for x in self.size)
            object.__setattr__(self, "size", (h, w))
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        p = []
        if self.resize not in RESIZE:
            p.append(f"image resize {self.resize!r}: use one of {list(RESIZE)}")
        if self.resample not in RESAMPLE:
            p.append(f"image resample {self.resample!r}: use one of {list(RESAMPLE)}")
        if self.size is not None:
            h, w = self.size
            if h <= 0 or w <= 0 or h % self.factor or w % self.factor:
                ok = lambda x: max(self.factor, round(x / self.factor) * self.factor)  # noqa: E731
                p.append(f"image size {h}x{w} must be positive multiples of the backbone's patch*merge = "
                         f"{self.factor}: use e.g. {ok(h)}x{ok(w)}")
        return p

    def target(self, h: int, w: int) -> tuple[int, int]:
        return self.size if self.size is not None else smart_size(h, w, self.factor, self.min_pixels, self.max_pixels)

    def fit(self, img: np.ndarray) -> np.ndarray:
        """(h, w, 3) uint8 at any size → (H, W, 3) uint8 at the model's size."""
        from PIL import Image

        h, w = img.shape[:2]
        th, tw = self.target(h, w)
        if (h, w) == (th, tw):
            return img
        flt = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}[self.resample]
        pil = Image.fromarray(img)
        if self.resize == "stretch" or self.size is None:
            return np.asarray(pil.resize((tw, th), flt))
        s = min(th / h, tw / w)
        nh, nw = max(1, min(th, round(h * s))), max(1, min(tw, round(w * s)))
        out = np.zeros((th, tw, 3), np.uint8)
        top, left = (th - nh) // 2, (tw - nw) // 2
        out[top:top + nh, left:left + nw] = np.asarray(pil.resize((nw, nh), flt))
        return out

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["size"] = None if self.size is None else list(self.size)
        return d


def as_uint8_image(value: Any, field_name: str) -> np.ndarray:
    """A camera frame as (H, W, 3) uint8: HWC or CHW, uint8 or float in [0, 1] (rounded to uint8, as training saw
    JPEG-decoded uint8 frames)."""
    try:
        img = np.asarray(value)
    except Exception as exc:  # noqa: BLE001 - a client can send anything
        raise ObservationError(f"{field_name}: cannot read as an image array ({exc})") from exc
    if img.dtype.kind not in "biuf":
        raise ObservationError(f"{field_name}: expected a numeric image array, got dtype {img.dtype}")
    if img.ndim != 3:
        raise ObservationError(f"{field_name}: expected an image (H, W, 3) or (3, H, W), got shape {img.shape}")
    if img.shape[-1] != 3 and img.shape[0] == 3:
        img = img.transpose(1, 2, 0)  # CHW → HWC
    if img.shape[-1] != 3 or min(img.shape[:2]) < 1:
        raise ObservationError(f"{field_name}: expected 3 colour channels (H, W, 3), got shape {img.shape}")
    if img.dtype == np.uint8:
        return np.ascontiguousarray(img)
    if img.dtype.kind == "f":
        if not np.all(np.isfinite(img)) or img.min() < 0.0 or img.max() > 1.0:
            lo, hi = np.nanmin(img), np.nanmax(img)
            raise ObservationError(f"{field_name}: a float image must hold values in [0, 1] (got [{lo:.4g}, {hi:.4g}]"
                                   f"{', NaN or inf' if not np.all(np.isfinite(img)) else ''}); send uint8 0..255 "
                                   f"or divide by 255")
        return np.rint(img * 255.0).astype(np.uint8)
    if img.min() < 0 or img.max() > 255:
        raise ObservationError(f"{field_name}: integer pixel values must be in 0..255")
    return img.astype(np.uint8)


# ---------------------------------------------------------------- actions
def canonical_chunk(emb: Embodiment, future: np.ndarray, state: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw absolute future actions (n, A) and the state at frame t → (chunk, 32) canonical actions with the relative
    dims made relative (the last action repeated past the episode end), and the (chunk,) valid mask. The statistics
    (`xr0 data stats`, `xr0 data write`) are computed on exactly this, and the processor normalises it."""
    future = np.asarray(future, np.float32).reshape(-1, emb.action_dim)
    n = min(len(future), chunk)
    padded = np.empty((chunk, emb.action_dim), np.float32)
    padded[:n] = future[:n]
    padded[n:] = future[n - 1] if n else 0.0
    return emb.to_canonical(emb.to_relative(padded, np.asarray(state, np.float32))), np.arange(chunk) < n


# ---------------------------------------------------------------- the processor
def _rows(x: np.ndarray, t: int) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return np.broadcast_to(x, (t, x.shape[-1])).copy() if x.ndim == 1 else x[:t].copy()


def _floor(std: np.ndarray) -> np.ndarray:
    return np.where(np.abs(std) < STD_FLOOR, 1.0, std).astype(np.float32)


@dataclass
class Processor:
    """Raw observation ↔ model sample and model chunk ↔ robot actions for one embodiment (module docstring)."""

    embodiment: Embodiment
    image: ImageSpec
    chunk: int
    action_mean: np.ndarray  # (T, 32) float32, relative dims already relative
    action_std: np.ndarray  # (T, 32) float32, floored: padded dims carry std 0
    state_mean: np.ndarray | None = None  # (32,); None: the raw state goes in (the released model's input)
    state_std: np.ndarray | None = None
    action_mask: np.ndarray | None = None  # (32,) or per chunk step (T, 32); default: the embodiment's dims
    cameras: tuple[str, ...] = ()  # the trained camera order; default: the embodiment's cameras
    frame: str = "absolute"  # default frame of replies and prefixes: absolute targets, or `delta` from the state
    max_state_z: float = MAX_STATE_Z
    backbone: dict[str, Any] = field(default_factory=dict)  # the backbone's input spec it was trained with

    def __post_init__(self) -> None:
        t = self.chunk
        self.action_mean, self.action_std = _rows(self.action_mean, t), _floor(_rows(self.action_std, t))
        if self.action_mean.shape != (t, ACTION_DIM):
            raise ValueError(f"processor: action statistics cover {self.action_mean.shape[0]} chunk steps of width "
                             f"{self.action_mean.shape[-1]}; the chunk is {t} steps of {ACTION_DIM} dims")
        if self.state_mean is not None:
            self.state_mean = np.asarray(self.state_mean, np.float32).reshape(ACTION_DIM)
            self.state_std = _floor(np.asarray(self.state_std, np.float32).reshape(ACTION_DIM))
        emb = self.embodiment
        self.action_mask = emb.action_mask() if self.action_mask is None else np.asarray(self.action_mask, bool)
        self.cameras = tuple(self.cameras or emb.cameras)
        self._dims = emb.action_mask()  # the canonical slots of the robot's action dims
        self._state_pad = ~(emb.to_canonical(np.ones(emb.state_dim), "state") > 0)
        problems = []
        if self.frame not in FRAMES:
            problems.append(f"frame {self.frame!r}: use one of {list(FRAMES)}")
        for name, arr in (("action", self.action_mean), ("action std", self.action_std),
                          ("state", self.state_mean), ("state std", self.state_std)):
            if arr is not None and not np.all(np.isfinite(arr)):
                problems.append(f"{name} statistics hold NaN or inf: recompute them (`xr0 data stats CARD`)")
            elif arr is not None and np.abs(arr).max() > MAX_STAT:
                problems.append(f"{name} statistics reach {np.abs(arr).max():.3g} (> {MAX_STAT:g}): not robot units; "
                                f"check the data's units and recompute them (`xr0 data stats CARD`)")
        if self.action_mask.shape not in ((ACTION_DIM,), (t, ACTION_DIM)):
            problems.append(f"action_mask shape {self.action_mask.shape}: expected ({ACTION_DIM},) or ({t}, {ACTION_DIM})")
        if problems:
            raise ValueError("processor: " + "; ".join(problems))

    # ------------------------------------------------------------ building and saving
    @classmethod
    def from_stats(cls, embodiment: Embodiment, stats: dict[str, Any], chunk: int, image: ImageSpec,
                   cameras: tuple[str, ...] = (), state_norm: str = "meanstd", **kw: Any) -> "Processor":
        """From a statistics file's content (xr0.data.stats: per-timestep actions, per-dim state)."""
        if state_norm not in STATE_NORM:
            raise ValueError(f"state_norm {state_norm!r}: use one of {list(STATE_NORM)}")
        acts, state = stats["actions"], stats.get("state")
        if np.asarray(acts["mean"]).shape[0] < chunk and np.ndim(acts["mean"]) == 2:
            raise ValueError(f"the statistics cover {np.shape(acts['mean'])[0]} chunk steps, the recipe asks for {chunk}")
        s_mean = s_std = None
        if state_norm == "meanstd" and state is not None:
            s_mean, s_std = state["mean"], state["std"]
        return cls(embodiment, image, chunk, np.asarray(acts["mean"], np.float32), np.asarray(acts["std"], np.float32),
                   None if s_mean is None else np.asarray(s_mean, np.float32),
                   None if s_std is None else np.asarray(s_std, np.float32), cameras=tuple(cameras), **kw)

    def to_dict(self) -> dict[str, Any]:
        tolist = lambda x: None if x is None else np.asarray(x).tolist()  # noqa: E731
        return {"embodiment": self.embodiment.to_dict(), "image": self.image.to_dict(), "chunk": self.chunk,
                "action_mean": tolist(self.action_mean), "action_std": tolist(self.action_std),
                "state_mean": tolist(self.state_mean), "state_std": tolist(self.state_std),
                "action_mask": tolist(self.action_mask), "cameras": list(self.cameras), "frame": self.frame,
                "max_state_z": self.max_state_z, "backbone": dict(self.backbone)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Processor":
        from xr0.embodiments import from_dict as embodiment_from_dict

        if not isinstance(d, dict) or "embodiment" not in d or "chunk" not in d:
            raise ValueError("xr0_processor: expected the dict Processor.to_dict writes (embodiment, image, chunk, ...)")
        img = dict(d["image"])
        img["size"] = None if img.get("size") is None else tuple(img["size"])
        arr = lambda k: None if d.get(k) is None else np.asarray(d[k], np.float32)  # noqa: E731
        return cls(embodiment_from_dict(d["embodiment"]), ImageSpec(**img), int(d["chunk"]), arr("action_mean"),
                   arr("action_std"), arr("state_mean"), arr("state_std"),
                   None if d.get("action_mask") is None else np.asarray(d["action_mask"], bool),
                   tuple(d.get("cameras") or ()), d.get("frame", "absolute"), float(d.get("max_state_z", MAX_STATE_Z)),
                   dict(d.get("backbone") or {}))

    def metadata(self) -> dict[str, Any]:
        """What a client needs to know: names, sizes, limits, rate, frame (the server sends it on connect)."""
        emb = self.embodiment
        return {"embodiment": emb.name, "action_names": list(emb.action_names), "state_names": list(emb.state_names),
                "action_dim": emb.action_dim, "state_dim": emb.state_dim, "chunk_len": self.chunk,
                "control_hz": emb.control_hz, "cameras": list(self.cameras),
                "image_size": None if self.image.size is None else list(self.image.size),
                "image_resize": self.image.resize if self.image.size is not None else "smart",
                "action_low": list(emb.action_low), "action_high": list(emb.action_high),
                "relative": list(emb.relative) or [False] * emb.action_dim, "action_frame": self.frame}

    # ------------------------------------------------------------ observation → sample
    def raw_state(self, obs: dict[str, Any]) -> np.ndarray:
        """The observation's state in robot units as (S,) float32, checked (shape, finite)."""
        emb = self.embodiment
        if not isinstance(obs, dict):
            raise ObservationError(f"the observation must be a mapping, got {type(obs).__name__}")
        key = "state" if "state" in obs else "observation/state" if "observation/state" in obs else None
        if key is None:
            raise ObservationError(f"missing 'state' (or openpi's 'observation/state'): the robot state in robot units "
                                   f"({', '.join(emb.state_names)})")
        try:
            s = np.asarray(obs[key], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ObservationError(f"{key}: expected a vector of {emb.state_dim} numbers ({exc})") from exc
        if s.ndim > 1 and s.size == emb.state_dim:
            s = s.reshape(-1)
        if s.ndim != 1 or len(s) != emb.state_dim:
            raise ObservationError(f"{key}: expected {emb.state_dim} values ({', '.join(emb.state_names)}), "
                                   f"got shape {s.shape}")
        if not np.all(np.isfinite(s)):
            raise ObservationError(f"{key}: NaN or inf in the state")
        if np.any(np.abs(s) > np.finfo(np.float32).max):
            raise ObservationError(f"{key}: values beyond float32's range")
        return s.astype(np.float32)

    def state(self, s: np.ndarray, field_name: str = "state") -> np.ndarray:
        """Raw state (S,) float32 in robot units → (32,) float32 model state (normalised unless state_norm none)."""
        emb = self.embodiment
        out = emb.to_canonical(s, "state")  # (32,)
        if self.state_mean is not None:
            out = (out - self.state_mean) / self.state_std
            out[self._state_pad] = 0.0  # padding stays zero whatever the statistics say
            worst = int(np.argmax(np.abs(out)))
            if abs(out[worst]) > self.max_state_z:
                name = emb.state_names[list(emb.slots("state")).index(worst)]
                raise ObservationError(f"{field_name}: {name} = {s[list(emb.slots('state')).index(worst)]:.6g} is "
                                       f"{abs(out[worst]):.3g} std from the training mean (bound {self.max_state_z:g}): "
                                       f"check its units and order ({', '.join(emb.state_names)})")
        return out.astype(np.float32)

    def images(self, frames: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """{camera: frame or None} → (V, H, W, 3) uint8 at the model size and the (V,) mask of present cameras."""
        extra = sorted(set(frames) - set(self.cameras))
        if extra:
            raise ObservationError(f"images: unknown cameras {extra}; this policy uses {list(self.cameras)}")
        fitted = {c: self.image.fit(as_uint8_image(frames[c], f"images/{c}"))
                  for c in self.cameras if frames.get(c) is not None}
        sizes = {f.shape[:2] for f in fitted.values()}
        if len(sizes) > 1:  # only the smart-resize spec (size None) can get here
            raise ObservationError(f"images: the cameras resize to different sizes {sorted(sizes)}; this processor "
                                   f"resizes each frame by itself (size None), so send cameras of equal size")
        h, w = sizes.pop() if sizes else (self.image.size or (self.image.factor, self.image.factor))
        out = np.zeros((len(self.cameras), h, w, 3), np.uint8)
        mask = np.zeros(len(self.cameras), bool)
        for v, cam in enumerate(self.cameras):
            if cam in fitted:
                out[v], mask[v] = fitted[cam], True
        return out, mask

    def observation(self, obs: dict[str, Any]) -> dict[str, Any]:
        """A raw observation → one model sample (unbatched numpy). Keys: `state` (or openpi's `observation/state`),
        `images` {camera: (H, W, 3) frame or None} (or openpi's `observation/<camera>` arrays), `prompt` (or
        `instruction`). An omitted camera and `None` both mean missing."""
        raw = self.raw_state(obs)
        key = "state" if "state" in obs else "observation/state"
        prompt = obs.get("prompt", obs.get("instruction", ""))
        if not isinstance(prompt, str):
            raise ObservationError(f"prompt: expected a string, got {type(prompt).__name__}")
        if "images" in obs:
            if not isinstance(obs["images"], dict):
                raise ObservationError("images: expected a mapping camera name -> image array (or None if missing)")
            frames = {str(k): v for k, v in obs["images"].items()}
        else:
            frames = {k.split("/", 1)[1]: v for k, v in obs.items()
                      if isinstance(k, str) and k.startswith("observation/") and k != key}
        images, image_mask = self.images(frames)
        return {"images": images, "image_mask": image_mask, "instruction": prompt, "state": self.state(raw, key),
                "action_mask": self.action_mask.copy(), "embodiment": self.embodiment.name}

    def batch(self, obs: dict[str, Any]) -> dict[str, Any]:
        """One raw observation → a batch of one in the model's contract (images float (1, V, 3, H, W) in [0, 1])."""
        return finish_images(collate([self.observation(obs)]))

    # ------------------------------------------------------------ actions
    def canonical_chunk(self, future: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return canonical_chunk(self.embodiment, future, state, self.chunk)

    def _normalise(self, canonical: np.ndarray) -> np.ndarray:
        n = len(canonical)
        out = (canonical - self.action_mean[:n]) / self.action_std[:n]
        out[:, ~self._dims] = 0.0
        return out.astype(np.float32)

    def actions(self, future: np.ndarray, raw_state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Training targets: raw absolute future actions (n, A) → normalised (T, 32) and the valid mask (T,)."""
        rel, valid = self.canonical_chunk(future, raw_state)
        return self._normalise(rel), valid

    def prefix(self, prefix: Any, raw_state: np.ndarray, frame: str | None = None) -> np.ndarray:
        """Committed actions (P, A) in the reply frame → normalised (P, 32), aligned to chunk step 0."""
        emb, frame = self.embodiment, frame or self.frame
        try:
            p = np.asarray(prefix, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ObservationError(f"prefix_actions: expected a (P, {emb.action_dim}) array of numbers ({exc})") from exc
        if p.ndim != 2 or p.shape[1] != emb.action_dim:
            raise ObservationError(f"prefix_actions: expected (P, {emb.action_dim}), got {p.shape}")
        if len(p) > self.chunk:
            raise ObservationError(f"prefix_actions: {len(p)} steps, longer than the chunk ({self.chunk})")
        if not np.all(np.isfinite(p)):
            raise ObservationError("prefix_actions: NaN or inf")
        absolute = self._to_absolute(p, raw_state) if frame == "delta" else p
        lo, hi = np.asarray(emb.action_low), np.asarray(emb.action_high)
        span = hi - lo
        if np.any(absolute < lo - span) or np.any(absolute > hi + span):  # committed actions are ones the robot ran
            raise ObservationError(f"prefix_actions: values far outside the limits [{list(emb.action_low)}, "
                                   f"{list(emb.action_high)}]; send the actions the robot committed, in the "
                                   f"{frame} frame")
        rel = emb.to_relative(absolute.astype(np.float32), np.asarray(raw_state, np.float32))
        return self._normalise(emb.to_canonical(rel))

    def _to_absolute(self, delta: np.ndarray, raw_state: np.ndarray) -> np.ndarray:
        return self.embodiment.to_absolute(delta.astype(np.float32), np.asarray(raw_state, np.float32))

    def raw_from_model_state(self, state: np.ndarray) -> np.ndarray:
        """A model state (32,) → the raw state (S,) in robot units (for plots of training batches)."""
        s = np.asarray(state, np.float32)
        if self.state_mean is not None:
            s = s * self.state_std + self.state_mean
        return self.embodiment.from_canonical(s, "state")

    def decode(self, x: Any, raw_state: np.ndarray, frame: str | None = None, clip: bool = True
               ) -> tuple[np.ndarray, int]:
        """Model chunk (T, 32) normalised → robot actions (T, A) in `frame` (absolute targets by default), clipped to
        the embodiment's limits; returns (actions, number of clipped values). Non-finite output raises OutputError.
        clip=False (plots only) returns what the model said."""
        emb, frame = self.embodiment, frame or self.frame
        if frame not in FRAMES:
            raise ObservationError(f"action_frame {frame!r}: use one of {list(FRAMES)}")
        x = x.detach().double().cpu().numpy() if torch.is_tensor(x) else np.asarray(x, np.float64)
        n = len(x)
        raw = x * self.action_std[:n] + self.action_mean[:n]  # (T, 32)
        state = np.asarray(raw_state, np.float64)
        absolute = emb.to_absolute(emb.from_canonical(raw), state).astype(np.float64)  # (T, A)
        if not np.all(np.isfinite(absolute)):
            raise OutputError(f"the model returned {int(np.sum(~np.isfinite(absolute)))} non-finite action values")
        low, high = np.asarray(emb.action_low), np.asarray(emb.action_high)
        clipped = np.clip(absolute, low, high) if clip else absolute
        tol = 1e-6 * np.maximum(high - low, 1.0)  # float rounding at a limit is not a clip worth reporting
        n_clipped = int(np.sum((absolute < low - tol) | (absolute > high + tol)))
        if frame == "delta":
            clipped = clipped - (emb.to_absolute(np.zeros_like(clipped, np.float32), state.astype(np.float32)))
        return clipped, n_clipped


def recipe_problems(tree: dict[str, Any]) -> list[str]:
    """`xr0 validate`'s image-size rule: the data's image_size must be a multiple of the backbone's patch·merge."""
    from xr0.registry import BACKBONES

    data, backbone = tree.get("data"), (tree.get("stage") or {}).get("backbone")
    if not isinstance(data, dict) or not isinstance(backbone, dict) or backbone.get("name") not in BACKBONES:
        return []
    factor_of = getattr(BACKBONES.get(backbone["name"]), "spec_factor", None)
    factor = factor_of({k: v for k, v in backbone.items() if k != "name"}) if factor_of else None
    size = data.get("image_size", 224 if data.get("name") == "webdataset" else None)
    if factor is None or size is None or isinstance(size, str):
        return []
    try:
        problems = ImageSpec(size=size if isinstance(size, int) else tuple(size), factor=factor).problems()
    except (TypeError, ValueError) as exc:
        problems = [str(exc)]
    return [f"data.image_size: {p}" for p in problems]


# ---------------------------------------------------------------- batches
def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Unbatched numpy samples of one kind → the batch contract (xr0/types.py), except images: uint8
    (B, V, H, W, 3) until `finish_images` makes them float (B, V, 3, H, W) in [0, 1]."""
    out: dict[str, Any] = {}
    for k in samples[0]:
        if k == "kind":
            continue
        vals = [s[k] for s in samples]
        out[k] = torch.from_numpy(np.stack(vals)) if isinstance(vals[0], np.ndarray) else vals
    if "actions" in out and out["actions"].shape[-1] != ACTION_DIM:
        raise ValueError(f"actions have width {out['actions'].shape[-1]}, the contract is {ACTION_DIM}")
    return out


def finish_images(batch: dict[str, Any]) -> dict[str, Any]:
    """uint8 (B, V, H, W, 3) images → float32 (B, V, 3, H, W) in [0, 1], in place, also in 'robot'/'vl' sub-batches.
    Runs after the batch reached its device (the data module's on_after_batch_transfer): on a GPU it costs nothing."""
    for part in (batch, batch.get("robot"), batch.get("vl")):
        if isinstance(part, dict) and torch.is_tensor(part.get("images")) and part["images"].dtype == torch.uint8:
            x = part["images"]
            part["images"] = x.permute(0, 1, 4, 2, 3).to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)
    return batch
