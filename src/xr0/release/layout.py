"""Reading and writing a release directory, as `huggingface-cli download` leaves it.

A release holds config.json (`MiBoTConfig`: vlm_config, dit_config, state_dim, action_dim, action_length),
the weights (model.safetensors, or shards named by model.safetensors.index.json), and the processor files.
The per-robot action statistics sit in preprocessor_config.json under `action_config`:
`{robot_type: {"mean": [[...32] x T], "std": [[...32] x T]}}`; the released processor un-normalises actions
as `a * std + mean` and takes a dimension as valid when `std > 1e-5`.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

CONFIG = "config.json"
PREPROCESSOR = "preprocessor_config.json"
PROCESSOR = "processor_config.json"
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
VALID_STD = 1e-5  # the released processor's threshold for an active action dimension


class ReleaseError(ValueError):
    """A release directory that cannot be read; the message names the file and key."""


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ReleaseError(f"{path}: not found (is this a downloaded Xiaomi-Robotics-0 release directory?)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ReleaseError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ReleaseError(f"{path}: expected a JSON object")
    return data


def read_config(root: Path) -> dict[str, Any]:
    cfg = _read_json(root / CONFIG)
    for key in ("vlm_config", "dit_config", "action_dim", "state_dim", "action_length"):
        if key not in cfg:
            raise ReleaseError(f"{root / CONFIG}: missing key {key!r} (not a MiBoTConfig)")
    return cfg


def read_action_config(root: Path) -> tuple[dict[str, Any], str]:
    """`action_config` and the file it came from. The image processor carries it (preprocessor_config.json);
    processor_config.json is read as a fallback, top level or under `image_processor`."""
    for name in (PREPROCESSOR, PROCESSOR):
        path = root / name
        if not path.is_file():
            continue
        data = _read_json(path)
        for node in (data, data.get("image_processor") or {}):
            if isinstance(node, dict) and "action_config" in node:
                return node["action_config"], name
    raise ReleaseError(f"{root}: no `action_config` in {PREPROCESSOR} or {PROCESSOR}; the per-robot action "
                       f"statistics are needed to build xr0 embodiments")


def robot_stats(action_config: dict[str, Any], robot_type: str, chunk: int, action_dim: int) -> dict[str, Any]:
    """One robot_type's statistics as (T, A) lists (a single row is broadcast over the chunk), and its mask."""
    entry = action_config[robot_type]
    out: dict[str, Any] = {}
    for key, default in (("mean", 0.0), ("std", 1.0)):
        t = torch.as_tensor(entry.get(key, default), dtype=torch.float64)
        if t.ndim == 0:
            t = t.expand(action_dim)
        if t.ndim == 1:
            t = t[None].expand(chunk, -1)
        if t.shape[-1] != action_dim:
            raise ReleaseError(f"action_config.{robot_type}.{key}: last dim {t.shape[-1]} != action_dim {action_dim}")
        out[key] = t
    mask = (out["std"] > VALID_STD).any(dim=0)  # (A,) a dim is valid when any step has spread
    return {"mean": out["mean"].tolist(), "std": out["std"].tolist(), "action_mask": mask.tolist(),
            "chunk": int(out["mean"].shape[0])}


def weight_files(root: Path) -> list[Path]:
    if (root / INDEX).is_file():
        weight_map = _read_json(root / INDEX).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ReleaseError(f"{root / INDEX}: no `weight_map`")
        files = sorted({root / f for f in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ReleaseError(f"{root}: shards named in {INDEX} are missing: {', '.join(missing)} "
                               f"(did the download finish?)")
        return files
    if (root / SINGLE).is_file():
        return [root / SINGLE]
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise ReleaseError(f"{root}: no safetensors weights ({INDEX}, {SINGLE} or *.safetensors)")
    return files


def iter_tensors(root: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of the release, one at a time (shards are memory-mapped, not read whole)."""
    from safetensors import safe_open

    seen: dict[str, str] = {}
    for path in weight_files(root):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                if name in seen:
                    raise ReleaseError(f"{name}: stored twice ({seen[name]} and {path.name})")
                seen[name] = path.name
                yield name, f.get_tensor(name)


def auxiliary_files(root: Path) -> list[Path]:
    """Everything but the weights: config, processor, tokenizer, chat template, remote code."""
    return sorted(p for p in root.iterdir()
                  if p.is_file() and not p.name.endswith(".safetensors") and p.name != INDEX)


def write_tensors(tensors: dict[str, torch.Tensor], out: Path, max_shard_bytes: int) -> list[str]:
    """Write `model.safetensors`, or HF-style shards + index when the total exceeds `max_shard_bytes`."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous()
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += n
    meta = {"format": "pt"}  # transformers refuses shards without it
    if len(shards) == 1:
        save_file(shards[0], str(out / SINGLE), metadata=meta)
        return [SINGLE]
    names = [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))]
    weight_map = {}
    for fname, shard in zip(names, shards):
        save_file(shard, str(out / fname), metadata=meta)
        weight_map.update({k: fname for k in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (out / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return names
