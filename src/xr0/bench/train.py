"""`xr0 bench train`: training throughput of stage 2 and stage 3 steps."""
from __future__ import annotations

from typing import Any

import torch

from xr0.bench import build_policy, device_name, make_batch, summary, timed


def bench_train(scale: str = "tiny", device: str = "cpu", stage: str = "post_train", batch: int = 2,
                iters: int = 10, warmup: int = 3) -> dict[str, Any]:
    """Samples/s of one optimiser step (stage 2 = frozen VLM, stage 3 = full model, async prefix)."""
    policy, s = build_policy(scale, device, torch.float32)
    policy.train()
    if stage == "dit_flow":
        for p in policy.backbone.parameters():
            p.requires_grad_(False)
        policy.backbone.frozen = True
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-5,
                            fused=device.startswith("cuda"))
    data = make_batch(s, batch, device, torch.float32)
    autocast = torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16,
                              enabled=device.startswith("cuda"))

    def step():
        with autocast:
            ctx = policy.context(data)
            plen = torch.randint(0, 7, (batch,), device=device) if stage == "post_train" else None
            loss = policy.flow_loss(data, ctx, prefix_len=plen)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    ms = summary(timed(step, iters, warmup, device))
    return {"kind": "train", "scale": scale, "stage": stage, "device": device_name(device), "batch": batch,
            "step_ms": ms, "samples_per_s": batch / (ms["p50_ms"] / 1e3)}
