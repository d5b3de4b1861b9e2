"""`xr0 bench infer`: policy latency, eager vs the fast path."""
from __future__ import annotations

from typing import Any

import torch

from xr0.bench import build_policy, device_name, make_batch, summary, timed


def bench_infer(scale: str = "tiny", device: str = "cpu", iters: int = 100, warmup: int = 10,
                steps: int = 5) -> dict[str, Any]:
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    policy, s = build_policy(scale, device, dtype)
    batch = make_batch(s, 1, device, dtype)
    with torch.inference_mode():
        inputs = policy.backbone.prepare(batch["images"], batch["image_mask"], batch["instruction"])
        ctx = policy.context(batch)
        hf = policy.backbone.hf
        parts = {
            "vision_ms": summary(timed(lambda: hf.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]),
                                       iters, warmup, device)),
            "prefill_ms": summary(timed(lambda: policy.context(batch), iters, warmup, device)),
            "dit_steps_ms": summary(timed(lambda: policy.sample(ctx, batch, steps=steps), iters, warmup, device)),
            "total_ms": summary(timed(lambda: policy.predict_chunk(batch, steps=steps), iters, warmup, device)),
        }
    return {"kind": "infer", "scale": scale, "device": device_name(device), "steps": steps,
            "vlm_tokens": int(ctx.attention_mask.shape[1]), **parts}
