"""The streaming pipeline: shards → samples in the batch contract of src/xr0/types.py.

Per card: WebDataset (split by node, then by worker, then shard shuffle) → sample shuffle buffer → decode
→ per-sample transform (the card's xr0.processor.Processor: state and chunk normalised, cameras resized to the
model size, missing cameras masked; the same code serving runs). Several cards are
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
from xr0.processor import ImageSpec, Processor, collate, finish_images  # noqa: F401  (re-exported)


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


def decode_image(data: bytes) -> np.ndarray:
    """JPEG/PNG bytes → (H, W, 3) uint8 at the size it was recorded; the processor brings it to the model size."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def _json(data: bytes) -> dict[str, Any]:
    import json

    return json.loads(data)


class RobotTransform:
    """Raw sample dict (bytes per extension) → one robot sample of the batch contract (unbatched, numpy), through
    the card's Processor: the same code `xr0 serve` runs on a live observation."""

    def __init__(self, card: DataCard, processor: Processor, counts: Counts):
        self.card, self.processor, self.counts = card, processor, counts

    def __call__(self, s: dict[str, Any]) -> dict[str, Any]:
        c, proc = self.card, self.processor
        emb = proc.embodiment
        meta = _json(s[c.key("meta")])
        state = _npy(s[c.key("state")]).astype(np.float32).reshape(-1)
        future = _npy(s[c.key("actions")]).astype(np.float32)
        if len(future) == 0 or state.shape[0] != emb.state_dim or future.ndim != 2 or future.shape[1] != emb.action_dim \
                or not np.all(np.isfinite(future)):
            raise ValueError(f"{s.get('__key__')}: bad state {state.shape} / actions {future.shape} for '{emb.name}'")
        frames = {cam: (decode_image(s[c.key(cam)]) if c.key(cam) in s else None) for cam in proc.cameras}
        sample = proc.observation({"state": state, "images": frames, "prompt": str(meta.get(c.instruction_field, ""))})
        sample["actions"], sample["chunk_mask"] = proc.actions(future, state)
        self.counts.c["robot"] += 1
        self.counts.c[f"source:{c.name}"] += 1
        return {"kind": "robot", **sample}


class VLTransform:
    """Raw VL sample → {images, image_mask, prompt, answer}. Multi-turn conversations: the last assistant
    turn is the answer; earlier turns form the prompt (the backbone applies its chat template at load time)."""

    def __init__(self, card: DataCard, image: ImageSpec, views: int, counts: Counts):
        self.card, self.image, self.views, self.counts = card, image, views, counts

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
        first = self.card.key("image")
        keys = [first] + [f"{j}.{first}" for j in range(1, self.views)]
        fitted = {v: self.image.fit(decode_image(s[k])) for v, k in enumerate(keys) if k in s}
        h, w = next(iter(fitted.values())).shape[:2] if fitted else (self.image.size or (self.image.factor,) * 2)
        images = np.zeros((self.views, h, w, 3), np.uint8)
        image_mask = np.zeros(self.views, bool)
        for v, img in fitted.items():
            if img.shape[:2] != (h, w):
                raise ValueError(f"{s.get('__key__')}: its images resize to different sizes")
            images[v], image_mask[v] = img, True
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
