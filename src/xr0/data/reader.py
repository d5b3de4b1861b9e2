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
from xr0.processor import ImageSpec, ObservationError, Processor, collate, finish_images  # noqa: F401


MAX_EMPTY_SHARDS = 8  # this many failed shards before any readable sample: the card is broken, not unlucky


class DataError(RuntimeError):
    """A data card gives nothing to train on; the message names the card and its shards."""


class SampleError(ValueError):
    """One sample cannot be used; `reason` is the counter it is skipped under (skipped/<reason>)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _shard_of(exn: Exception) -> str | None:
    """The shard a webdataset error came from: it appends the url to the args, or " @ <file name='...'>" to the
    message, depending on where in the tar it failed."""
    import re

    for a in reversed(getattr(exn, "args", ())):
        if isinstance(a, str) and (a.endswith((".tar", ".tgz", ".tar.gz")) or "://" in a or a.startswith("pipe:")):
            return a
    m = re.search(r" @ .*?name='([^']+)'", str(exn.args[0]) if getattr(exn, "args", None) else "")
    return m.group(1) if m else None


class Counts:
    """Per-worker counters: skipped samples by reason, failed shards, samples per source; lives in the worker."""

    def __init__(self):
        self.c: Counter = Counter()
        self.failed: set[tuple[str, str | None]] = set()  # shards that failed (one broken tar raises more than once)

    def handler(self, exn: Exception, card: str = "?", max_empty_shards: int = MAX_EMPTY_SHARDS) -> bool:
        """webdataset handler: a bad sample is skipped and counted by reason; a shard that fails to read is counted
        (`shards_failed`) and named in the warning. Never one bad sample crashes a run, but a card whose first
        `max_empty_shards` shard attempts give no sample at all raises DataError: training on nothing is a bug."""
        import warnings

        if isinstance(exn, SampleError):
            self.c["skipped"] += 1
            self.c[f"skipped/{exn.reason}"] += 1
            warnings.warn(f"data card '{card}': skipped a sample ({exn.reason}): {exn}", stacklevel=2)
            return True
        shard = _shard_of(exn)
        if shard is not None and (card, shard) in self.failed:
            return True  # the same broken shard again: counted and said once
        self.failed.add((card, shard))
        self.c["shards_failed"] += 1
        self.c[f"shards_failed:{card}"] += 1
        first = str(exn.args[0]).split(" @ ")[0] if exn.args else str(exn)
        warnings.warn(f"data card '{card}': shard {shard or '?'} failed ({type(exn).__name__}: {first}); the rest of "
                      f"that shard is skipped (counted in data/shards_failed)", stacklevel=2)
        if self.c[f"shards_failed:{card}"] >= max_empty_shards and self.c[f"source:{card}"] == 0:
            raise DataError(f"data card '{card}': its first {self.c[f'shards_failed:{card}']} shard attempts gave no "
                            f"readable sample (last: {shard}); check the shards with `xr0 data inspect {card}`")
        return True

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
        where = f"{s.get('__key__')} in {s.get('__url__')}"
        try:
            meta = _json(s[c.key("meta")])
            state = _npy(s[c.key("state")]).astype(np.float32)
            future = _npy(s[c.key("actions")]).astype(np.float32)
        except (KeyError, ValueError, OSError) as exc:
            raise SampleError("unreadable", f"{where}: {type(exc).__name__}: {exc}") from exc
        if state.shape != (emb.state_dim,) or future.ndim != 2 or future.shape[1] != emb.action_dim or not len(future):
            raise SampleError("bad_shape", f"{where}: state {state.shape} / actions {future.shape}; '{emb.name}' has "
                                           f"({emb.state_dim},) / (n, {emb.action_dim}) (never reshaped)")
        if not (np.all(np.isfinite(state)) and np.all(np.isfinite(future))):
            raise SampleError("non_finite", f"{where}: NaN or inf in the state or the actions")
        try:
            frames = {cam: (decode_image(s[c.key(cam)]) if c.key(cam) in s else None) for cam in proc.cameras}
            sample = proc.observation({"state": state, "images": frames,
                                       "prompt": str(meta.get(c.instruction_field, ""))})
        except ObservationError as exc:
            raise SampleError("bad_observation", f"{where}: {exc}") from exc
        except OSError as exc:
            raise SampleError("bad_image", f"{where}: {exc}") from exc
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
        try:
            meta = _json(s[self.card.key("json")])
        except (KeyError, ValueError) as exc:
            raise SampleError("unreadable", f"{s.get('__key__')}: {type(exc).__name__}: {exc}") from exc
        if "conversations" in meta:
            turns = meta["conversations"]
            if not turns or turns[-1].get("from") not in ("gpt", "assistant"):
                raise SampleError("bad_conversation", f"{s.get('__key__')}: conversation must end with an assistant turn")
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
                raise SampleError("bad_image", f"{s.get('__key__')}: its images resize to different sizes")
            images[v], image_mask[v] = img, True
        self.counts.c["vl"] += 1
        self.counts.c[f"source:{self.card.name}"] += 1
        return {"kind": "vl", "images": images, "image_mask": image_mask, "prompt": str(prompt), "answer": str(answer)}


def card_stream(card: DataCard, transform, counts: Counts, shuffle_buffer: int, shard_shuffle: int, seed: int):
    """One card's WebDataset pipeline (each rank and worker gets its own shards)."""
    import functools

    import webdataset as wds

    handler = functools.partial(counts.handler, card=card.name)
    ds = wds.WebDataset(card.urls, handler=handler, shardshuffle=shard_shuffle or False,
                        nodesplitter=wds.split_by_node, workersplitter=wds.split_by_worker,
                        empty_check=False, seed=seed)
    if shuffle_buffer > 0:
        ds = ds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 100))
    return ds.map(transform, handler=handler)


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
