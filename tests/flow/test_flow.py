"""Flow matching (docs/method.md §1.4): interpolation, target velocity, per-token τ, and the Euler sampler."""
import pytest
import torch

from xr0.flow import euler_sample, interpolate, target_velocity, token_tau


def test_interpolation_endpoints_and_target():
    a, eps = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    assert torch.allclose(interpolate(a, eps, torch.ones(2)), a)
    assert torch.allclose(interpolate(a, eps, torch.zeros(2)), eps)
    tau = torch.rand(2, 5)
    x = interpolate(a, eps, tau)
    # moving along the target velocity for the remaining time lands on the data
    assert torch.allclose(x + (1 - tau)[..., None] * target_velocity(a, eps), a, atol=1e-6)


def test_euler_integrates_a_linear_field_exactly():
    a, eps = torch.randn(3, 6, 4), torch.randn(3, 6, 4)
    calls = []

    def v(x, tau):
        calls.append(tau.clone())
        return target_velocity(a, eps)  # constant field: straight path from eps to a

    out = euler_sample(v, eps, steps=5)
    assert torch.allclose(out, a, atol=1e-5)
    assert len(calls) == 5 and torch.allclose(calls[2], torch.full((3, 6), 0.4))


def test_euler_on_the_flow_ode_of_a_point_mass():
    target = torch.randn(1, 4, 2)
    out = euler_sample(lambda x, tau: (target - x) / (1 - tau[..., None]).clamp_min(1e-6), torch.randn(1, 4, 2), steps=7)
    assert torch.allclose(out, target, atol=1e-5)


def test_prefix_is_returned_unchanged_and_carries_tau_one():
    b, t = 2, 6
    prefix = torch.randn(b, t, 3)
    plen = torch.tensor([3, 0])
    seen = []

    def v(x, tau):
        seen.append((x.clone(), tau.clone()))
        return torch.ones_like(x)

    out = euler_sample(v, torch.zeros(b, t, 3), steps=4, prefix=prefix, prefix_len=plen)
    assert torch.equal(out[0, :3], prefix[0, :3])
    assert torch.allclose(out[0, 3:], torch.ones(3, 3)) and torch.allclose(out[1], torch.ones(t, 3))
    for x, tau in seen:
        assert torch.equal(x[0, :3], prefix[0, :3]) and (tau[0, :3] == 1).all()
    shared = token_tau(torch.tensor([0.3, 0.3]), torch.tensor([[True, False], [False, False]]), "shared")
    assert torch.allclose(shared, torch.full((2, 2), 0.3))
    with pytest.raises(ValueError, match="prefix_tau"):
        token_tau(torch.zeros(1), torch.zeros(1, 1, dtype=torch.bool), "half")


def test_prefix_length_may_be_one_int_for_the_batch():
    from xr0.flow import prefix_positions

    assert torch.equal(prefix_positions(2, 3, 4, "cpu"), prefix_positions(torch.tensor([2, 2, 2]), 3, 4, "cpu"))
    assert not prefix_positions(0, 2, 4, "cpu").any()


def test_default_is_five_steps_and_one_step_is_allowed():
    """Five Euler steps of 0.2 by default (docs/method.md §1.4); one step is the coarsest valid integration."""
    a, eps = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    taus = []
    out = euler_sample(lambda x, tau: taus.append(tau[0, 0].item()) or target_velocity(a, eps), eps)
    assert taus == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8]) and torch.allclose(out, a, atol=1e-5)
    one = euler_sample(lambda x, tau: target_velocity(a, eps), eps, steps=1)  # x + 1·(a − ε) = a
    assert torch.allclose(one, a, atol=1e-6)
    with pytest.raises(ValueError, match="flow steps must be >= 1"):
        euler_sample(lambda x, tau: x, eps, steps=0)


def test_step_mask_per_sample_or_per_chunk_step():
    from xr0.flow import step_mask

    per_sample = torch.tensor([[True, False, True], [False, True, True]])  # (B, A)
    m = step_mask(per_sample)
    assert m.shape == (2, 1, 3) and m.dtype == torch.bool and torch.equal(m[:, 0], per_sample)
    per_step = torch.rand(2, 4, 3) > 0.5  # (B, T, A): the released per-timestep statistics
    assert step_mask(per_step) is per_step
    f = step_mask(per_sample, torch.float64)
    assert f.dtype == torch.float64 and f.tolist() == [[[1.0, 0.0, 1.0]], [[0.0, 1.0, 1.0]]]
