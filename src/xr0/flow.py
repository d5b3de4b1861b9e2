"""Flow matching (docs/method.md §1.4; τ=1 is data): interpolation, target velocity, and the Euler sampler."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def _bcast(tau: Tensor, like: Tensor) -> Tensor:
    """τ (B,) or (B, T) → broadcastable against (B, T, D)."""
    return tau.reshape(tau.shape[0], -1, 1) if tau.dim() > 1 else tau[:, None, None]


def interpolate(actions: Tensor, noise: Tensor, tau: Tensor) -> Tensor:
    """ã_τ = τ·a + (1-τ)·ε. actions, noise (B, T, D); tau (B,) or (B, T)."""
    t = _bcast(tau, actions)
    return t * actions + (1 - t) * noise  # (B, T, D)


def target_velocity(actions: Tensor, noise: Tensor) -> Tensor:
    """u = a - ε, the velocity that carries ε to a along the straight path."""
    return actions - noise  # (B, T, D)


def prefix_positions(prefix_len: Tensor | int | None, batch: int, chunk: int, device) -> Tensor:
    """(B, T) bool, True on the clean committed prefix actions; prefix_len (B,) or one int for all."""
    if prefix_len is None:
        return torch.zeros(batch, chunk, dtype=torch.bool, device=device)
    if not torch.is_tensor(prefix_len):
        prefix_len = torch.full((batch,), int(prefix_len), dtype=torch.long, device=device)
    return torch.arange(chunk, device=device)[None, :] < prefix_len.to(device)[:, None]


def token_tau(tau: Tensor, is_prefix: Tensor, prefix_tau: str = "one") -> Tensor:
    """Per-token τ (B, T): noisy tokens carry τ; prefix tokens carry 1 (`one`) or the same τ (`shared`)."""
    if prefix_tau not in ("one", "shared"):
        raise ValueError(f"prefix_tau must be 'one' or 'shared', got {prefix_tau!r}")
    t = tau[:, None].expand_as(is_prefix) if tau.dim() == 1 else tau  # (B, T)
    # torch.where, not boolean indexing: no host sync, so the sampler can run inside a CUDA graph
    return torch.where(is_prefix, torch.ones_like(t), t) if prefix_tau == "one" else t.clone()


@torch.no_grad()
def euler_sample(velocity: Callable[[Tensor, Tensor], Tensor], noise: Tensor, steps: int = 5,
                 prefix: Tensor | None = None, prefix_len: Tensor | None = None, prefix_tau: str = "one") -> Tensor:
    """Integrate dx/dτ = v(x, τ) from τ=0 (noise) to τ=1 in `steps` Euler steps.

    prefix (B, T, D) holds the clean committed actions in its first prefix_len[b] rows; they are kept fixed
    (τ=1 under prefix_tau='one'). velocity(x (B,T,D), tau (B,T)) -> (B,T,D).
    """
    if steps < 1:
        raise ValueError(f"flow steps must be >= 1, got {steps}")
    b, t, _ = noise.shape
    is_prefix = prefix_positions(prefix_len, b, t, noise.device)  # (B, T)
    keep = is_prefix[..., None]  # (B, T, 1)
    x = noise if prefix is None else torch.where(keep, prefix, noise)  # (B, T, D)
    dt = 1.0 / steps
    for k in range(steps):
        tau = token_tau(torch.full((b,), k * dt, device=noise.device), is_prefix, prefix_tau)  # (B, T)
        v = velocity(x, tau)  # (B, T, D)
        x = x + dt * v
        if prefix is not None:
            x = torch.where(keep, prefix, x)
    return x


def step_mask(action_mask: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """The batch's action mask as (B, 1, A) — valid dims for every chunk step — or, when it is given per chunk step
    (B, T, A) (the released per-timestep statistics), as it is."""
    m = action_mask if action_mask.ndim == 3 else action_mask[:, None, :]
    return m if dtype is None else m.to(dtype)
