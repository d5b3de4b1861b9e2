"""τ samplers and the Δt_c prefix-length sampler (docs/method.md §1.4, §2.3). Each is called as
`sampler(batch_size, device=...)` and returns a (B,) tensor."""
from __future__ import annotations

import torch
from torch import Tensor

from xr0.registry import SAMPLERS


@SAMPLERS.register("beta")
class BetaTau:
    """τ = scale·(1-u), u ~ Beta(alpha, beta): more weight on noisy τ (code: 1.5, 1.0, 0.999)."""

    def __init__(self, alpha: float = 1.5, beta: float = 1.0, scale: float = 0.999):
        if alpha <= 0 or beta <= 0 or not 0 < scale <= 1:
            raise ValueError(f"beta sampler needs alpha, beta > 0 and 0 < scale <= 1 (got {alpha}, {beta}, {scale})")
        self.alpha, self.beta, self.scale = alpha, beta, scale

    def mean(self) -> float:
        return self.scale * (1 - self.alpha / (self.alpha + self.beta))

    def __call__(self, batch_size: int, device=None) -> Tensor:
        dist = torch.distributions.Beta(torch.tensor(self.alpha, device=device), torch.tensor(self.beta, device=device))
        return self.scale * (1 - dist.sample((batch_size,)))  # (B,)


@SAMPLERS.register("uniform")
class UniformTau:
    """τ ~ U(low, high)."""

    def __init__(self, low: float = 0.0, high: float = 1.0):
        self.low, self.high = low, high

    def mean(self) -> float:
        return (self.low + self.high) / 2

    def __call__(self, batch_size: int, device=None) -> Tensor:
        return self.low + (self.high - self.low) * torch.rand(batch_size, device=device)


@SAMPLERS.register("logit_normal")
class LogitNormalTau:
    """τ = sigmoid(n), n ~ N(mean, std) (as in SD3)."""

    def __init__(self, mean: float = 0.0, std: float = 1.0):
        self.mu, self.std = mean, std

    def __call__(self, batch_size: int, device=None) -> Tensor:
        return torch.sigmoid(self.mu + self.std * torch.randn(batch_size, device=device))


@SAMPLERS.register("prefix")
class PrefixLength:
    """Δt_c: 0 with probability p_zero, else uniform on {min_len..max_len} (code: 0.5, 1..6)."""

    def __init__(self, p_zero: float = 0.5, min_len: int = 1, max_len: int = 6):
        if not 0 <= p_zero <= 1 or not 0 <= min_len <= max_len:
            raise ValueError(f"prefix sampler needs 0<=p_zero<=1 and 0<=min_len<=max_len (got {p_zero}, {min_len}, {max_len})")
        self.p_zero, self.min_len, self.max_len = p_zero, min_len, max_len

    def __call__(self, batch_size: int, device=None) -> Tensor:
        lens = torch.randint(self.min_len, self.max_len + 1, (batch_size,), device=device)
        zero = torch.rand(batch_size, device=device) < self.p_zero
        return torch.where(zero, torch.zeros_like(lens), lens)  # (B,) long
