"""τ samplers and the Δt_c prefix-length sampler (docs/method.md §1.4, §2.3)."""
import math

import pytest
import torch

from xr0.registry import SAMPLERS


@pytest.mark.parametrize("name, kwargs, mean", [
    ("beta", {}, 0.999 * (1 - 1.5 / 2.5)),
    ("uniform", {}, 0.5),
    ("logit_normal", {}, 0.5),  # symmetric around 0 → mean 0.5
])
def test_tau_samplers_have_the_analytic_mean(name, kwargs, mean):
    torch.manual_seed(0)
    tau = SAMPLERS.build(name, **kwargs)(200_000)
    assert tau.shape == (200_000,) and (tau >= 0).all() and (tau <= 1).all()
    assert abs(tau.mean().item() - mean) < 3e-3


def test_beta_sampler_puts_more_weight_on_noisy_tau():
    torch.manual_seed(0)
    tau = SAMPLERS.build("beta")(100_000)
    assert (tau < 0.5).float().mean() > 0.6  # P(τ<0.5) = 1 - 0.5^1.5 ≈ 0.646
    assert tau.max() <= 0.999


def test_prefix_length_sampler():
    torch.manual_seed(0)
    lens = SAMPLERS.build("prefix")(100_000)
    assert lens.dtype == torch.long
    assert abs((lens == 0).float().mean().item() - 0.5) < 0.01
    nz = lens[lens > 0]
    assert nz.min() == 1 and nz.max() == 6
    assert abs(nz.float().mean().item() - 3.5) < 0.03
    assert math.isclose(SAMPLERS.build("prefix", p_zero=1.0)(10).sum().item(), 0)


def test_samplers_refuse_bad_settings_and_return_batches_on_the_device():
    with pytest.raises(ValueError, match="beta sampler"):
        SAMPLERS.build("beta", alpha=0.0)
    with pytest.raises(ValueError, match="prefix sampler"):
        SAMPLERS.build("prefix", min_len=3, max_len=2)
    for name in ("beta", "uniform", "logit_normal", "prefix"):
        out = SAMPLERS.build(name)(5, device="cpu")
        assert out.shape == (5,) and out.device.type == "cpu"
    lens = SAMPLERS.build("prefix", p_zero=0.0, min_len=2, max_len=3)(1000)
    assert set(lens.tolist()) == {2, 3}
