"""Small building blocks of the DiT: timestep embedding, RoPE application, MLPs."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def timestep_embedding(tau: Tensor, dim: int = 256, max_period: float = 10000.0, scale: float = 1000.0) -> Tensor:
    """Sinusoid of τ·scale, cos half then sin half (the released TimestepEmbedder). tau (...,) → (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=tau.device, dtype=torch.float32) / half)  # (half,)
    args = (tau.float() * scale)[..., None] * freqs  # (..., half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (..., 2*half)
    return F.pad(emb, (0, dim % 2))  # (..., dim)


def rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) → (-x2, x1) over the last dim: the HF/Qwen RoPE convention."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B, H, N, hd); cos, sin (B, N, hd) from the VLM's rotary function (same convention as HF Qwen)."""
    return x * cos[:, None] + rotate_half(x) * sin[:, None]  # (B, H, N, hd)


class MLP2(nn.Sequential):
    """Linear → GELU(tanh) → Linear, no bias (the released state/action projectors and output layer)."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int):
        super().__init__(nn.Linear(d_in, d_hidden, bias=False), nn.GELU(approximate="tanh"),
                         nn.Linear(d_hidden, d_out, bias=False))


class SwiGLU(nn.Module):
    """down(silu(gate(x)) · up(x)), no bias."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(width, hidden, bias=False)
        self.up = nn.Linear(width, hidden, bias=False)
        self.down = nn.Linear(hidden, width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))  # (..., width)
