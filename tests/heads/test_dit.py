"""DiT action expert: shapes, τ per token, masks through a real layer, RoPE offset, VLM padding, errors, key map."""
from __future__ import annotations

import pytest
import torch

from xr0.heads.dit import DiT
from xr0.masks import causal_mask as _causal
from xr0.masks import lambda_mask as _lambda
from xr0.registry import HEADS
from xr0.types import VLMContext

HD = 8
K = len(DiT.special_tokens)  # the DiT's [SINK, state]: the masks are built over them


def causal_mask(t):
    return _causal(t, special=K)


def lambda_mask(t, window=4):
    return _lambda(t, window, special=K)


def rope(pos):
    inv = 1.0 / (1e4 ** (torch.arange(0, HD, 2).float() / HD))
    ang = pos.float()[..., None] * inv  # (B,N,hd/2)
    emb = torch.cat([ang, ang], -1)
    return emb.cos(), emb.sin()


def make_ctx(b=2, s=5, layers=2, kv_heads=2, head_dim=HD, seed=0):
    g = torch.Generator().manual_seed(seed)
    keys = [torch.randn(b, kv_heads, s, head_dim, generator=g) for _ in range(layers)]
    vals = [torch.randn(b, kv_heads, s, head_dim, generator=g) for _ in range(layers)]
    am = torch.ones(b, s, dtype=torch.bool)
    am[0, :2] = False  # sample 0 is left-padded
    return VLMContext(keys=keys, values=vals, attention_mask=am, next_position=am.sum(1), rope=rope)


def make_dit(depth=2, seed=0, **kw):
    torch.manual_seed(seed)
    kw = {"width": 16, "depth": depth, "num_heads": 2, "head_dim": HD, "chunk": 8, **kw}
    dit = DiT(**kw).eval()
    with torch.no_grad():  # leave adaLN-zero: gates must be non-zero for the tokens to interact
        for p in dit.parameters():
            p.normal_(0, 0.3)
    return dit


def inputs(b=2, t=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 32, generator=g), torch.randn(b, t, 32, generator=g), torch.rand(b, t, generator=g)


def test_registered_shape_and_fresh_init_outputs_zero():
    dit = HEADS.build("dit", width=16, depth=2, num_heads=2, head_dim=HD, chunk=8)
    state, acts, tau = inputs()
    out = dit(make_ctx(), state, acts, tau, causal_mask(8), torch.ones(2, 8, dtype=torch.bool))
    assert out.shape == (2, 8, 32)
    assert torch.equal(out, torch.zeros_like(out))  # zero-initialised output layer (adaLN-zero DiT)


def test_scalar_tau_equals_the_same_tau_per_token():
    dit, ctx = make_dit(), make_ctx()
    state, acts, _ = inputs()
    tau = torch.tensor([0.3, 0.7])
    noisy = torch.ones(2, 8, dtype=torch.bool)
    a = dit(ctx, state, acts, tau, causal_mask(8), noisy)
    b = dit(ctx, state, acts, tau[:, None].expand(2, 8), causal_mask(8), noisy)
    assert torch.allclose(a, b, atol=1e-6)
    c = dit(ctx, state, acts, torch.tensor([0.3, 0.9]), causal_mask(8), noisy)
    assert torch.allclose(a[0], c[0], atol=1e-6) and not torch.allclose(a[1], c[1], atol=1e-4)


def test_sink_and_state_carry_the_samples_smallest_action_tau():
    """A clean prefix carries τ=1, the noisy actions the sampled τ: SINK and state take the noisy level (the min over
    the sample's action tokens), never the prefix's 1. Read at the τ embedding the modulation is computed from."""
    from xr0.nn import timestep_embedding

    dit, ctx = make_dit(), make_ctx()
    state, acts, _ = inputs()
    noisy = torch.arange(8)[None].expand(2, 8) >= torch.tensor([[3], [0]])  # sample 0: 3 clean, sample 1: none
    tau = torch.tensor([[1.0, 1.0, 1.0, 0.35, 0.35, 0.35, 0.35, 0.35],
                        [0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]])
    seen = []
    hook = dit.t_mlp.register_forward_hook(lambda mod, args, out: seen.append(args[0].detach().clone()))
    try:
        out = dit(ctx, state, acts, tau, causal_mask(8), noisy)
    finally:
        hook.remove()
    emb = seen[0]  # (B, 2+T, 256): the embedding of each token's τ
    for b, level in ((0, 0.35), (1, 0.6)):
        want = timestep_embedding(torch.tensor([level, level]), dit.t_embed_dim)
        torch.testing.assert_close(emb[b, :2], want, rtol=0, atol=1e-6)
        torch.testing.assert_close(emb[b, 2:], timestep_embedding(tau[b], dit.t_embed_dim), rtol=0, atol=1e-6)
    # the released layout gives every token the noisy τ: SINK/state agree with it, so only the prefix rows differ
    shared = dit(ctx, state, acts, torch.where(noisy, tau, torch.full_like(tau, 0.35)), causal_mask(8), noisy)
    assert torch.allclose(shared[1], out[1]) and not torch.allclose(shared[0, :3], out[0, :3], atol=1e-4)


@pytest.mark.parametrize("mask_fn, changes", [(lambda t: lambda_mask(t, 4), False), (causal_mask, True)])
def test_far_prefix_action_reaches_a_late_noisy_token_only_under_causal(mask_fn, changes):
    """One DiT layer: under Λ (w=4) noisy token 7 cannot see prefix action 0; under causal it can."""
    dit, ctx = make_dit(depth=1), make_ctx(layers=1)
    state, acts, tau = inputs()
    noisy = torch.arange(8)[None].expand(2, 8) >= 3  # prefix of 3 clean actions
    tau = torch.where(noisy, tau, torch.ones_like(tau))
    out = dit(ctx, state, acts, tau, mask_fn(8), noisy)
    acts2 = acts.clone()
    acts2[:, 0] += 5.0  # change the far prefix action
    out2 = dit(ctx, state, acts2, tau, mask_fn(8), noisy)
    assert (not torch.allclose(out[:, 7], out2[:, 7], atol=1e-5)) == changes
    assert not torch.allclose(out[:, 0], out2[:, 0], atol=1e-5)  # the token itself always changes
    assert not torch.allclose(out[:, 4], out2[:, 4], atol=1e-5)  # in the window under both masks


def test_mask_is_also_applied_per_sample():
    dit, ctx = make_dit(depth=1), make_ctx(layers=1)
    state, acts, tau = inputs()
    noisy = torch.ones(2, 8, dtype=torch.bool)
    per_sample = torch.stack([lambda_mask(8), causal_mask(8)])  # (B, n, n)
    out = dit(ctx, state, acts, tau, per_sample, noisy)
    assert torch.allclose(out[0], dit(ctx, state, acts, tau, lambda_mask(8), noisy)[0], atol=1e-6)
    assert torch.allclose(out[1], dit(ctx, state, acts, tau, causal_mask(8), noisy)[1], atol=1e-6)


def test_rope_offset_moves_noisy_tokens_only_and_zero_turns_it_off():
    ctx = make_ctx()
    state, acts, tau = inputs()
    all_clean, half = torch.zeros(2, 8, dtype=torch.bool), torch.arange(8)[None].expand(2, 8) >= 4
    on = make_dit(rope_offset=10)
    off = make_dit(rope_offset=0)
    off.load_state_dict(on.state_dict())
    m = causal_mask(8)
    ref = on(ctx, state, acts, tau, m, all_clean)
    assert torch.allclose(off(ctx, state, acts, tau, m, half), ref, atol=1e-6)  # offset 0: flags do nothing
    shifted = on(ctx, state, acts, tau, m, half)
    assert torch.allclose(shifted[:, :4], ref[:, :4], atol=1e-5)  # causal: clean tokens before the noisy ones
    assert not torch.allclose(shifted[:, 4:], ref[:, 4:], atol=1e-4)


def test_positions_continue_after_the_vlm_tokens():
    seen = []

    def spy(pos):
        seen.append(pos.clone())
        return rope(pos)

    ctx = make_ctx()
    ctx.rope = spy
    state, acts, tau = inputs()
    noisy = torch.arange(8)[None].expand(2, 8) >= 2
    make_dit(rope_offset=10)(ctx, state, acts, tau, causal_mask(8), noisy)
    pos = seen[0]  # (B, 2+T)
    assert pos[0, :4].tolist() == [3, 4, 5, 6] and pos[0, 4:].tolist() == [17 + i for i in range(6)]
    assert pos[1, 0] == 5  # sample 1 has 5 valid VLM tokens


def test_padded_vlm_tokens_are_invisible_and_valid_ones_matter():
    dit, ctx = make_dit(), make_ctx()
    state, acts, tau = inputs()
    noisy = torch.ones(2, 8, dtype=torch.bool)
    out = dit(ctx, state, acts, tau, causal_mask(8), noisy)
    ctx.keys[0][0, :, :2] += 100.0  # padding of sample 0
    ctx.values[1][0, :, :2] -= 100.0
    assert torch.allclose(dit(ctx, state, acts, tau, causal_mask(8), noisy), out, atol=1e-6)
    ctx.values[1][0, :, 3] += 1.0  # a valid token of the last layer given to the DiT
    assert not torch.allclose(dit(ctx, state, acts, tau, causal_mask(8), noisy)[0], out[0], atol=1e-5)


def test_each_dit_layer_reads_its_own_vlm_layer():
    dit, ctx = make_dit(depth=2), make_ctx(layers=2)
    state, acts, tau = inputs()
    noisy = torch.ones(2, 8, dtype=torch.bool)
    acts.requires_grad_(True)
    for k in ctx.keys + ctx.values:
        k.requires_grad_(True)
    dit(ctx, state, acts, tau, causal_mask(8), noisy).square().sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in ctx.keys + ctx.values)


def test_head_dim_and_depth_mismatch_are_clear_errors():
    state, acts, tau = inputs()
    noisy = torch.ones(2, 8, dtype=torch.bool)
    with pytest.raises(ValueError, match="head_dim=8 must equal the VLM's head_dim=16"):
        make_dit()(make_ctx(head_dim=16), state, acts, tau, causal_mask(8), noisy)
    with pytest.raises(ValueError, match="holds 3 layers"):
        make_dit()(make_ctx(layers=3), state, acts, tau, causal_mask(8), noisy)
    with pytest.raises(ValueError, match="multiple of the VLM's 4 KV heads"):
        make_dit(num_heads=2).check_backbone(num_layers=4, num_kv_heads=4, head_dim=HD)
    with pytest.raises(ValueError, match="prefix_tau"):
        DiT(prefix_tau="half")


def test_grouped_kv_matches_explicitly_repeated_heads():
    dit, ctx = make_dit(num_heads=4), make_ctx(kv_heads=2)
    state, acts, tau = inputs()
    noisy = torch.ones(2, 8, dtype=torch.bool)
    rep = VLMContext(keys=[k.repeat_interleave(2, 1) for k in ctx.keys],
                     values=[v.repeat_interleave(2, 1) for v in ctx.values],
                     attention_mask=ctx.attention_mask, next_position=ctx.next_position, rope=rope)
    assert torch.allclose(dit(ctx, state, acts, tau, causal_mask(8), noisy),
                          dit(rep, state, acts, tau, causal_mask(8), noisy), atol=1e-6)


def test_every_release_key_map_row_names_a_dit_parameter_of_the_right_shape():
    from xr0.release import keymap as K

    d = {"D": 16, "Hd": HD, "L": 2, "A": 32, "S": 32, "F": 256}
    params = {K.XR0_HEAD_PREFIX + k: tuple(v.shape) for k, v in make_dit(num_heads=2).state_dict().items()}
    expected = {}
    for rule in K.RULES:
        if rule.shape is None:
            continue
        for i in range(d["L"]):
            expected[rule.xr0.format(i=i)] = K.eval_shape(rule.shape, d)
    assert expected == params


def test_head_dim_left_null_follows_the_vlm():
    """head_dim: null (the default) waits for the backbone's: the policy binds it, once; the blocks exist after."""
    dit = DiT(width=16, depth=2, num_heads=2, chunk=8)
    assert dit.head_dim is None and len(dit.blocks) == 0
    with pytest.raises(ValueError, match="not bound to a VLM yet"):
        dit.check_backbone(num_layers=2, num_kv_heads=2, head_dim=HD)
    assert dit.bind(HD) is dit and dit.blocks[0].attn.q_norm.weight.shape == (HD,) and len(dit.blocks) == 2
    dit.bind(HD)  # the same again is fine
    with pytest.raises(ValueError, match="head_dim=8 must equal the VLM's head_dim=16"):
        dit.bind(16)
    state, acts, tau = inputs()
    assert dit(make_ctx(), state, acts, tau, causal_mask(8), torch.ones(2, 8, dtype=torch.bool)).shape == (2, 8, 32)
