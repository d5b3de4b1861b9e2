"""The static prefill (fast path) equals the HF forward the training path uses: same K/V, positions, RoPE."""
import pytest
import torch

from xr0.backbones.qwen3vl_static import plan_prompt, static_context
from xr0.registry import BACKBONES

TEXTS = ["pick up the red cube", "open the drawer slowly and then close it again please"]  # unequal: left padding


@pytest.fixture(scope="module", params=[{}, {"vision_config": {"deepstack_visual_indexes": [0, 1]}}],
                ids=["tiny", "deepstack-2"])
def vlm(request):
    torch.manual_seed(0)
    return BACKBONES.build("qwen3vl", tiny=request.param).eval()


def images(b=2, v=3, h=56, w=84):
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(b, v, dtype=torch.bool)
    mask[1, 2] = False  # a missing camera
    return torch.rand(b, v, 3, h, w, generator=g), mask


@torch.no_grad()
def test_static_context_equals_the_hf_forward(vlm):
    imgs, mask = images()
    ref = vlm.context(vlm.prepare(imgs, mask, TEXTS), num_layers=3)
    plan = plan_prompt(vlm, TEXTS, views=3, h=56, w=84)
    out = static_context(vlm, plan, imgs, mask, num_layers=3)
    assert len(out.keys) == len(ref.keys) == 3
    for a, b in zip(out.keys + out.values, ref.keys + ref.values):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert torch.equal(out.attention_mask, ref.attention_mask) and not out.attention_mask.all()
    assert torch.equal(out.next_position, ref.next_position)
    pos = ref.next_position[:, None] + torch.arange(5)[None]
    for a, b in zip(out.rope(pos), ref.rope(pos)):
        torch.testing.assert_close(a, b)


@torch.no_grad()
def test_one_plan_serves_new_pixels(vlm):
    plan = plan_prompt(vlm, TEXTS, views=3, h=56, w=84)
    for seed in (2, 3):
        imgs = torch.rand(2, 3, 3, 56, 84, generator=torch.Generator().manual_seed(seed))
        ref = vlm.context(vlm.prepare(imgs, None, TEXTS), num_layers=2)
        out = static_context(vlm, plan, imgs, None, num_layers=2)
        torch.testing.assert_close(out.keys[-1], ref.keys[-1], atol=1e-5, rtol=1e-5)


def test_images_that_do_not_fit_the_plan_are_refused(vlm):
    plan = plan_prompt(vlm, TEXTS, views=3, h=56, w=84)
    with pytest.raises(ValueError, match="plan the prompt again"):
        static_context(vlm, plan, torch.rand(2, 2, 3, 56, 84), None, num_layers=2)


@torch.no_grad()
def test_static_context_runs_on_the_meta_device(vlm):
    """Every op of the planned forward has its inputs on the model's device: a tensor made on the host (a copy
    inside a CUDA graph) or a host sync (.item, .tolist, nonzero) fails on the meta device."""
    plan = plan_prompt(vlm, TEXTS, views=3, h=56, w=84)
    meta = BACKBONES.build("qwen3vl", tiny=vlm.hf.config.vision_config.deepstack_visual_indexes and {}).eval()
    meta.to("meta")
    mplan = type(plan)(**{k: (v.to("meta") if torch.is_tensor(v) else v) for k, v in vars(plan).items()})
    imgs, mask = images()
    out = static_context(meta, mplan, imgs.to("meta"), mask.to("meta"), num_layers=2)
    assert out.keys[0].device.type == "meta" and out.keys[0].shape == (2, vlm.num_kv_heads, plan.input_ids.shape[1],
                                                                       vlm.head_dim)


@torch.no_grad()
def test_batched_vision_equals_hf_vision_tower(vlm):
    imgs, mask = images()
    inputs = vlm.prepare(imgs, mask, TEXTS)
    ref = vlm.hf.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
    out = vlm._images(inputs)["mm_encoder_outputs"]["image"]
    torch.testing.assert_close(out.pooler_output[0], torch.cat(ref.pooler_output), atol=1e-5, rtol=1e-5)
    for a, b in zip(out.deepstack_features, ref.deepstack_features, strict=True):
        torch.testing.assert_close(a[0], torch.cat(b), atol=1e-5, rtol=1e-5)


def test_training_context_equals_hf_path_with_gradients_and_checkpointing():
    """The training path (HF forward fed by the batched vision tower) gives HF's K/V and the same gradients on the
    vision weights, with and without gradient checkpointing."""
    imgs, mask = images()
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        bb = BACKBONES.build("qwen3vl", gradient_checkpointing=ckpt).train()
        inputs = bb.prepare(imgs, mask, TEXTS)
        hf_inputs = {k: v for k, v in inputs.items() if k != "image_layout"}  # HF's own per-image vision path
        for inp in (inputs, hf_inputs):
            bb.zero_grad()
            ctx = bb.context(inp, num_layers=2)
            (ctx.keys[-1].square().mean() + ctx.values[0].mean()).backward()
            grads.append(torch.cat([p.grad.flatten() for p in bb.hf.model.visual.parameters() if p.grad is not None]))
    for g in grads[1:]:
        torch.testing.assert_close(g, grads[0], atol=1e-5, rtol=1e-4)
    assert grads[0].abs().sum() > 0
