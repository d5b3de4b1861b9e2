"""`xr0 bench infer|train --scale tiny|paper [--backbone NAME]`: policy latency and training throughput.

The DiT and the views at each scale are here; the VLM's sizes and image size are the backbone's own declared
`scales` (xr0.backbones.protocol), and the DiT's head_dim follows the VLM's. Paper scale with the default backbone =
the published Qwen3-VL-4B-Instruct architecture (random init) + the 16-layer, width-1024 DiT, 3 views at 320×256
(the released image policy: a multiple of 32, at most 90,000 pixels), ~30 instruction tokens, T=30, 32-dim actions,
5 Euler steps, batch 1, bf16. Tiny scale runs on a CPU so CI covers the path.
"""
from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

# 30 characters = 30 tokens of the byte tokenizer a config-only (random) VLM uses: the ~30-token instruction
INSTRUCTION = "stack the red cube on the bowl"
SCALES = {
    "tiny": {"views": 2, "chunk": 10, "head": {"width": 64, "depth": 2, "num_heads": 2}},
    "paper": {"views": 3, "chunk": 30, "head": {"width": 1024, "depth": 16, "num_heads": 8}},
}
DEFAULT_BACKBONE = "qwen3vl"


def scale_of(scale: str, backbone: str = DEFAULT_BACKBONE) -> dict[str, Any]:
    """The bench setting: SCALES[scale] plus the backbone's declared sizes at that scale (`backbone`: builder
    kwargs with its name, `hw`: the image size)."""
    from xr0.registry import BACKBONES

    declared = BACKBONES.get(backbone).scales
    if scale not in declared:
        raise ValueError(f"backbone '{backbone}' declares no '{scale}' scale (its scales: {', '.join(declared)})")
    return {**SCALES[scale], "backbone": {"name": backbone, **declared[scale]["kwargs"]},
            "hw": tuple(declared[scale]["image_hw"])}


def head_dims(s: dict[str, Any], backbone: Any) -> dict[str, Any]:
    """The scale's DiT sizes fitted to the VLM: head_dim equal to its K/V's, query heads a multiple of its K/V heads."""
    kv = backbone.num_kv_heads
    heads = max(kv, s["head"]["num_heads"] // kv * kv)
    return {**s["head"], "num_heads": heads, "head_dim": backbone.head_dim, "depth": min(s["head"]["depth"],
                                                                                     backbone.num_layers)}


def build_policy(scale: str, device: str, dtype: torch.dtype, backbone: str = DEFAULT_BACKBONE):
    from xr0.policy import Policy
    from xr0.registry import BACKBONES, HEADS, MASKS, SAMPLERS

    s = scale_of(scale, backbone)
    bb = dict(s["backbone"])
    with torch.device(device):  # a paper-scale model initialises on the GPU, not for minutes on the CPU
        vlm = BACKBONES.build(bb.pop("name"), **bb)
        s["head"] = head_dims(s, vlm)
        head = HEADS.build("dit", chunk=s["chunk"], **s["head"])
    policy = Policy(vlm, head, MASKS.build("causal"), SAMPLERS.build("beta")).to(device=device, dtype=dtype).eval()
    return policy, s


def make_batch(s: dict[str, Any], batch: int, device: str, dtype: torch.dtype) -> dict[str, Any]:
    h, w = s["hw"]
    return {"images": torch.rand(batch, s["views"], 3, h, w, device=device),
            "image_mask": torch.ones(batch, s["views"], dtype=torch.bool, device=device),
            "instruction": [INSTRUCTION] * batch, "state": torch.randn(batch, 32, device=device, dtype=dtype),
            "actions": torch.randn(batch, s["chunk"], 32, device=device, dtype=dtype),
            "action_mask": torch.ones(batch, 32, dtype=torch.bool, device=device),
            "chunk_mask": torch.ones(batch, s["chunk"], dtype=torch.bool, device=device)}


def timed(fn: Callable[[], Any], iters: int, warmup: int, device: str) -> list[float]:
    """Milliseconds per call: CUDA events on a GPU, perf_counter on a CPU."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        if device.startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            out.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e3)
    return out


def summary(ms: list[float]) -> dict[str, float]:
    q = sorted(ms)
    return {"p50_ms": statistics.median(q), "p99_ms": q[min(len(q) - 1, int(0.99 * len(q)))], "n": len(q)}


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(device) if device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"


def write(result: dict[str, Any], out: str | None) -> str:
    line = json.dumps(result)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2))
    return line
