"""Qwen-VL image preprocessing in torch: normalise + patchify, numerically the same as
transformers' Qwen2VLImageProcessor for images already at a multiple of patch·merge (batched, on device)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # Qwen2VLImageProcessor defaults (OpenAI CLIP)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MIN_PIXELS, MAX_PIXELS = 56 * 56, 28 * 28 * 1280  # Qwen2VLImageProcessor's defaults
PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL's filter codes in preprocessor_config.json


def read_preprocessor(path: str | Path | dict[str, Any]) -> dict[str, Any]:
    """A Qwen-VL `preprocessor_config.json` (a file, a folder holding one, or its content) → image_mean, image_std,
    patch_size, merge_size, min_pixels, max_pixels, resample (only the keys it sets)."""
    if isinstance(path, dict):
        cfg = dict(path)
    else:
        p = Path(path)
        p = p / "preprocessor_config.json" if p.is_dir() else p
        if not p.is_file():
            raise FileNotFoundError(f"backbone.preprocessor={path}: no preprocessor_config.json there")
        cfg = json.loads(p.read_text())
    cfg = cfg.get("image_processor", cfg) if "image_mean" not in cfg else cfg
    size = cfg.get("size") or {}
    out = {"image_mean": cfg.get("image_mean"), "image_std": cfg.get("image_std"), "patch_size": cfg.get("patch_size"),
           "merge_size": cfg.get("merge_size"), "min_pixels": cfg.get("min_pixels", size.get("shortest_edge")),
           "max_pixels": cfg.get("max_pixels", size.get("longest_edge")),
           "resample": PIL_RESAMPLE.get(cfg.get("resample")) if cfg.get("resample") is not None else None}
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in out.items() if v is not None}


def patchify(images: Tensor, patch: int, merge: int, temporal: int, mean=CLIP_MEAN, std=CLIP_STD) -> tuple[Tensor, Tensor]:
    """images (N, 3, H, W) in [0, 1] → pixel_values (N·gh·gw, 3·temporal·p·p), grid_thw (N, 3).

    A still image is repeated over the temporal patch, and patches are ordered merge-window by window,
    as the HF processor does, so the vision tower's patch merger sees the same layout.
    """
    n, _, h, w = images.shape
    pixel_values = pixel_patches(images, patch, merge, temporal, mean, std)
    grid = torch.tensor([[1, h // patch, w // patch]] * n, device=images.device, dtype=torch.long)  # (N, 3)
    return pixel_values, grid


def pixel_patches(images: Tensor, patch: int, merge: int, temporal: int, mean=CLIP_MEAN, std=CLIP_STD) -> Tensor:
    """The pixel_values of `patchify` alone. mean/std may be tensors already on the images' device: then nothing
    here copies from the host, so the fast path can run it inside a CUDA graph."""
    n, c, h, w = images.shape
    if h % (patch * merge) or w % (patch * merge):
        raise ValueError(f"image size {h}x{w} must be a multiple of patch*merge = {patch * merge}; resize in the "
                         f"data pipeline (data.image_size) to e.g. {h // (patch * merge) * patch * merge}x"
                         f"{w // (patch * merge) * patch * merge}")
    m = torch.as_tensor(mean, device=images.device, dtype=images.dtype).reshape(c, 1, 1)
    s = torch.as_tensor(std, device=images.device, dtype=images.dtype).reshape(c, 1, 1)
    x = (images - m) / s  # (N, C, H, W)
    gh, gw = h // patch, w // patch
    x = x[:, None].expand(n, temporal, c, h, w)  # (N, t, C, H, W)
    x = x.reshape(n, temporal, c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (N, gh/m, gw/m, m, m, C, t, p, p)
    return x.reshape(n * gh * gw, c * temporal * patch * patch)
