"""Episodes → WebDataset shards + data card + statistics.

Shard format — one sample per timestep, carrying its future action chunk:
  <key>.<camera>.jpg   one JPEG (or PNG, `image_format: png`) per camera, uint8 RGB at the camera's native size;
                       absent when that camera's frame is missing at this timestep
  <key>.state.npy      (S,) float32 raw state at frame t
  <key>.actions.npy    (n, A) float32 raw absolute actions t .. t+n-1, n = min(chunk, steps left)
  <key>.meta.json      {episode, t, steps, fps, timestamp, embodiment, <instruction_field>: str, missing: [cameras]}
An episode records a missing frame as `None` in its camera's frame list (or by leaving the camera out); the
reader and the server then both feed that camera as an all-zero frame with image_mask False (xr0.processor).
Why one timestep, not an episode window: the shuffle buffer then mixes single frames from many episodes
(a window would put correlated frames side by side in a batch), a reader needs no state across samples
(truncated shards lose one frame, not a window), and any reader chunk ≤ the stored chunk works. The cost is
storing each action `chunk` times — small next to the JPEGs (30 × 14 floats = 1.7 kB per sample).
"""
from __future__ import annotations

import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from xr0.data.cards import DataCard, write_card
from xr0.data.stats import StatsAccumulator, save_stats

# GNU tar headers with an integer mtime: the default (PAX + float time.time()) adds a pax header to every
# member, which costs the reader a third of its tar parsing, and makes shards differ from run to run.
TAR = {"format": "GNU_FORMAT", "mtime": 0}


IMAGE_FORMATS = ("jpg", "png")


def encode_jpeg(img: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_image(img: np.ndarray, fmt: str, quality: int = 95) -> bytes:
    """uint8 (H, W, 3) → JPEG (lossy, small) or PNG (lossless: the reader sees exactly the recorded frame)."""
    if fmt == "jpg":
        return encode_jpeg(img, quality)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def npy_bytes(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(x, dtype=np.float32))
    return buf.getvalue()


def _check_episode(i: int, ep: dict[str, Any], emb, cameras: tuple[str, ...]) -> int:
    for k in ("state", "actions", "images"):
        if k not in ep:
            raise ValueError(f"episode {i}: missing '{k}' (an episode is a dict with images {{camera: (N,H,W,3) uint8}}, "
                             f"state (N,S), actions (N,A), instruction str)")
    n = len(ep["actions"])
    state, actions = np.asarray(ep["state"]), np.asarray(ep["actions"])
    if actions.ndim != 2 or actions.shape[1] != emb.action_dim:
        raise ValueError(f"episode {i}: actions shape {actions.shape}; embodiment '{emb.name}' needs (N, {emb.action_dim})")
    if state.ndim != 2 or state.shape != (n, emb.state_dim):
        raise ValueError(f"episode {i}: state shape {state.shape}; embodiment '{emb.name}' needs ({n}, {emb.state_dim})")
    for name, arr in (("state", state), ("actions", actions)):
        if not np.all(np.isfinite(arr)):
            t = int(np.argwhere(~np.isfinite(arr))[0][0])
            raise ValueError(f"episode {i}: {name} has NaN or inf (first at step {t}); fix or drop those steps")
    for cam, frames in ep["images"].items():
        if cam not in cameras:
            raise ValueError(f"episode {i}: camera '{cam}' is not one of {list(cameras)}")
        if len(frames) != n:
            raise ValueError(f"episode {i}: images['{cam}'] has {len(frames)} frames for {n} steps")
        for t, f in enumerate(frames):  # a list may hold None for a missing frame
            if f is None:
                continue
            f = np.asarray(f)
            if f.dtype != np.uint8 or f.ndim != 3 or f.shape[-1] != 3:
                raise ValueError(f"episode {i}: images['{cam}'][{t}] must be uint8 (H, W, 3) or None (missing), got "
                                 f"{f.dtype} {f.shape}")
    if not isinstance(ep.get("instruction", ""), str):
        raise TypeError(f"episode {i}: instruction must be a string")
    return n


def write_episodes(episodes: Iterable[dict[str, Any]], out_dir: str | Path, embodiment: str, name: str,
                   fps: float | None = None, chunk: int | None = None, cameras: list[str] | None = None,
                   maxcount: int = 1000, jpeg_quality: int = 95, license: str = "unknown", source: str = "",
                   description: str = "", instruction_field: str = "instruction", progress: bool = True,
                   image_format: str = "jpg") -> Path:
    """Write episodes as shards `<out_dir>/<name>-NNNNNN.tar`, statistics and a card; return the card path.

    episodes: dicts with images {camera: (N,H,W,3) uint8, or a list of N frames where None marks a missing one},
    state (N,S), actions (N,A) (absolute, robot units) and instruction (str); a camera left out of `images` is
    missing for the whole episode. fps and chunk default to the embodiment's control rate and chunk length.
    """
    import webdataset as wds
    from tqdm import tqdm

    from xr0 import embodiments

    from xr0.processor import canonical_chunk

    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format {image_format!r}: use one of {list(IMAGE_FORMATS)}")
    emb = embodiments.get(embodiment)
    cams = tuple(cameras or emb.cameras)
    sizes: dict[str, list[int]] = {}
    chunk = int(chunk or emb.chunk)
    fps = float(fps or emb.control_hz)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    acc = StatsAccumulator(chunk, emb.action_mask())
    count, n_eps = 0, 0
    pattern = str(out / f"{name}-%06d.tar")
    bar = tqdm(desc=f"write {name}", unit="sample", disable=not progress)
    with wds.ShardWriter(pattern, maxcount=maxcount, verbose=0, **TAR) as sink:
        for i, ep in enumerate(episodes):
            n = _check_episode(i, ep, emb, cams)
            state = np.asarray(ep["state"], np.float32)
            actions = np.asarray(ep["actions"], np.float32)
            encoded = {cam: [None if f is None else encode_image(np.asarray(f), image_format, jpeg_quality)
                             for f in frames] for cam, frames in ep["images"].items()}
            for cam, frames in ep["images"].items():
                first = next((f for f in frames if f is not None), None)
                if first is not None:
                    sizes.setdefault(cam, list(np.shape(first)[:2]))
            for t in range(n):
                future = actions[t:t + chunk]
                missing = [cam for cam in cams if encoded.get(cam) is None or encoded[cam][t] is None]
                meta = {"episode": i, "t": t, "steps": n, "fps": fps, "timestamp": t / fps,
                        "embodiment": emb.name, instruction_field: ep.get("instruction", ""), "missing": missing}
                sample = {"__key__": f"e{i:07d}_t{t:06d}", "state.npy": npy_bytes(state[t]),
                          "actions.npy": npy_bytes(future), "meta.json": json.dumps(meta).encode()}
                for cam, frames in encoded.items():
                    if frames[t] is not None:
                        sample[f"{cam}.{image_format}"] = frames[t]
                sink.write(sample)
                rel, valid = canonical_chunk(emb, future, state[t], chunk)
                acc.add(emb.to_canonical(state[t], "state"), rel, valid)
                count += 1
            n_eps += 1
            bar.update(n)
        n_shards = sink.shard
    bar.close()
    if count == 0:
        raise ValueError("write_episodes: no episodes given")
    stats_path = save_stats(acc.result(), out / f"{name}.stats.json")
    card = DataCard(name=name, shards=f"{name}-{{000000..{n_shards - 1:06d}}}.tar", fps=fps, kind="robot",
                    embodiment=emb.name, cameras=cams, chunk=chunk, instruction_field=instruction_field,
                    stats=stats_path.name, license=license, source=source, num_samples=count,
                    description=description or f"{n_eps} episodes, {count} samples", camera_sizes=sizes,
                    key_map={cam: f"{cam}.{image_format}" for cam in cams} if image_format != "jpg" else {})
    return write_card(card, out / f"{name}.yaml")


def write_vl_samples(samples: Iterable[dict[str, Any]], out_dir: str | Path, name: str, maxcount: int = 1000,
                     jpeg_quality: int = 95, license: str = "unknown", source: str = "", progress: bool = True) -> Path:
    """Vision-language samples → shards + a `kind: vl` card. A sample: image (H,W,3) uint8 (or a list of
    images) and either prompt/answer strings or conversations [{from: human|gpt, value: str}, ...]."""
    import webdataset as wds
    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    with wds.ShardWriter(str(out / f"{name}-%06d.tar"), maxcount=maxcount, verbose=0, **TAR) as sink:
        for i, s in enumerate(tqdm(samples, desc=f"write {name}", unit="sample", disable=not progress)):
            images = s["image"] if isinstance(s["image"], list) else [s["image"]]
            meta = {k: s[k] for k in ("prompt", "answer", "conversations") if k in s}
            if "conversations" not in meta and not ("prompt" in meta and "answer" in meta):
                raise ValueError(f"VL sample {i}: needs prompt and answer, or conversations")
            rec = {"__key__": f"vl{i:09d}", "json": json.dumps(meta).encode()}
            for j, img in enumerate(images):
                rec["jpg" if j == 0 else f"{j}.jpg"] = encode_jpeg(np.asarray(img), jpeg_quality)
            sink.write(rec)
            count += 1
        n_shards = sink.shard
    card = DataCard(name=name, shards=f"{name}-{{000000..{n_shards - 1:06d}}}.tar", kind="vl", license=license,
                    source=source, num_samples=count, key_map={"image": "jpg", "json": "json"})
    return write_card(card, out / f"{name}.yaml")
