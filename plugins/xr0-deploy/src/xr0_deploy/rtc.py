"""Inference-time real-time chunking (Black et al. 2025, "Real-Time Execution of Action Chunking Flow
Policies"): guided inpainting of the previous chunk's overlap, for policies trained without a prefix.

Generic over a velocity function `v(x_tau (B,T,A), tau (B,T)) -> (B,T,A)` with xr0's convention τ=0 noise,
τ=1 data, so it wraps `Policy.velocity(ctx, batch, x, tau, prefix_len=0)` or any tiny test policy.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

Velocity = Callable[[Tensor, Tensor], Tensor]


def rtc_weights(chunk_len: int, frozen: int, overlap: int) -> Tensor:
    """Soft mask W (T,): 1 on the first `frozen` steps, exponential decay over the rest of the overlap, 0 after."""
    if not 0 <= frozen <= overlap <= chunk_len:
        raise ValueError(f"rtc weights need 0 <= frozen ({frozen}) <= overlap ({overlap}) <= chunk ({chunk_len})")
    i = torch.arange(chunk_len, dtype=torch.float32)
    c = (overlap - i) / (overlap - frozen + 1)
    w = c * (torch.exp(c) - 1) / (math.e - 1)
    w = torch.where(i < frozen, torch.ones_like(w), w)
    return torch.where(i >= overlap, torch.zeros_like(w), w)


def guidance_weight(tau: float, max_guidance: float) -> float:
    """min(β, (1−τ)/(τ·r²)) with r² = (1−τ)²/(τ²+(1−τ)²); at τ=0 the bound is infinite, so β."""
    if tau <= 0.0:
        return max_guidance
    r2 = (1 - tau) ** 2 / (tau**2 + (1 - tau) ** 2)
    return min(max_guidance, (1 - tau) / (tau * r2)) if r2 > 0 else 0.0


def rtc_sample(velocity: Velocity, noise: Tensor, target: Tensor, weights: Tensor, steps: int = 5,
               max_guidance: float = 5.0, dim_mask: Tensor | None = None) -> Tensor:
    """Euler-integrate from `noise` (B,T,A) at τ=0 to τ=1, pulling the denoised estimate toward `target`.

    target (B,T,A): the previous chunk's actions aligned to the new chunk (anything where weights are 0);
    weights (T,) from `rtc_weights`; dim_mask (A,) bool limits the guidance to valid action dims.
    Each step: x̂₁ = x + (1−τ)·v(x,τ); g = VJP of x̂₁ w.r.t. x applied to W·(target − x̂₁);
    x ← x + δ·(v + min(β, (1−τ)/(τ r²))·g).
    """
    if steps < 1:
        raise ValueError(f"rtc steps must be >= 1, got {steps}")
    b, t, _ = noise.shape
    w = weights.to(noise)[None, :, None]  # (1,T,1)
    if dim_mask is not None:
        w = w * dim_mask.to(noise)[None, None, :]  # (1,T,A)
    x, dt = noise, 1.0 / steps
    for n in range(steps):
        tau = n * dt
        tau_t = torch.full((b, t), tau, dtype=noise.dtype, device=noise.device)  # (B,T)
        beta = guidance_weight(tau, max_guidance)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            v = velocity(xg, tau_t)  # (B,T,A)
            x1 = xg + (1.0 - tau) * v  # (B,T,A) denoised estimate
            if beta > 0:
                (g,) = torch.autograd.grad(x1, xg, grad_outputs=(target - x1).detach() * w)
            else:
                g = torch.zeros_like(xg)
        x = (x + dt * (v.detach() + beta * g)).detach()
    return x
