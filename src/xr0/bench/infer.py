"""`xr0 bench infer`: chunk latency of the eager path (HF forward + a Python loop of DiT steps, Policy.predict_chunk)
and of the fast path (FastPolicy: planned prefill, prepared DiT, CUDA graphs) in the same run, with a breakdown
(vision, language-model prefill, DiT steps) and the fraction of the roofline (xr0.flops) the fast path reaches."""
from __future__ import annotations

from typing import Any

import torch

from xr0 import flops
from xr0.bench import build_policy, device_name, make_batch, summary, timed


def bench_infer(scale: str = "tiny", device: str = "cpu", iters: int = 100, warmup: int = 10, steps: int = 5,
                eager: bool = True, compile: bool = False, peak: tuple[float, float] | None = None) -> dict[str, Any]:
    from xr0.infer import FastPolicy

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    policy, s = build_policy(scale, device, dtype)
    batch = make_batch(s, 1, device, dtype)
    run = lambda fn: summary(timed(fn, iters, warmup, device))
    result: dict[str, Any] = {"kind": "infer", "scale": scale, "device": device_name(device), "dtype": str(dtype),
                              "steps": steps, "views": s["views"], "image_hw": list(s["hw"]), "chunk": s["chunk"],
                              "torch": torch.__version__, "compile": compile}
    with torch.inference_mode():
        fast = FastPolicy(policy, compile=compile)
        parts = fast.parts(batch, steps=steps)
        result["fast"] = {"total_ms": run(lambda: fast.predict_chunk(batch, steps=steps)),
                          **{f"{p}_ms": run(fn) for p, fn in parts.items()}}
        if eager:
            inputs = policy.backbone.prepare(batch["images"], batch["image_mask"], batch["instruction"])
            ctx = policy.context(batch)
            hf = policy.backbone.hf
            result["eager"] = {
                "total_ms": run(lambda: policy.predict_chunk(batch, steps=steps)),
                "vision_ms": run(lambda: hf.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])),
                "vlm_ms": run(lambda: policy.context(batch)),  # vision + prefill (HF forward)
                "dit_ms": run(lambda: policy.sample(ctx, batch, steps=steps))}
            result["speedup"] = result["eager"]["total_ms"]["p50_ms"] / result["fast"]["total_ms"]["p50_ms"]
    vlm_tokens = int(fast._plans[next(iter(fast._plans))]["prompt"].input_ids.shape[1])
    h, w = s["hw"]
    cost = flops.infer_cost(policy, s["views"], h, w, vlm_tokens, steps, batch=1,
                            dtype_bytes=torch.finfo(dtype).bits // 8)
    result["vlm_tokens"] = vlm_tokens
    result["cost"] = {k: {"gflops": c.flops / 1e9, "mbytes": c.bytes / 1e6} for k, c in cost.items()}
    peak = peak or flops.peak_for(result["device"])
    result["peak"] = None if peak is None else {"tflops": peak[0], "tbps": peak[1]}
    if peak is not None:
        roof = flops.roofline_ms(cost["total"], peak)
        result["roofline_ms"] = roof
        result["roofline_fraction"] = roof / result["fast"]["total_ms"]["p50_ms"]
    return result


def line(res: dict[str, Any]) -> str:
    """The one-line summary the command prints."""
    f = res["fast"]
    out = (f"[xr0 bench infer] {res['scale']} on {res['device']}: fast p50 {f['total_ms']['p50_ms']:.2f} ms "
           f"p99 {f['total_ms']['p99_ms']:.2f} ms (vision {f['vision_ms']['p50_ms']:.2f}, prefill "
           f"{f['prefill_ms']['p50_ms']:.2f}, {res['steps']} DiT steps {f['dit_ms']['p50_ms']:.2f})")
    if "eager" in res:
        out += f"; eager p50 {res['eager']['total_ms']['p50_ms']:.2f} ms ({res['speedup']:.1f}x)"
    if "roofline_ms" in res:
        out += f"; roofline {res['roofline_ms']:.2f} ms ({100 * res['roofline_fraction']:.0f}% reached)"
    return out
