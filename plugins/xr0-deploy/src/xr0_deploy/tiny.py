"""A tiny random flow policy with xr0's Policy interface (predict_chunk / context / velocity).

It stands in for a trained checkpoint in `xr0 deploy simulate` and `xr0 serve sim:tiny`, so the whole
deployment path runs on a CPU in seconds. Its actions mean nothing; its timing and interfaces are real.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from xr0.types import ACTION_DIM


class TinyFlowPolicy(nn.Module):
    """Per-token MLP velocity over [x_i, x_{i-1}, τ_i, state, position]: enough to inpaint and to be guided."""

    def __init__(self, chunk_len: int = 10, hidden: int = 64, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.chunk_len = chunk_len
        d_in = 2 * ACTION_DIM + 1 + ACTION_DIM + 2
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, ACTION_DIM))
        with torch.no_grad():  # all initialisation here, from the seed, independent of global RNG state
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 / max(p.shape[-1], 1)) ** 0.5)
        self.noise = torch.Generator().manual_seed(seed + 1)

    def context(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """No VLM here: the context is the state."""
        return {"state": batch["state"]}

    def velocity(self, ctx: dict[str, Tensor], batch: dict[str, Any], x_tau: Tensor, tau: Tensor,
                 prefix_len: int | None = None) -> Tensor:
        b, t, _ = x_tau.shape
        prev = torch.cat([x_tau[:, :1], x_tau[:, :-1]], dim=1)  # (B,T,A) the previous token's action
        pos = torch.arange(t, dtype=x_tau.dtype) / max(t - 1, 1) * torch.pi  # (T,)
        pos = torch.stack([pos.sin(), pos.cos()], -1)[None].expand(b, t, 2)  # (B,T,2)
        state = ctx["state"][:, None, :].expand(b, t, ctx["state"].shape[-1])  # (B,T,32)
        h = torch.cat([x_tau, prev, tau[..., None], state, pos], dim=-1)  # (B,T,d_in)
        v = torch.tanh(self.net(h)) - x_tau  # (B,T,A) contracts toward a state-dependent target
        if prefix_len:
            v = torch.cat([torch.zeros_like(v[:, :prefix_len]), v[:, prefix_len:]], dim=1)  # clean prefix stays
        return v

    @torch.no_grad()
    def predict_chunk(self, batch: dict[str, Any], prefix: Tensor | None = None, steps: int = 5,
                      noise: Tensor | None = None) -> Tensor:
        b = batch["state"].shape[0]
        x = torch.randn(b, self.chunk_len, ACTION_DIM, generator=self.noise) if noise is None else noise.clone()  # τ=0
        p = 0 if prefix is None else prefix.shape[1]
        if p:
            x[:, :p] = prefix
        ctx = self.context(batch)
        for n in range(steps):
            tau = torch.full((b, self.chunk_len), n / steps)  # (B,T)
            tau[:, :p] = 1.0  # clean prefix tokens carry τ=1 (docs/method.md §1.2)
            x = x + self.velocity(ctx, batch, x, tau, p) / steps
        return x

    def draw_noise(self, b: int) -> Tensor:
        return torch.randn(b, self.chunk_len, ACTION_DIM, generator=self.noise)
