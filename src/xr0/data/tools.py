"""Card tools behind `xr0 data stats|inspect`: streaming statistics, sample counts, a contact sheet."""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from xr0.data.cards import DataCard, load_card, shard_list
from xr0.data.stats import StatsAccumulator, save_stats
from xr0.processor import canonical_chunk


def _raw_samples(card: DataCard, select: set[str] | None = None, handler=None):
    """Every sample of a card in order, one process, no shuffling; `select` keeps only those extensions."""
    import webdataset as wds

    keep = None if select is None else (lambda fname: fname.split(".", 1)[-1] in select)
    return wds.WebDataset(card.urls, shardshuffle=False, select_files=keep, empty_check=False,
                          handler=handler or wds.handlers.warn_and_continue)


def compute_stats(ref: str, reservoir: int = 4096, write: bool = True, progress: bool = True) -> dict[str, Any]:
    """Stream a robot card's shards once (images skipped) and write its statistics file; returns them."""
    from tqdm import tqdm

    from xr0 import embodiments

    card = load_card(ref, check_files=False)
    if card.kind != "robot":
        raise ValueError(f"data card '{card.name}' is kind '{card.kind}': statistics are for robot cards")
    emb = embodiments.get(card.embodiment)
    acc = StatsAccumulator(card.chunk, emb.action_mask(), reservoir)
    keys = {card.key("state"), card.key("actions")}
    skipped = 0
    for s in tqdm(_raw_samples(card, keys), desc=f"stats {card.name}", unit="sample", total=card.num_samples,
                  disable=not progress):
        state = np.load(io.BytesIO(s[card.key("state")])).astype(np.float32)
        future = np.load(io.BytesIO(s[card.key("actions")])).astype(np.float32)
        if state.shape != (emb.state_dim,) or future.ndim != 2 or future.shape[1] != emb.action_dim \
                or not (np.all(np.isfinite(state)) and np.all(np.isfinite(future))):
            skipped += 1  # what the reader skips too: never reshaped, never averaged in
            continue
        rel, valid = canonical_chunk(emb, future, state, card.chunk)
        acc.add(emb.to_canonical(state, "state"), rel, valid)
    if acc.state.n == 0:
        raise ValueError(f"data card '{card.name}': no usable sample ({skipped} with NaN/inf or the wrong shape)")
    if skipped:
        import warnings

        warnings.warn(f"data card '{card.name}': {skipped} samples with NaN/inf or the wrong shape were left out of "
                      f"the statistics (the reader skips them too)", stacklevel=2)
    stats = acc.result()
    if write:
        if not card.stats_path or not card.is_local:
            raise ValueError(f"data card '{card.name}': set `stats:` to a local file to write statistics to")
        save_stats(stats, card.stats_path)
    return stats


def count_samples(card: DataCard, progress: bool = True, missing: dict[str, int] | None = None) -> dict[str, int]:
    """Samples per shard (reads only the small metadata member of each sample); `missing` collects the frames each
    camera is recorded missing in (meta.json `missing`)."""
    from tqdm import tqdm

    counts: dict[str, int] = {}
    meta = card.key("meta" if card.kind == "robot" else "json")
    for s in tqdm(_raw_samples(card, {meta}), desc=f"count {card.name}", unit="sample", disable=not progress):
        counts[s["__url__"]] = counts.get(s["__url__"], 0) + 1
        if missing is not None and card.kind == "robot":
            for cam in json.loads(s[meta]).get("missing", []):
                missing[cam] = missing.get(cam, 0) + 1
    return counts


def contact_sheet(images: list[np.ndarray], names: list[str], path: str | Path) -> Path:
    """Camera frames side by side (scaled to one height) with their names, as a PNG."""
    from PIL import ImageDraw

    from xr0.names import draw_title

    h = max(max(im.shape[0] for im in images), 64)
    tiles = [Image.fromarray(im).resize((max(1, round(im.shape[1] * h / im.shape[0])), h)) for im in images]
    sheet = Image.new("RGB", (sum(t.width for t in tiles) + 4 * (len(tiles) - 1), h + 14), "white")
    x, draw = 0, ImageDraw.Draw(sheet)
    for t, name in zip(tiles, names):
        sheet.paste(t, (x, 14))
        draw_title(draw, (x + 2, 0), name)  # a camera's name as the lab wrote it, any script
        x += t.width + 4
    path = Path(path)
    sheet.save(path)
    return path


def inspect_card(ref: str, sheet: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """A card's shards, sample count, one decoded sample and (optionally) a contact sheet of its cameras."""
    card = load_card(ref)
    shards = shard_list(card.urls)
    missing: dict[str, int] = {}
    counts = count_samples(card, progress, missing)
    first = next(iter(_raw_samples(card)), None)
    if first is None:
        raise ValueError(f"data card '{card.name}': no readable sample in {len(shards)} shard(s)")
    sample: dict[str, Any] = {"__key__": first["__key__"]}
    images, names = [], []
    for k, v in first.items():
        if k.startswith("__"):
            continue
        if k.endswith((".jpg", ".png")) or k in ("jpg", "png"):
            img = np.asarray(Image.open(io.BytesIO(v)).convert("RGB"))
            images.append(img)
            names.append(k.rsplit(".", 1)[0])
            sample[k] = f"image {img.shape[1]}x{img.shape[0]}"
        elif k.endswith("npy"):
            arr = np.load(io.BytesIO(v))
            sample[k] = f"{arr.dtype} {arr.shape} first row {np.round(arr.reshape(-1, arr.shape[-1])[0], 3).tolist()}"
        elif k.endswith("json"):
            sample[k] = json.loads(v)
    out = {"card": str(card.path), "kind": card.kind, "embodiment": card.embodiment, "shards": shards,
           "samples_per_shard": counts, "samples": sum(counts.values()), "sample": sample,
           "missing_frames": {c: missing.get(c, 0) for c in card.cameras} if card.kind == "robot" else {}}
    if sheet is not None and images:
        out["contact_sheet"] = str(contact_sheet(images, names, sheet))
    return out
