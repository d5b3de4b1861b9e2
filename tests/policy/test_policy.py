"""Policy: predict_chunk (VLM once, prefix fixed), flow_loss (masks, prefix, repeat, re-weighting), gradients.

A contract-shaped stand-in backbone keeps these fast; test_policy_qwen3vl.py repeats the key checks on the real
tiny Qwen3-VL."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from xr0 import flow
from xr0.heads.dit import DiT
from xr0.masks import Causal, Lambda
from xr0.policy import REWEIGHT_CLAMP, Policy, reweight_mode, reweight_weights
from xr0.samplers import BetaTau
from xr0.types import VLMContext

HD, B, T = 8, 2, 6


class StandInBackbone(nn.Module):
    """Mean image colour + character embedding → per-layer K/V; counts VLM forwards."""

    def __init__(self, layers=2, kv_heads=2, hidden=16, frozen=False):
        super().__init__()
        self.hidden_size, self.num_layers, self.num_kv_heads, self.head_dim = hidden, layers, kv_heads, HD
        self.frozen, self.calls = frozen, 0
        self.embed = nn.Embedding(128, hidden)
        self.img = nn.Linear(3, hidden)
        self.kv = nn.ModuleList(nn.Linear(hidden, 2 * kv_heads * HD) for _ in range(layers))
        if frozen:
            self.requires_grad_(False)

    def prepare(self, images, image_mask, texts, answers=None):
        ids = torch.tensor([[ord(c) % 128 for c in t[:4].ljust(4)] for t in texts])
        return {"ids": ids, "pix": images.mean(dim=(1, 3, 4))}

    def rope(self, pos):
        inv = 1.0 / (1e4 ** (torch.arange(0, HD, 2).float() / HD))
        emb = torch.cat([pos.float()[..., None] * inv] * 2, -1)
        return emb.cos(), emb.sin()

    def context(self, inputs, num_layers, extra_embeds=None):
        self.calls += 1
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            x = self.embed(inputs["ids"]) + self.img(inputs["pix"])[:, None]  # (B,S,H)
            b, s, _ = x.shape
            kvs = [kv(x).view(b, s, 2, self.num_kv_heads, HD).permute(2, 0, 3, 1, 4) for kv in self.kv]
        kvs = kvs[-num_layers:]
        mask = torch.ones(b, s, dtype=torch.bool)
        return VLMContext(keys=[k for k, _ in kvs], values=[v for _, v in kvs], attention_mask=mask,
                          next_position=mask.sum(1), rope=self.rope, hidden=x)


class FixedTau:
    def __init__(self, value):
        self.value = value

    def __call__(self, batch_size, device=None):
        return torch.full((batch_size,), self.value, device=device)


def make_policy(mask=None, tau_sampler=None, frozen=False, prefix_tau="one", rope_offset=10, seed=0):
    torch.manual_seed(seed)
    head = DiT(width=16, depth=2, num_heads=2, head_dim=HD, chunk=T, rope_offset=rope_offset, prefix_tau=prefix_tau)
    with torch.no_grad():  # away from adaLN-zero so outputs depend on everything
        for p in head.parameters():
            p.normal_(0, 0.2)
    return Policy(StandInBackbone(frozen=frozen), head, mask or Causal(), tau_sampler or BetaTau()).eval()


def make_batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    action_mask = torch.zeros(B, 32, dtype=torch.bool)
    action_mask[:, :7] = True
    chunk_mask = torch.ones(B, T, dtype=torch.bool)
    chunk_mask[1, -2:] = False  # sample 1's episode ends early
    return {"images": torch.rand(B, 2, 3, 8, 8, generator=g), "image_mask": torch.ones(B, 2, dtype=torch.bool),
            "instruction": ["pick", "place"], "state": torch.randn(B, 32, generator=g),
            "actions": torch.randn(B, T, 32, generator=g) * action_mask[:, None], "action_mask": action_mask,
            "chunk_mask": chunk_mask}


def test_predict_chunk_runs_the_vlm_once_for_five_steps():
    policy, batch = make_policy(), make_batch()
    dit_calls, prepares = [], []
    step, prepare = policy.head.step, policy.head.prepare
    policy.head.step = lambda *a: dit_calls.append(1) or step(*a)
    policy.head.prepare = lambda *a: prepares.append(1) or prepare(*a)
    out = policy.predict_chunk(batch, steps=5)
    assert out.shape == (B, T, 32)
    # the VLM runs once and the DiT's K/V, RoPE and mask are prepared once for the five steps
    assert policy.backbone.calls == 1 and len(dit_calls) == 5 and len(prepares) == 1
    assert (out[:, :, 7:] == 0).all() and out[:, :, :7].abs().sum() > 0  # invalid dims are zero


def test_predict_chunk_keeps_the_prefix_and_conditions_on_it():
    policy, batch = make_policy(mask=Lambda()), make_batch()
    prefix = torch.randn(B, 3, 32) * batch["action_mask"][:, None]
    torch.manual_seed(5)
    out = policy.predict_chunk(batch, prefix=prefix)
    assert torch.equal(out[:, :3], prefix)
    torch.manual_seed(5)
    other = policy.predict_chunk(batch, prefix=prefix + 1.0 * batch["action_mask"][:, None])
    assert not torch.allclose(other[:, 3:], out[:, 3:], atol=1e-5)  # the rest depends on the prefix
    with pytest.raises(ValueError, match="longer than the chunk"):
        policy.predict_chunk(batch, prefix=torch.zeros(B, T + 1, 32))


def _expected_loss(policy, batch, ctx, tau_value, prefix_len, seed, weight=None):
    """The flow-matching loss written out from docs/method.md §1.4 and §2.3, replaying the policy's random draws."""
    a = batch["actions"]
    torch.manual_seed(seed)
    eps = torch.randn_like(a)
    is_prefix = torch.arange(T)[None] < (prefix_len if prefix_len is not None else torch.zeros(B))[:, None]
    tau = torch.where(is_prefix, 1.0, tau_value)  # prefix_tau: one
    x = torch.where(is_prefix[..., None], a, tau[..., None] * a + (1 - tau[..., None]) * eps)
    u = torch.where(is_prefix[..., None], 0.0, a - eps)
    v = policy.velocity(ctx, batch, x, tau, prefix_len)
    valid = batch["action_mask"][:, None, :] & (batch["chunk_mask"] & ~is_prefix)[..., None]
    w = torch.ones_like(a) if weight is None else weight
    return ((w * (v - u) ** 2)[valid]).mean()


@pytest.mark.parametrize("prefix_len", [None, torch.tensor([2, 0])])
def test_flow_loss_is_mse_over_valid_non_prefix_elements(prefix_len):
    policy, batch = make_policy(tau_sampler=FixedTau(0.3)), make_batch()
    ctx = policy.context(batch)
    torch.manual_seed(7)
    out = policy.flow_loss(batch, ctx, prefix_len=prefix_len)
    exp = _expected_loss(policy, batch, ctx, 0.3, prefix_len, seed=7)
    assert torch.allclose(out["loss"], exp, atol=1e-6) and torch.allclose(out["mse"], exp, atol=1e-6)


def test_flow_loss_ignores_padded_dims_and_steps_past_the_episode_end():
    policy, batch = make_policy(tau_sampler=FixedTau(0.5)), make_batch()
    ctx = policy.context(batch)
    torch.manual_seed(3)
    ref = policy.flow_loss(batch, ctx)["loss"]
    junk = {**batch, "actions": batch["actions"].clone()}
    junk["actions"][:, :, 10:] = 50.0  # padded dims
    junk["actions"][1, -2:] = 50.0  # past sample 1's end (causal mask: no earlier token sees them)
    torch.manual_seed(3)
    assert torch.allclose(policy.flow_loss(junk, ctx)["loss"], ref, atol=1e-6)


def test_repeat_draws_share_one_vlm_context():
    policy, batch = make_policy(), make_batch()
    calls = []
    policy.head.register_forward_hook(lambda *a: calls.append(1))
    ctx = policy.context(batch)
    torch.manual_seed(0)
    out = policy.flow_loss(batch, ctx, repeat=4)
    assert policy.backbone.calls == 1 and len(calls) == 4
    torch.manual_seed(0)
    singles = []
    for _ in range(4):
        singles.append(policy.flow_loss(batch, ctx)["loss"])
    assert torch.allclose(out["loss"], torch.stack(singles).mean(), atol=1e-6)


def test_reweighting_follows_the_generation_error_and_only_with_a_prefix():
    policy, batch = make_policy(tau_sampler=FixedTau(0.4), mask=Lambda()), make_batch()
    ctx = policy.context(batch)
    plen = torch.tensor([3, 0])
    torch.manual_seed(11)
    out = policy.flow_loss(batch, ctx, prefix_len=plen, reweight=True)
    # replay: the 5-step generation with the same prefix draws its noise first, then the loss draws ε
    a = batch["actions"]
    torch.manual_seed(11)
    noise = torch.randn(B, T, 32)
    a_hat = policy.sample(ctx, batch, prefix=a, prefix_len=plen, steps=5, noise=noise)
    is_prefix = torch.arange(T)[None] < plen[:, None]
    valid = batch["action_mask"][:, None, :] & (batch["chunk_mask"] & ~is_prefix)[..., None]
    err = (a_hat - a).abs()
    w = torch.ones_like(a)
    w[0] = (err[0] / err[0][valid[0]].mean()).clamp(0.5, 5.0)  # sample 1 has no prefix: weight 1
    eps = torch.randn_like(a)  # the same random stream continues
    tau = torch.where(is_prefix, 1.0, 0.4)
    x = torch.where(is_prefix[..., None], a, tau[..., None] * a + (1 - tau[..., None]) * eps)
    u = torch.where(is_prefix[..., None], 0.0, a - eps)
    v = policy.velocity(ctx, batch, x, tau, plen)
    exp = ((w * (v - u) ** 2)[valid]).mean()
    assert torch.allclose(out["loss"], exp, atol=1e-6)
    assert w[0][valid[0]].min() >= 0.5 and w[0][valid[0]].max() <= 5.0 and not torch.allclose(w[0], torch.ones(T, 32))
    # no sample with a prefix: re-weighting changes nothing
    torch.manual_seed(2)
    plain = policy.flow_loss(batch, ctx, prefix_len=torch.zeros(B, dtype=torch.long))["loss"]
    torch.manual_seed(2)
    rw = policy.flow_loss(batch, ctx, prefix_len=torch.zeros(B, dtype=torch.long), reweight=True)["loss"]
    assert torch.allclose(plain, rw)


def _errors(scales, t=T, a=7, seed=3):
    """|â − a| per sample: positive noise in [0.5, 1.5) times each sample's scale (not a 0/1 pattern)."""
    g = torch.Generator().manual_seed(seed)
    err = 0.5 + torch.rand(len(scales), t, a, generator=g)  # (B,T,A)
    return err * torch.tensor(scales, dtype=torch.float32)[:, None, None]


def test_batch_reweighting_gives_the_sample_with_larger_errors_the_larger_mean_weight():
    err = _errors([0.01, 1.0])  # sample 1 deviates 100x more
    valid, has_prefix = torch.ones_like(err, dtype=torch.bool), torch.tensor([True, True])
    w = reweight_weights(err, valid, has_prefix, "batch")
    small, large = w[0].mean().item(), w[1].mean().item()
    assert large > 1.5 and small < 0.6 and large > 3 * small  # the paper: larger deviations weigh more
    # the per-sample option normalises each sample by itself: both end with the same mean weight
    ws = reweight_weights(err, valid, has_prefix, "sample")
    assert ws[0].mean().item() == pytest.approx(ws[1].mean().item(), rel=0.05)
    assert ws[0].mean().item() == pytest.approx(1.0, abs=0.05)
    # the paper's form is the default meaning of `reweight: true`; false/null is off
    assert (reweight_mode(True), reweight_mode(False), reweight_mode(None), reweight_mode("sample")) == \
        ("batch", "off", "off", "sample")
    with pytest.raises(ValueError, match="stage.reweight must be one of off, batch, sample"):
        reweight_mode("per_sample")


def test_reweighting_clamps_the_ratio_to_half_and_five():
    assert REWEIGHT_CLAMP == (0.5, 5.0)
    err = _errors([0.1, 0.1], seed=5)
    err[1, 2, 3] = 40.0  # one element 20x the batch mean (≈ 0.1 + 40/84 per element): ratio ≈ 70
    valid, has_prefix = torch.ones_like(err, dtype=torch.bool), torch.tensor([True, True])
    w = reweight_weights(err, valid, has_prefix, "batch")
    ratio = err / err.mean()
    assert ratio[1, 2, 3] > 50  # far past the upper bound ...
    assert w[1, 2, 3].item() == 5.0  # ... so it is clamped to 5
    low = ratio < 0.5
    assert low.any() and torch.all(w[low] == 0.5)  # the small ones are lifted to 0.5
    mid = (ratio > 0.5) & (ratio < 5.0)
    assert torch.allclose(w[mid], ratio[mid], rtol=1e-5)  # in between: the ratio itself


def test_samples_without_a_prefix_keep_weight_one_and_stay_out_of_the_mean():
    err = _errors([0.2, 1.0, 3.0], seed=7)
    valid = torch.ones_like(err, dtype=torch.bool)
    valid[0, :2] = False  # sample 0's first two steps are its prefix (not in the loss)
    has_prefix = torch.tensor([True, False, True])
    w = reweight_weights(err, valid, has_prefix, "batch")
    assert torch.all(w[1] == 1.0)  # generated from scratch: not re-weighted
    err_big = err.clone()
    err_big[1] *= 1000  # the un-prefixed sample's error does not move the others' weights
    assert torch.equal(reweight_weights(err_big, valid, has_prefix, "batch"), w)
    # the mean runs over valid elements only: a huge error on a prefix position changes nothing
    err_prefix = err.clone()
    err_prefix[0, :2] = 1e6
    assert torch.equal(reweight_weights(err_prefix, valid, has_prefix, "batch"), w)
    expected = (err[2] / torch.cat([err[0][valid[0]], err[2].reshape(-1)]).mean()).clamp(0.5, 5.0)
    assert torch.allclose(w[2], expected)


def test_flow_loss_reweights_over_the_whole_batch():
    """Both samples carry a prefix: the weights divide by the mean error over both samples' valid elements."""
    policy, batch = make_policy(tau_sampler=FixedTau(0.3), mask=Lambda()), make_batch(seed=4)
    ctx = policy.context(batch)
    plen = torch.tensor([3, 1])
    a = batch["actions"]
    bias = torch.tensor([0.02, 2.0])[:, None, None] * torch.linspace(0.5, 1.5, 32)  # sample 1 deviates 100x more
    policy.sample = lambda ctx, batch, prefix=None, prefix_len=None, steps=None, noise=None: a + bias
    torch.manual_seed(5)
    out = policy.flow_loss(batch, ctx, prefix_len=plen, reweight=True)
    is_prefix = torch.arange(T)[None] < plen[:, None]
    valid = batch["action_mask"][:, None, :] & (batch["chunk_mask"] & ~is_prefix)[..., None]
    err = bias.expand_as(a)
    w = (err / err[valid].mean()).clamp(0.5, 5.0)  # one mean for the batch
    torch.manual_seed(5)
    eps = torch.randn_like(a)
    tau = torch.where(is_prefix, 1.0, 0.3)
    x = torch.where(is_prefix[..., None], a, tau[..., None] * a + (1 - tau[..., None]) * eps)
    u = torch.where(is_prefix[..., None], 0.0, a - eps)
    v = policy.velocity(ctx, batch, x, tau, plen)
    assert torch.allclose(out["loss"], ((w * (v - u) ** 2)[valid]).mean(), atol=1e-6)
    assert w[1][valid[1]].mean() > 3 * w[0][valid[0]].mean()


def test_shared_prefix_tau_gives_prefix_tokens_the_noisy_tau():
    seen = []
    policy, batch = make_policy(prefix_tau="shared", tau_sampler=FixedTau(0.2)), make_batch()
    policy.head.register_forward_hook(lambda m, args, kw, out: seen.append(kw.get("tau", args[3])), with_kwargs=True)
    policy.flow_loss(batch, policy.context(batch), prefix_len=torch.tensor([2, 4]))
    assert torch.allclose(seen[0], torch.full((B, T), 0.2))
    seen.clear()
    one = make_policy(prefix_tau="one", tau_sampler=FixedTau(0.2))
    one.head.register_forward_hook(lambda m, args, kw, out: seen.append(kw.get("tau", args[3])), with_kwargs=True)
    one.flow_loss(batch, one.context(batch), prefix_len=torch.tensor([2, 4]))
    assert seen[0][0].tolist() == pytest.approx([1, 1, 0.2, 0.2, 0.2, 0.2])


@pytest.mark.parametrize("frozen", [True, False])
def test_gradients_reach_the_vlm_only_when_unfrozen(frozen):
    policy, batch = make_policy(frozen=frozen), make_batch()
    policy.train()
    policy.flow_loss(batch, policy.context(batch))["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.head.parameters())
    vlm_grads = [p.grad is not None and p.grad.abs().sum() > 0 for p in policy.backbone.parameters()]
    assert all(vlm_grads) if not frozen else not any(vlm_grads)
    n_head = sum(p.numel() for p in policy.head.parameters())
    assert sum(p.numel() for p in policy.trainable_parameters()) == (
        n_head if frozen else n_head + sum(p.numel() for p in policy.backbone.parameters()))


def test_head_that_cannot_read_the_vlm_is_refused_at_construction():
    head = DiT(width=16, depth=2, num_heads=2, head_dim=16, chunk=T)
    with pytest.raises(ValueError, match="head_dim=16 must equal the VLM's head_dim=8"):
        Policy(StandInBackbone(), head, Causal(), BetaTau())
    with pytest.raises(ValueError, match="exceeds the VLM's 2 layers"):
        Policy(StandInBackbone(), DiT(width=16, depth=3, num_heads=2, head_dim=HD), Causal(), BetaTau())


def test_a_head_dim_left_null_follows_the_backbone():
    """One source for the fact: the DiT's head_dim is the VLM's when the recipe leaves it out."""
    policy = Policy(StandInBackbone(), DiT(width=16, depth=2, num_heads=2, chunk=T), Causal(), BetaTau())
    assert policy.head.head_dim == HD and len(policy.head.blocks) == 2
    assert policy.predict_chunk(make_batch(), steps=2).shape == (B, T, 32)


def test_prefix_positions_helper_matches_the_lengths():
    got = flow.prefix_positions(torch.tensor([0, 2]), 2, 4, "cpu")
    assert got.tolist() == [[False] * 4, [True, True, False, False]]


# ---------------------------------------------------------------- inference is the training velocity, edges
def test_the_sampler_integrates_the_training_velocity():
    """predict_chunk prepares K/V, RoPE and mask once for all steps; it must integrate exactly the velocity the loss
    trains (same noisy/clean flags for the RoPE offset, same mask, no training-time dropout)."""
    policy = make_policy(mask=Causal(prefix_dropout=True, prefix_dropout_p=1.0), rope_offset=10)
    batch = make_batch()
    ctx = policy.context(batch)
    plen = torch.tensor([3, 4])  # old prefix columns (all but the last 2) are what training-time dropout hides
    prefix = torch.randn(B, T, 32) * batch["action_mask"][:, None]
    noise = torch.randn(B, T, 32)
    fast = policy.sample(ctx, batch, prefix, plen, steps=4, noise=noise)
    step = lambda x, tau: policy.velocity(ctx, batch, x, tau, plen)  # inference: training=False
    ref = flow.euler_sample(step, noise, 4, prefix, plen) * batch["action_mask"][:, None]
    assert torch.allclose(fast, ref, atol=1e-5)
    x, tau = torch.randn(B, T, 32), torch.rand(B, T)
    dropped = policy.velocity(ctx, batch, x, tau, plen, training=True)  # the dropout hides old prefix columns
    assert not torch.allclose(dropped, policy.velocity(ctx, batch, x, tau, plen), atol=1e-5)


def test_velocity_offsets_the_noisy_tokens_only():
    policy, batch = make_policy(rope_offset=10), make_batch()
    ctx = policy.context(batch)
    plen = torch.tensor([2, 4])
    x, tau = torch.randn(B, T, 32), torch.rand(B, T)
    noisy = torch.arange(T)[None] >= plen[:, None]  # by hand
    mask = policy.mask(T, plen, special=2)
    want = policy.head(ctx, batch["state"], x * batch["action_mask"][:, None], tau, mask, noisy=noisy)
    assert torch.allclose(policy.velocity(ctx, batch, x, tau, plen), want, atol=1e-6)


@pytest.mark.parametrize("p", [1, T])
def test_a_one_step_and_a_whole_chunk_prefix_are_kept(p):
    policy, batch = make_policy(), make_batch()
    prefix = torch.randn(B, p, 32) * batch["action_mask"][:, None]
    out = policy.predict_chunk(batch, prefix=prefix)
    assert torch.equal(out[:, :p], prefix)
    torch.manual_seed(4)
    none = policy.predict_chunk(batch, prefix=torch.zeros(B, 0, 32))  # an empty prefix is no prefix
    torch.manual_seed(4)
    assert torch.equal(none, policy.predict_chunk(batch))


def test_loss_terms_with_one_valid_element_and_without_a_chunk_mask():
    policy, batch = make_policy(tau_sampler=FixedTau(0.4)), make_batch()
    ctx = policy.context(batch)
    torch.manual_seed(2)
    full = policy.flow_loss(batch, ctx)
    no_chunk_mask = {k: v for k, v in batch.items() if k != "chunk_mask"}
    no_chunk_mask["chunk_mask"] = torch.ones(B, T, dtype=torch.bool)
    torch.manual_seed(2)
    ones = policy.flow_loss(no_chunk_mask, ctx)
    del no_chunk_mask["chunk_mask"]
    torch.manual_seed(2)
    absent = policy.flow_loss(no_chunk_mask, ctx)  # no chunk_mask: every step is valid
    assert torch.allclose(absent["loss"], ones["loss"]) and not torch.allclose(absent["loss"], full["loss"])
    assert full["weight_mean"].item() == 1.0 and absent["valid_frac"].item() == pytest.approx(7 / 32)
    one = {**batch, "action_mask": torch.zeros(B, 32, dtype=torch.bool), "chunk_mask": torch.zeros(B, T, dtype=torch.bool)}
    one["action_mask"][1, 3], one["chunk_mask"][1, 2] = True, True  # a single valid element
    torch.manual_seed(2)
    out = policy.flow_loss(one, ctx)
    torch.manual_seed(2)
    exp = _expected_loss(policy, one, ctx, 0.4, None, seed=2)  # the mean over that one element: its squared error
    assert torch.allclose(out["loss"], exp, atol=1e-6) and out["weight_mean"].item() == 1.0


def test_reweighting_runs_for_any_prefix_and_a_lone_element_weighs_one():
    from xr0.policy import reweight_weights

    policy, batch = make_policy(tau_sampler=FixedTau(0.4)), make_batch()
    ctx = policy.context(batch)
    calls = []
    inner = policy._reweight
    policy._reweight = lambda *a, **k: calls.append(a[2].tolist()) or inner(*a, **k)
    for plen in ([1, 0], [0, 0]):
        policy.flow_loss(batch, ctx, prefix_len=torch.tensor(plen), reweight="batch")
    assert calls == [[1, 0]]  # a one-step prefix is a prefix; no prefix anywhere: no generation at all
    err = torch.zeros(1, 2, 3)
    err[0, 1, 2] = 0.37
    valid = err > 0  # one valid element: the mean is its own error, its weight 1
    assert reweight_weights(err, valid, torch.tensor([True]))[0, 1, 2].item() == pytest.approx(1.0)
