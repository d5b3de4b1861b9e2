"""Inference-time RTC against the formulas of Black et al. 2025 ("Real-Time Execution of Action Chunking Flow
Policies"), each computed here by hand:

- soft mask W_i = 1 for i < d (frozen), c_i·(e^{c_i} − 1)/(e − 1) with c_i = (H−s−i)/(H−s−d+1) over the rest of the
  overlap (i < H−s), 0 after;
- guidance weight min(β, (1−τ)/(τ·r²)), r² = (1−τ)²/(τ² + (1−τ)²), which simplifies to (τ² + (1−τ)²)/(τ(1−τ));
- step x ← x + δ·(v + w_τ·gᵀ), g = (Y − x̂₁)ᵀ diag(W) ∂x̂₁/∂x, x̂₁ = x + (1−τ)·v.

On a linear velocity field v(x, τ) = α·x + c the Jacobian ∂x̂₁/∂x is (1 + (1−τ)α)·I, so the whole guided Euler
integration has a closed form that needs no autograd: the test integrates it in float64 numpy.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from xr0_deploy.rtc import guidance_weight, rtc_sample, rtc_weights


def soft_mask(h: int, d: int, overlap: int) -> np.ndarray:
    out = np.zeros(h)
    for i in range(h):
        if i < d:
            out[i] = 1.0
        elif i < overlap:
            c = (overlap - i) / (overlap - d + 1)
            out[i] = c * (math.exp(c) - 1) / (math.e - 1)
    return out


@pytest.mark.parametrize("h, d, overlap", [(10, 3, 7), (10, 0, 10), (6, 4, 4), (8, 1, 2), (5, 0, 0)])
def test_soft_mask_is_the_papers(h, d, overlap):
    w = rtc_weights(h, d, overlap)
    assert w.shape == (h,) and w.dtype == torch.float32
    np.testing.assert_allclose(w.numpy(), soft_mask(h, d, overlap), rtol=1e-6, atol=1e-7)
    assert torch.all(w[:d] == 1.0) and torch.all(w[overlap:] == 0.0)  # frozen steps are fully guided


def test_soft_mask_values_by_hand():
    # H=10, d=3, overlap 7: c = 4/5, 3/5, 2/5, 1/5 on steps 3..6
    w = rtc_weights(10, 3, 7).tolist()
    want = [1, 1, 1] + [c * (math.exp(c) - 1) / (math.e - 1) for c in (0.8, 0.6, 0.4, 0.2)] + [0, 0, 0]
    assert w == pytest.approx(want, rel=1e-6)
    assert w[3] == pytest.approx(0.57059, abs=1e-5) and w[6] == pytest.approx(0.02577, abs=1e-5)


@pytest.mark.parametrize("h, d, overlap", [(10, 4, 3), (10, -1, 3), (5, 2, 6)])
def test_soft_mask_refuses_inconsistent_lengths(h, d, overlap):
    with pytest.raises(ValueError, match=r"0 <= frozen .* <= overlap .* <= chunk"):
        rtc_weights(h, d, overlap)


@pytest.mark.parametrize("tau", [0.05, 0.2, 0.37, 0.5, 0.8, 0.95])
def test_guidance_weight_is_the_papers_clipped_at_beta(tau):
    r2 = (1 - tau) ** 2 / (tau**2 + (1 - tau) ** 2)
    unclipped = (1 - tau) / (tau * r2)
    assert unclipped == pytest.approx((tau**2 + (1 - tau) ** 2) / (tau * (1 - tau)))
    assert guidance_weight(tau, 1e9) == pytest.approx(unclipped, rel=1e-12)
    assert guidance_weight(tau, 3.0) == pytest.approx(min(3.0, unclipped), rel=1e-12)


def test_guidance_weight_at_the_ends():
    assert guidance_weight(0.0, 4.5) == 4.5  # the bound is infinite at pure noise: β
    assert guidance_weight(0.5, 10.0) == pytest.approx(2.0)  # (0.25 + 0.25) / 0.25
    assert guidance_weight(0.2, 10.0) == pytest.approx(4.25)  # (0.04 + 0.64) / 0.16
    assert guidance_weight(0.5, 0.0) == 0.0  # β = 0 turns guidance off
    assert guidance_weight(1.0, 5.0) == 0.0  # at the data end there is nothing left to pull


def closed_form(noise, target, weights, alpha, c, steps, beta, dim_mask=None):
    """Guided Euler on v = α·x + c, every term written out (float64)."""
    x = noise.astype(np.float64).copy()
    w = weights[None, :, None] * (np.ones(noise.shape[-1]) if dim_mask is None else dim_mask)[None, None, :]
    dt = 1.0 / steps
    for n in range(steps):
        tau = n * dt
        bound = math.inf if tau == 0 else (tau**2 + (1 - tau) ** 2) / (tau * (1 - tau))
        w_tau = min(beta, bound)
        v = alpha * x + c
        x1 = x + (1 - tau) * v
        g = (1 + (1 - tau) * alpha) * w * (target - x1)  # VJP of x̂₁ = (1 + (1−τ)α)·x + (1−τ)c
        x = x + dt * (v + w_tau * g)
    return x


@pytest.mark.parametrize("steps, beta", [(5, 5.0), (4, 1.5), (1, 0.8), (10, 0.0)])
def test_guided_sampling_equals_the_closed_form_on_a_linear_field(steps, beta):
    rng = np.random.default_rng(3)
    b, h, a = 2, 8, 3
    noise, target = rng.normal(size=(b, h, a)), rng.normal(0.4, 0.7, (b, h, a))
    c = rng.normal(0.2, 0.5, (h, a))
    alpha = -0.7
    weights = soft_mask(h, 2, 6)
    field = lambda x, tau: alpha * x + torch.from_numpy(c).to(x)
    got = rtc_sample(field, torch.from_numpy(noise), torch.from_numpy(target), torch.from_numpy(weights), steps, beta)
    want = closed_form(noise, target, weights, alpha, c, steps, beta)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-10)
    free = closed_form(noise, target, np.zeros(h), alpha, c, steps, beta)
    if beta > 0:  # guidance moved the guided steps, and only those
        assert np.abs(want[:, :6] - free[:, :6]).min() > 1e-6
        np.testing.assert_allclose(want[:, 6:], free[:, 6:], rtol=1e-12, atol=1e-12)
        assert np.abs(want[:, :2] - target[:, :2]).mean() < np.abs(free[:, :2] - target[:, :2]).mean()


def test_defaults_are_five_steps_and_beta_five():
    """The paper's setting (and xr0's flow steps): 5 Euler steps, β = 5."""
    rng = np.random.default_rng(5)
    noise, target, c = rng.normal(size=(1, 5, 2)), rng.normal(size=(1, 5, 2)), rng.normal(size=(5, 2))
    weights = soft_mask(5, 1, 4)
    field = lambda x, tau: 0.3 * x + torch.from_numpy(c).to(x)
    got = rtc_sample(field, torch.from_numpy(noise), torch.from_numpy(target), torch.from_numpy(weights))
    np.testing.assert_allclose(got.numpy(), closed_form(noise, target, weights, 0.3, c, 5, 5.0), rtol=1e-10)


def test_guidance_stays_on_the_valid_action_dims():
    rng = np.random.default_rng(4)
    noise, target = rng.normal(size=(1, 6, 4)), rng.normal(size=(1, 6, 4))
    c = rng.normal(size=(6, 4))
    dims = np.array([1.0, 0.0, 1.0, 0.0])
    weights = soft_mask(6, 2, 5)
    field = lambda x, tau: -0.5 * x + torch.from_numpy(c).to(x)
    got = rtc_sample(field, torch.from_numpy(noise), torch.from_numpy(target), torch.from_numpy(weights), 5, 5.0,
                     dim_mask=torch.tensor([True, False, True, False]))
    want = closed_form(noise, target, weights, -0.5, c, 5, 5.0, dim_mask=dims)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-10)
    free = closed_form(noise, target, np.zeros(6), -0.5, c, 5, 5.0)
    np.testing.assert_allclose(want[..., [1, 3]], free[..., [1, 3]], rtol=1e-12)  # padded dims: unguided


def test_steps_must_be_positive():
    with pytest.raises(ValueError, match="rtc steps must be >= 1"):
        rtc_sample(lambda x, tau: x, torch.zeros(1, 2, 1), torch.zeros(1, 2, 1), torch.ones(2), steps=0)
