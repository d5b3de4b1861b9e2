"""The Qwen3-VL adapter on a tiny random config: preprocessing parity with transformers' image processor,
the context the DiT reads, freezing, LoRA, stage-1 extra tokens and the VL loss."""
import numpy as np
import pytest
import torch
from transformers import Qwen2VLImageProcessor

from xr0.backbones.images import patchify
from xr0.registry import BACKBONES


@pytest.fixture(scope="module")
def vlm():
    torch.manual_seed(0)
    return BACKBONES.build("qwen3vl")


def batch(b=2, v=2, hw=56):
    g = torch.Generator().manual_seed(1)
    return torch.rand(b, v, 3, hw, hw, generator=g), torch.ones(b, v, dtype=torch.bool)


def test_patchify_matches_qwen2vl_image_processor():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(2, 56, 84, 3), dtype=np.uint8)
    proc = Qwen2VLImageProcessor(do_resize=False, patch_size=14, temporal_patch_size=2, merge_size=2)
    ref = proc(images=list(imgs), return_tensors="pt")
    ours, grid = patchify(torch.from_numpy(imgs).permute(0, 3, 1, 2).double() / 255, 14, 2, 2)
    assert torch.equal(grid, ref["image_grid_thw"])
    assert ours.shape == ref["pixel_values"].shape
    assert (ours - ref["pixel_values"].double()).abs().max() <= 1e-5


def test_image_size_must_fit_patch_and_merge():
    with pytest.raises(ValueError, match="multiple of patch\\*merge = 28"):
        patchify(torch.rand(1, 3, 50, 56), 14, 2, 2)


def test_context_matches_the_models_own_cache_and_positions(vlm):
    imgs, mask = batch()
    inputs = vlm.prepare(imgs, mask, ["pick up the red block", "go"])
    assert inputs["attention_mask"][1, 0] == 0 and inputs["attention_mask"][:, -1].all()  # left padding
    with torch.no_grad():
        ctx = vlm.context(inputs, num_layers=2)
        hf = vlm.hf
        pos, _ = hf.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"], inputs["image_grid_thw"],
                                         attention_mask=inputs["attention_mask"])
        out = hf.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], position_ids=pos,
                       pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"],
                       mm_token_type_ids=inputs["mm_token_type_ids"], use_cache=True)
    assert len(ctx.keys) == 2 and ctx.keys[0].shape == (2, vlm.num_kv_heads, inputs["input_ids"].shape[1], vlm.head_dim)
    for i, layer in enumerate(out.cache.layers[-2:]):
        assert torch.allclose(ctx.keys[i], layer.keys, atol=1e-6) and torch.allclose(ctx.values[i], layer.values, atol=1e-6)
    valid = inputs["attention_mask"].bool()
    expect = torch.stack([pos[:, b][:, valid[b]].max() + 1 for b in range(2)])
    assert torch.equal(ctx.next_position, expect)
    assert ctx.next_position[0] < valid[0].sum()  # image positions are compressed (M-RoPE)
    assert torch.equal(ctx.attention_mask, valid)
    # the rotary function is the model's own, text positions on all three axes
    p = ctx.next_position[:, None] + torch.arange(3)[None]
    cos, sin = ctx.rope(p)
    ref_cos, ref_sin = hf.model.language_model.rotary_emb(ctx.hidden, p[None].expand(3, -1, -1))
    assert torch.allclose(cos, ref_cos) and torch.allclose(sin, ref_sin)


def test_frozen_backbone_has_no_gradients_and_stays_in_eval():
    torch.manual_seed(0)
    vlm = BACKBONES.build("qwen3vl", freeze=True)
    vlm.train()
    assert not vlm.model.training and not any(p.requires_grad for p in vlm.parameters())
    imgs, mask = batch()
    inputs = vlm.prepare(imgs, mask, ["a", "b"])
    a, b = vlm.context(inputs, 2), vlm.context(inputs, 2)
    assert not a.keys[0].requires_grad and torch.equal(a.keys[1], b.keys[1])


@pytest.mark.parametrize("ckpt", [False, True])
def test_unfrozen_gradients_reach_the_vlm_through_the_keys(ckpt):
    torch.manual_seed(0)
    vlm = BACKBONES.build("qwen3vl", gradient_checkpointing=ckpt)
    vlm.train()
    imgs, mask = batch()
    ctx = vlm.context(vlm.prepare(imgs, mask, ["a", "b"]), 2)
    (ctx.keys[-1].sum() + ctx.values[0].sum()).backward()
    lm = vlm.hf.model.language_model
    assert lm.layers[0].self_attn.q_proj.weight.grad is not None  # earlier layers feed the last layers' K/V
    assert lm.layers[-1].self_attn.k_proj.weight.grad.abs().sum() > 0


def test_lora_trains_only_the_adapters():
    vlm = BACKBONES.build("qwen3vl", lora={"r": 4})
    trainable = [n for n, p in vlm.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("q_proj" in n for n in trainable)


def test_extra_tokens_come_back_and_carry_gradients(vlm):
    imgs, mask = batch()
    inputs = vlm.prepare(imgs, mask, ["a", "bbbb"])
    extra = torch.randn(2, 3, vlm.hidden_size, requires_grad=True)
    ctx = vlm.context(inputs, 2, extra_embeds=extra)
    assert ctx.extra_hidden.shape == (2, 3, vlm.hidden_size)
    ctx.extra_hidden.sum().backward()
    assert extra.grad is not None and extra.grad.abs().sum() > 0
    other = vlm.context(inputs, 2, extra_embeds=extra.detach() + 1)
    assert not torch.allclose(other.extra_hidden, ctx.extra_hidden)


def test_lm_loss_covers_answer_tokens_only(vlm):
    imgs, mask = batch()
    inputs = vlm.prepare(imgs, mask, ["is it red?", "where?"], answers=["yes", "on the left"])
    labels = inputs["labels"]
    n_answer = (labels != -100).sum(1)
    assert n_answer.tolist() == [len("yes") + 1, len("on the left") + 1]  # bytes + <|im_end|>
    loss, logits, lab = vlm.lm_loss(inputs)
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                            labels[:, 1:].reshape(-1), ignore_index=-100)
    assert torch.allclose(loss, ref) and torch.equal(lab, labels)
