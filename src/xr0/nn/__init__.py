"""Small building blocks of the DiT: timestep embedding, RoPE application, MLPs."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def timestep_embedding(tau: Tensor, dim: int = 256, max_period: float = 10000.0, scale: float = 1000.0) -> Tensor:
    """Sinusoid of τ·scale: cos half then sin half (as the released code). tau (...,) → (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=tau.device, dtype=torch.float32) / half)
    args = (tau.float() * scale)[..., None] * freqs  # (..., half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (..., dim)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B, H, N, hd); cos, sin (B, N, hd) from the VLM's rotary function (same convention as HF Qwen)."""
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


class MLP2(nn.Sequential):
    """Linear → GELU(tanh) → Linear, no bias (the released state/action projectors and output layer)."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int):
        super().__init__(nn.Linear(d_in, d_hidden, bias=False), nn.GELU(approximate="tanh"),
                         nn.Linear(d_hidden, d_out, bias=False))


class SwiGLU(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(width, hidden, bias=False)
        self.up_proj = nn.Linear(width, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))
