"""Policy on the real tiny Qwen3-VL (random weights, no download): one VLM forward per chunk, the DiT's positions
continue the M-RoPE positions, and gradients reach the VLM only when it is not frozen."""
from __future__ import annotations

import pytest
import torch

from xr0.policy import Policy
from xr0.registry import BACKBONES, HEADS, MASKS, SAMPLERS

B, T = 2, 4


def make_policy(freeze: bool) -> Policy:
    torch.manual_seed(0)
    backbone = BACKBONES.build("qwen3vl", tiny={}, freeze=freeze)
    head = HEADS.build("dit", width=32, depth=2, num_heads=2, head_dim=backbone.head_dim, chunk=T)
    with torch.no_grad():  # away from adaLN-zero so every path carries gradient at step 0
        for p in head.parameters():
            p.normal_(0, 0.1)
    return Policy(backbone, head, MASKS.build("lambda"), SAMPLERS.build("beta"))


def make_batch():
    g = torch.Generator().manual_seed(1)
    action_mask = torch.zeros(B, 32, dtype=torch.bool)
    action_mask[:, :7] = True
    return {"images": torch.rand(B, 1, 3, 56, 56, generator=g), "image_mask": torch.ones(B, 1, dtype=torch.bool),
            "instruction": ["pick up the cube", "open"], "state": torch.randn(B, 32, generator=g),
            "actions": torch.randn(B, T, 32, generator=g) * action_mask[:, None], "action_mask": action_mask,
            "chunk_mask": torch.ones(B, T, dtype=torch.bool)}


@pytest.fixture(scope="module")
def frozen():
    return make_policy(freeze=True)


def test_predict_chunk_calls_the_vlm_once_for_five_steps(frozen):
    batch = make_batch()
    vlm_calls, vis_calls, dit_calls = [], [], []
    h0 = frozen.backbone.hf.model.visual.merger.register_forward_hook(lambda *a: vis_calls.append(1))
    h1 = frozen.backbone.hf.model.language_model.register_forward_hook(lambda *a: vlm_calls.append(1))
    h2 = frozen.head.blocks[0].register_forward_hook(lambda *a: dit_calls.append(1))
    try:
        out = frozen.predict_chunk(batch, prefix=batch["actions"][:, :1], steps=5)
    finally:
        h0.remove(), h1.remove(), h2.remove()
    assert out.shape == (B, T, 32) and torch.isfinite(out).all()
    assert len(vis_calls) == 1 and len(vlm_calls) == 1 and len(dit_calls) == 5
    assert torch.equal(out[:, :1], batch["actions"][:, :1])


def test_dit_positions_start_after_the_last_vlm_position(frozen):
    batch = make_batch()
    ctx = frozen.context(batch)
    valid = ctx.attention_mask.sum(1)  # (B,) the prompts differ in length (left padding)
    assert valid[0] != valid[1]
    # text positions of Qwen-VL run ahead of the token count because an image takes h·w/4 tokens but
    # only max(h, w)/2 positions; the DiT must start at the first free position, not at the token count
    assert (ctx.next_position < valid + 1).all()
    pos = ctx.next_position[:, None] + torch.arange(3)[None]  # (B, 3) DiT positions
    cos, sin = ctx.rope(pos)
    # text positions use one index on all three M-RoPE axes, which is plain RoPE (tiny config: θ=1e4)
    hd = frozen.backbone.head_dim
    ang = pos.float()[..., None] / (1e4 ** (torch.arange(0, hd, 2).float() / hd))  # (B, 3, hd/2)
    emb = torch.cat([ang, ang], -1)
    assert torch.allclose(cos, emb.cos(), atol=1e-5) and torch.allclose(sin, emb.sin(), atol=1e-5)


@pytest.mark.parametrize("freeze", [True, False])
def test_gradients_reach_the_vlm_only_when_unfrozen(freeze, frozen):
    policy = frozen if freeze else make_policy(freeze=False)
    policy.train()
    batch = make_batch()
    policy.zero_grad()
    policy.flow_loss(batch, policy.context(batch), prefix_len=torch.tensor([1, 0]))["loss"].backward()
    head_ok = [n for n, p in policy.head.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert head_ok == []
    text_layers = policy.backbone.hf.model.language_model.layers

    def has_grad(mod):
        return [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in mod.parameters()]

    if freeze:
        assert not any(p.grad is not None for p in policy.backbone.parameters())
        assert policy.trainable_parameters() == list(policy.head.parameters())
    else:
        last = text_layers[-1].self_attn
        assert all(has_grad(last.k_proj) + has_grad(last.v_proj))  # its K/V feed the DiT directly
        # the DiT reads K/V only, so the last layer's output path gets nothing (the VLM never sees DiT tokens)
        assert not any(has_grad(last.o_proj) + has_grad(text_layers[-1].mlp))
        assert all(has_grad(text_layers[0]))
        assert policy.backbone.hf.model.visual.patch_embed.proj.weight.grad.abs().sum() > 0  # and the vision tower
