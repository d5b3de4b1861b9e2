"""The streaming pipeline: shards → samples in the batch contract of src/xr0/types.py.

Per card: WebDataset (split by node, then by worker, then shard shuffle) → sample shuffle buffer → decode
→ per-sample transform (relative actions, canonical 32 dims, normalisation, chunk mask). Several cards are
mixed sample by sample with RandomMix; the batcher then splits robot and vision-language samples into
{'robot': ..., 'vl': ...}. Corrupt samples are skipped through one handler that warns and counts; each
batch carries its worker's counters under `_counts` (the data module pops them, see module.py). Images travel
as uint8 and become float in [0, 1] after the batch reaches its device (`finish_images`).
"""
from __future__ import annotations

import io
from collections import Counter
from typing import Any

import numpy as np
import torch
from PIL import Image

from xr0.data.cards import DataCard
from xr0.data.stats import floor_std
from xr0.data.writer import relative_chunk
from xr0.types import ACTION_DIM


class Counts:
    """Per-worker counters (skipped samples, samples per source); lives in the worker that updates it."""

    def __init__(self):
        self.c: Counter = Counter()

    def handler(self, exn: Exception) -> bool:
        """webdataset handler: count the skip, warn, carry on (never crash a run on one bad sample)."""
        import webdataset as wds

        self.c["skipped"] += 1
        return wds.handlers.warn_and_continue(exn)

    def snapshot(self) -> dict[str, int]:
        info = torch.utils.data.get_worker_info()
        return {"worker": info.id if info else -1, **self.c}


def _size(image_size: int | list[int] | tuple[int, int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


def decode_image(data: bytes, size: tuple[int, int]) -> np.ndarray:
    """JPEG/PNG bytes → (H, W, 3) uint8 at `size`. draft() lets libjpeg downscale while decoding."""
    img = Image.open(io.BytesIO(data))
    if img.format == "JPEG" and (img.height > 2 * size[0] and img.width > 2 * size[1]):
        img.draft("RGB", (size[1], size[0]))
    img = img.convert("RGB")
    if img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(img)


def _npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def _json(data: bytes) -> dict[str, Any]:
    import json

    return json.loads(data)


class RobotTransform:
    """Raw sample dict (bytes per extension) → one robot sample of the batch contract (unbatched, numpy)."""

    def __init__(self, card: DataCard, stats: dict[str, Any], chunk: int, image_size, views: int, counts: Counts):
        from xr0 import embodiments

        self.card, self.chunk, self.views, self.counts = card, chunk, views, counts
        self.emb = embodiments.get(card.embodiment)
        self.size = _size(image_size)
        self.cameras = card.cameras or self.emb.cameras
        self.mask = self.emb.action_mask()
        self.a_mean = np.asarray(stats["actions"]["mean"], np.float32)[:chunk]
        self.a_std = floor_std(np.asarray(stats["actions"]["std"], np.float32)[:chunk])
        self.s_mean = np.asarray(stats["state"]["mean"], np.float32)
        self.s_std = floor_std(np.asarray(stats["state"]["std"], np.float32))
        self.state_mask = self.emb.to_canonical(np.ones(self.emb.state_dim), "state") > 0

    def __call__(self, s: dict[str, Any]) -> dict[str, Any]:
        c = self.card
        meta = _json(s[c.key("meta")])
        state = _npy(s[c.key("state")]).astype(np.float32).reshape(-1)
        future = _npy(s[c.key("actions")]).astype(np.float32).reshape(-1, self.emb.action_dim)
        if len(future) == 0 or state.shape[0] != self.emb.state_dim or not np.all(np.isfinite(future)):
            raise ValueError(f"{s.get('__key__')}: bad state {state.shape} / actions {future.shape} for '{self.emb.name}'")
        rel, valid = relative_chunk(self.emb, future, state, self.chunk)
        actions = (self.emb.to_canonical(rel) - self.a_mean) / self.a_std  # (T, 32)
        actions[:, ~self.mask] = 0.0
        st = (self.emb.to_canonical(state, "state") - self.s_mean) / self.s_std  # (32,)
        st[~self.state_mask] = 0.0
        images = np.zeros((self.views, self.size[0], self.size[1], 3), np.uint8)
        image_mask = np.zeros(self.views, bool)
        for v, cam in enumerate(self.cameras[: self.views]):
            data = s.get(c.key(cam))
            if data is not None:
                images[v] = decode_image(data, self.size)
                image_mask[v] = True
        self.counts.c["robot"] += 1
        self.counts.c[f"source:{c.name}"] += 1
        return {"kind": "robot", "images": images, "image_mask": image_mask,
                "instruction": str(meta.get(c.instruction_field, "")), "state": st.astype(np.float32),
                "actions": actions.astype(np.float32), "action_mask": self.mask, "chunk_mask": valid,
                "embodiment": self.emb.name}


class VLTransform:
    """Raw VL sample → {images, image_mask, prompt, answer}. Multi-turn conversations: the last assistant
    turn is the answer; earlier turns form the prompt (the backbone applies its chat template at load time)."""

    def __init__(self, card: DataCard, image_size, views: int, counts: Counts):
        self.card, self.size, self.views, self.counts = card, _size(image_size), views, counts

    def __call__(self, s: dict[str, Any]) -> dict[str, Any]:
        meta = _json(s[self.card.key("json")])
        if "conversations" in meta:
            turns = meta["conversations"]
            if not turns or turns[-1].get("from") not in ("gpt", "assistant"):
                raise ValueError(f"{s.get('__key__')}: conversation must end with an assistant turn")
            answer = turns[-1]["value"]
            prompt = "\n".join(t["value"] for t in turns[:-1])
        else:
            prompt, answer = meta["prompt"], meta["answer"]
        images = np.zeros((self.views, self.size[0], self.size[1], 3), np.uint8)
        image_mask = np.zeros(self.views, bool)
        first = self.card.key("image")
        keys = [first] + [f"{j}.{first}" for j in range(1, self.views)]
        for v, k in enumerate(keys):
            if k in s:
                images[v] = decode_image(s[k], self.size)
                image_mask[v] = True
        self.counts.c["vl"] += 1
        self.counts.c[f"source:{self.card.name}"] += 1
        return {"kind": "vl", "images": images, "image_mask": image_mask, "prompt": str(prompt), "answer": str(answer)}


def card_stream(card: DataCard, transform, counts: Counts, shuffle_buffer: int, shard_shuffle: int, seed: int):
    """One card's WebDataset pipeline (each rank and worker gets its own shards)."""
    import webdataset as wds

    ds = wds.WebDataset(card.urls, handler=counts.handler, shardshuffle=shard_shuffle or False,
                        nodesplitter=wds.split_by_node, workersplitter=wds.split_by_worker,
                        empty_check=False, seed=seed)
    if shuffle_buffer > 0:
        ds = ds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 100))
    return ds.map(transform, handler=counts.handler)


def finish_images(batch: dict[str, Any]) -> dict[str, Any]:
    """uint8 (B, V, H, W, 3) images → float32 (B, V, 3, H, W) in [0, 1], in place, also in 'robot'/'vl' sub-batches.
    Runs after the batch reached the device (on_after_batch_transfer), so on a GPU it costs nothing."""
    for part in (batch, batch.get("robot"), batch.get("vl")):
        if isinstance(part, dict) and torch.is_tensor(part.get("images")) and part["images"].dtype == torch.uint8:
            x = part["images"]
            part["images"] = x.permute(0, 1, 4, 2, 3).to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)
    return batch


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Unbatched numpy samples of one kind → the batch contract, except images: uint8 (B, V, H, W, 3) until
    `finish_images` (the data module's on_after_batch_transfer) makes them float (B, V, 3, H, W) in [0, 1]."""
    out: dict[str, Any] = {}
    for k in samples[0]:
        if k == "kind":
            continue
        vals = [s[k] for s in samples]
        if isinstance(vals[0], np.ndarray):  # images stay uint8 (B, V, H, W, 3): 4× fewer bytes across the worker hop
            out[k] = torch.from_numpy(np.stack(vals))
        else:
            out[k] = vals
    if "actions" in out:
        assert out["actions"].shape[-1] == ACTION_DIM
    return out


class Batcher:
    """Samples of mixed kinds → batches: flat robot batches, or {'robot', 'vl'} when VL sources are mixed in."""

    def __init__(self, batch_size: int, with_vl: bool, counts: Counts, max_batches: int | None = None):
        self.batch_size, self.with_vl, self.counts, self.max_batches = batch_size, with_vl, counts, max_batches

    def __call__(self, src):
        buf, n = [], 0
        for s in src:
            buf.append(s)
            if len(buf) == self.batch_size:
                yield self._emit(buf)
                buf, n = [], n + 1
                if self.max_batches is not None and n >= self.max_batches:
                    return

    def _emit(self, buf: list[dict[str, Any]]) -> dict[str, Any]:
        robot = [s for s in buf if s["kind"] == "robot"]
        vl = [s for s in buf if s["kind"] == "vl"]
        if self.with_vl:
            batch = {"robot": collate(robot) if robot else None, "vl": collate(vl) if vl else None}
            if batch["vl"] is not None:
                batch["vl"]["kind"] = ["vl"] * len(vl)
        else:
            batch = collate(robot)
        batch["_counts"] = self.counts.snapshot()
        return batch
