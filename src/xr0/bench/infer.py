"""`xr0 bench infer`: chunk latency of the eager path (HF forward + a Python loop of DiT steps, Policy.predict_chunk)
and of the fast path (FastPolicy: planned prefill, prepared DiT, CUDA graphs) in the same run, with a breakdown
(vision, language-model prefill, DiT steps) and the fraction of the roofline (xr0.flops) the fast path reaches.

Both optional capabilities of the backbone (xr0.backbones.protocol) are used when declared: without a static
prefill plan only the eager path is timed (the result says why), without an analytic cost there is no roofline."""
from __future__ import annotations

from typing import Any

import torch

from xr0 import flops
from xr0.bench import DEFAULT_BACKBONE, build_policy, device_name, make_batch, summary, timed


def bench_infer(scale: str = "tiny", device: str = "cpu", iters: int = 100, warmup: int = 10, steps: int = 5,
                eager: bool = True, compile: bool = False, peak: tuple[float, float] | None = None,
                backbone: str = DEFAULT_BACKBONE) -> dict[str, Any]:
    from xr0.infer import FastPolicy, static_prefill

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    policy, s = build_policy(scale, device, dtype, backbone)
    batch = make_batch(s, 1, device, dtype)
    run = lambda fn: summary(timed(fn, iters, warmup, device))
    result: dict[str, Any] = {"kind": "infer", "scale": scale, "backbone": backbone, "device": device_name(device),
                              "dtype": str(dtype), "steps": steps, "views": s["views"], "image_hw": list(s["hw"]),
                              "chunk": s["chunk"], "torch": torch.__version__, "compile": compile}
    fast_ok = static_prefill(policy) is not None
    if not fast_ok:
        result["fast_note"] = (f"backbone '{backbone}' declares no static prefill plan: FastPolicy cannot run it, "
                               f"only the eager path (Policy.predict_chunk, what xr0 serve then runs) is timed")
        eager = True
    vb = policy.backbone
    with torch.inference_mode():
        inputs = vb.prepare(batch["images"], batch["image_mask"], batch["instruction"])
        vlm_tokens = int(inputs["input_ids"].shape[1])
        if fast_ok:
            fast = FastPolicy(policy, compile=compile)
            parts = fast.parts(batch, steps=steps)
            result["fast"] = {"total_ms": run(lambda: fast.predict_chunk(batch, steps=steps)),
                              **{f"{p}_ms": run(fn) for p, fn in parts.items()}}
            vlm_tokens = fast.tokens(batch)
        if eager:
            ctx = policy.context(batch)
            result["eager"] = {
                "total_ms": run(lambda: policy.predict_chunk(batch, steps=steps)),
                "vision_ms": run(lambda: vb.encode_images(inputs)),  # the backbone's own vision tower
                "vlm_ms": run(lambda: policy.context(batch)),  # vision + prefill (HF forward)
                "dit_ms": run(lambda: policy.sample(ctx, batch, steps=steps))}
            if fast_ok:
                result["speedup"] = result["eager"]["total_ms"]["p50_ms"] / result["fast"]["total_ms"]["p50_ms"]
    h, w = s["hw"]
    result["vlm_tokens"] = vlm_tokens
    if vb.cost(1, h, w, vlm_tokens, 1, 2, policy.head.depth) is None:
        result["cost"] = None
        result["cost_note"] = f"backbone '{backbone}' declares no analytic cost: no roofline"
        return result
    cost = flops.infer_cost(policy, s["views"], h, w, vlm_tokens, steps, batch=1,
                            dtype_bytes=torch.finfo(dtype).bits // 8)
    result["cost"] = {k: {"gflops": c.flops / 1e9, "mbytes": c.bytes / 1e6} for k, c in cost.items()}
    peak = peak or flops.peak_for(result["device"])
    result["peak"] = None if peak is None else {"tflops": peak[0], "tbps": peak[1]}
    if peak is not None:
        roof = flops.roofline_ms(cost["total"], peak)
        result["roofline_ms"] = roof
        timed_path = result["fast"] if fast_ok else result["eager"]
        result["roofline_fraction"] = roof / timed_path["total_ms"]["p50_ms"]
    return result


def line(res: dict[str, Any]) -> str:
    """The one-line summary the command prints."""
    head = f"[xr0 bench infer] {res['scale']} {res.get('backbone', DEFAULT_BACKBONE)} on {res['device']}: "
    if "fast" in res:
        f = res["fast"]
        out = head + (f"fast p50 {f['total_ms']['p50_ms']:.2f} ms p99 {f['total_ms']['p99_ms']:.2f} ms (vision "
                      f"{f['vision_ms']['p50_ms']:.2f}, prefill {f['prefill_ms']['p50_ms']:.2f}, {res['steps']} DiT "
                      f"steps {f['dit_ms']['p50_ms']:.2f})")
        if "eager" in res:
            out += f"; eager p50 {res['eager']['total_ms']['p50_ms']:.2f} ms ({res['speedup']:.1f}x)"
    else:
        e = res["eager"]
        out = head + (f"eager p50 {e['total_ms']['p50_ms']:.2f} ms p99 {e['total_ms']['p99_ms']:.2f} ms "
                      f"({res['fast_note']})")
    if "roofline_ms" in res:
        out += f"; roofline {res['roofline_ms']:.2f} ms ({100 * res['roofline_fraction']:.0f}% reached)"
    return out
