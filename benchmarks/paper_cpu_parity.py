"""Paper-scale parity on a CPU (bf16, ~20 GB RAM, minutes): FastPolicy vs Policy.predict_chunk on the published
4B architecture, one call each; prints the JSON the README quotes. Run: python benchmarks/paper_cpu_parity.py"""
import json
import time

import torch

from xr0 import flops
from xr0.bench import build_policy, make_batch
from xr0.infer import FastPolicy

t0 = time.time()
torch.manual_seed(0)
policy, s = build_policy("paper", "cpu", torch.bfloat16)
print("built", round(time.time() - t0, 1), "s", sum(p.numel() for p in policy.parameters()) / 1e9, "B params", flush=True)
batch = make_batch(s, 1, "cpu", torch.bfloat16)
noise = torch.randn(1, 30, 32, dtype=torch.bfloat16)
with torch.inference_mode():
    t = time.time(); ref = policy.predict_chunk(batch, steps=5, noise=noise); te = time.time() - t
    print("eager", round(te, 1), "s", flush=True)
    fast = FastPolicy(policy)
    t = time.time(); out = fast.predict_chunk(batch, steps=5, noise=noise); tf1 = time.time() - t
    t = time.time(); out2 = fast.predict_chunk(batch, steps=5, noise=noise); tf2 = time.time() - t
    prompt = next(iter(fast._plans.values()))["prompt"]
    ctx_ref = policy.context(batch)
    from xr0.backbones.qwen3vl_static import static_context
    ctx = static_context(policy.backbone, prompt, batch["images"], batch["image_mask"], 16)
kv = max((a.float() - b.float()).abs().max().item() for a, b in zip(ctx.keys + ctx.values, ctx_ref.keys + ctx_ref.values))
kvs = max(b.float().abs().max().item() for b in ctx_ref.keys)
tokens = int(prompt.input_ids.shape[1])
cost = flops.infer_cost(policy, 3, 256, 320, tokens, 5)
res = {"vlm_tokens": tokens, "eager_s": te, "fast_first_s": tf1, "fast_s": tf2,
       "chunk_max_abs_diff": (out.float() - ref.float()).abs().max().item(), "chunk_max_abs": ref.float().abs().max().item(),
       "same_twice": bool(torch.equal(out, out2)), "kv_max_abs_diff": kv, "kv_max_abs": kvs,
       "next_position_equal": bool(torch.equal(ctx.next_position, ctx_ref.next_position)),
       "cost_gflops": {k: c.flops / 1e9 for k, c in cost.items()}, "cost_mbytes": {k: c.bytes / 1e6 for k, c in cost.items()},
       "roofline_ms_h100": flops.roofline_ms(cost["total"], flops.PEAKS["H100"])}
print(json.dumps(res, indent=1))
