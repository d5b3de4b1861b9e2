"""`xr0 export-release SRC OUT/`: an xr0 model -> a directory the released inference code serves.

SRC is an xr0 export directory (model.safetensors + xr0.json, e.g. from `xr0 import-release` or `xr0 export`)
or a Lightning checkpoint of a stage that started from an imported release. OUT/ gets the release weights
(sharded like the hub's when large), config.json, preprocessor_config.json whose `action_config` carries the
trained embodiment's statistics next to the released ones, and — from --template or the import's
release_files/ — the remote code, tokenizer and other processor files.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from xr0.export import META_KEYS, METADATA, load_checkpoint, read_export
from xr0.release import keymap as K
from xr0.release import layout
from xr0.release.importer import RELEASE_FILES, RELEASE_VLM, check_release_names


def _load_source(src: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if src.is_dir():
        return read_export(src)
    ckpt = load_checkpoint(src)
    if "state_dict" not in ckpt:
        raise layout.ReleaseError(f"{src}: no state_dict, not a Lightning checkpoint")
    meta = {k: ckpt.get(k) for k in (*META_KEYS, "xr0_embodiments", "xr0_release")}
    return {k: v for k, v in ckpt["state_dict"].items() if torch.is_tensor(v)}, meta


def _release_info(meta: dict[str, Any], template: Path | None, src: Path) -> dict[str, Any]:
    """config.json and the processor json the export starts from: the import's record, else the template."""
    info = dict(meta.get("xr0_release") or {})
    if "config" not in info:
        if template is None:
            raise layout.ReleaseError(
                f"{src}: carries no release config (xr0_release in {METADATA}); it was not started from "
                f"`xr0 import-release`. Pass --template RELEASE_DIR to take config.json and the processor from it")
        info["config"] = layout.read_config(template)
        info["stats_file"] = layout.read_action_config(template)[1]
        info["preprocessor"] = json.loads((template / info["stats_file"]).read_text())
        info["has_lm_head"] = False
    return info


def _find_action_config(preprocessor: dict[str, Any]) -> dict[str, Any]:
    for node in (preprocessor, preprocessor.get("image_processor") or {}):
        if isinstance(node, dict) and "action_config" in node:
            return node
    raise layout.ReleaseError("the stored processor json has no action_config")


def merged_action_config(info: dict[str, Any], meta: dict[str, Any], allow_state_norm: bool) -> dict[str, Any]:
    """The released robot types, plus (or updated with) the embodiment this model was trained on."""
    preprocessor = json.loads(json.dumps(info["preprocessor"]))  # deep copy
    node = _find_action_config(preprocessor)
    proc = meta.get("xr0_processor")
    if proc:  # the trained chunk's statistics and mask, exactly what serving un-normalises with
        import numpy as np

        if proc.get("state_mean") is not None and not allow_state_norm:
            raise layout.ReleaseError(
                "xr0_processor: this model was trained on normalised states (data.state_norm: meanstd), but the "
                "released inference code feeds the raw state. Post-train with data.state_norm: none, or pass "
                "--allow-state-norm and normalise the state on the client yourself")
        mask = np.asarray(proc["action_mask"], bool)
        mask = np.broadcast_to(mask, np.shape(proc["action_std"])) if mask.ndim == 1 else mask
        std = np.where(mask, np.asarray(proc["action_std"]), 0.0)  # invalid: below the release's 1e-5 threshold
        node["action_config"][proc["embodiment"]["name"]] = {"mean": proc["action_mean"], "std": std.tolist()}
        return preprocessor
    stats, emb = meta.get("xr0_stats") or {}, meta.get("xr0_embodiment")
    if stats.get("state") is not None and not allow_state_norm:
        raise layout.ReleaseError(
            "xr0_stats.state: this model was trained on normalised states, but the released inference code "
            "feeds the raw state. Post-train with state normalisation off, or pass --allow-state-norm and "
            "normalise the state on the client yourself")
    actions = stats.get("actions") or {}
    if emb and "mean" in actions and "std" in actions:
        chunk = int(info["config"]["action_length"])
        mean = torch.as_tensor(actions["mean"], dtype=torch.float64)
        std = torch.as_tensor(actions["std"], dtype=torch.float64)
        if mean.ndim == 1:  # per-dimension statistics: the release wants one row per chunk step
            mean, std = mean[None].expand(chunk, -1), std[None].expand(chunk, -1)
        mask = (meta.get("xr0_embodiments") or {}).get(emb, {}).get("action_mask")
        if mask is not None:
            # the release reads a dim as valid when std > 1e-5: padded dims must fall below that
            invalid = ~torch.as_tensor(mask, dtype=torch.bool)
            std = torch.where(invalid & (std > layout.VALID_STD), torch.zeros_like(std), std)
        node["action_config"][emb] = {"mean": mean.tolist(), "std": std.tolist()}
    return preprocessor


def export_release(src: str | Path, out: str | Path, template: str | Path | None = None,
                   max_shard_gb: float = 5.0, allow_state_norm: bool = False) -> Path:
    src, out = Path(src), Path(out)
    template = Path(template) if template else None
    if template is None and src.is_dir() and (src / RELEASE_FILES).is_dir():
        template = src / RELEASE_FILES
    tensors, meta = _load_source(src)
    family = (((meta.get("xr0_recipe") or {}).get("stage") or {}).get("backbone") or {}).get("name")
    if family not in (None, RELEASE_VLM):  # the format holds one VLM family: a fact of the release, not a choice
        raise layout.ReleaseError(f"{src}: its VLM is '{family}', but the released format holds a Qwen3-VL "
                                  f"('{RELEASE_VLM}'); export it with `xr0 export` (xr0's own format) instead")
    info = _release_info(meta, template, src)
    config = info["config"]

    from xr0.checkpoint import _canonical  # the stage-independent key form init_from uses

    lora = sorted(k for k in tensors if ".lora_" in k)
    if lora:
        raise layout.ReleaseError(f"{src}: holds LoRA adapter weights ({lora[0]}, ...); the release layout has no "
                                  f"place for them: merge the adapters into the VLM weights before export-release")
    released: dict[str, torch.Tensor] = {}
    unmapped = []
    for name, t in tensors.items():
        hit = K.to_release(_canonical(name))  # stages 2/3 store `policy.backbone.*` / `policy.head.*`
        if hit is None:
            unmapped.append(name)
        else:
            released[hit[0]] = t
    if unmapped:
        raise K.KeyMapError(f"{src}: tensors with no row in xr0/release/keymap.py (the release cannot hold them): "
                            + ", ".join(sorted(unmapped)[:25]) + (" ..." if len(unmapped) > 25 else ""))
    lm_head = K.RELEASE_VLM_PREFIX + "lm_head.weight"
    _, optional = K.expected_release_shapes(config)
    if lm_head in optional and not info.get("has_lm_head"):
        released.pop(lm_head, None)  # tied to the embeddings: the hub checkpoints omit it
    check_release_names({k: tuple(v.shape) for k, v in released.items()}, config, str(src))

    out.mkdir(parents=True, exist_ok=True)
    if template is not None:
        for f in layout.auxiliary_files(template):
            if f.name not in (layout.CONFIG, info["stats_file"]):
                shutil.copy2(f, out / f.name)
    (out / layout.CONFIG).write_text(json.dumps(config, indent=2))
    preprocessor = merged_action_config(info, meta, allow_state_norm)
    (out / info["stats_file"]).write_text(json.dumps(preprocessor, indent=2))
    layout.write_tensors(released, out, int(max_shard_gb * 2**30))
    return out
