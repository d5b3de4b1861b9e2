"""The Qwen3-VL adapter on a tiny random config: preprocessing parity with transformers' image processor,
the context the DiT reads, freezing, LoRA, stage-1 extra tokens and the VL loss."""
import json

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
    assert labels[0][labels[0] != -100].tolist() == vlm.tokenizer.encode("yes<|im_end|>")
    assert labels[:, -1].tolist() == [vlm.tokenizer.special("<|im_end|>")] * 2  # answers end every left-padded row
    loss, logits, lab = vlm.lm_loss(inputs)
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                            labels[:, 1:].reshape(-1), ignore_index=-100)
    assert torch.allclose(loss, ref) and torch.equal(lab, labels)


# ---------------------------------------------------------------- positions, cameras, prompts, options

def test_next_position_ignores_padding_and_continues_the_models_text_positions(vlm):
    imgs, mask = batch()
    texts = ["pick up the red block and put it in the bowl", "go"]
    inputs = vlm.prepare(imgs, mask, texts)
    with torch.no_grad():
        ctx = vlm.context(inputs, 1)
        alone = vlm.context(vlm.prepare(imgs[1:], mask[1:], texts[1:]), 1)  # the short prompt with no padding
    assert inputs["attention_mask"][1].sum() < inputs["attention_mask"].shape[1]  # sample 1 is padded
    assert ctx.next_position[1] == alone.next_position[0]
    valid = inputs["attention_mask"].bool()
    # the padded sample's real keys are the unpadded run's: padding changes nothing
    assert torch.allclose(ctx.keys[0][1][:, valid[1]], alone.keys[0][0], atol=1e-5)
    # three text tokens appended after every prompt get, from the model's own rope index, next_position + 0, 1, 2
    # on all three M-RoPE axes, and the rotary function gives what the model applies at those positions
    n = 3
    ext = {**inputs,
           "input_ids": torch.cat([inputs["input_ids"], torch.full((2, n), ord("x"))], 1),
           "attention_mask": torch.cat([inputs["attention_mask"], torch.ones(2, n, dtype=torch.long)], 1),
           "mm_token_type_ids": torch.cat([inputs["mm_token_type_ids"], torch.zeros(2, n, dtype=torch.int)], 1)}
    pos, _ = vlm.hf.model.get_rope_index(ext["input_ids"], ext["mm_token_type_ids"], ext["image_grid_thw"],
                                         attention_mask=ext["attention_mask"])  # (3, B, S+n)
    want = ctx.next_position[:, None] + torch.arange(n)[None]  # (B, n)
    assert all(torch.equal(pos[axis, :, -n:], want) for axis in range(3))
    cos, sin = ctx.rope(want)
    assert cos.shape == (2, n, vlm.head_dim)
    ref_cos, ref_sin = vlm.hf.model.language_model.rotary_emb(ctx.hidden, pos[:, :, -n:])
    assert torch.allclose(cos, ref_cos) and torch.allclose(sin, ref_sin)


def test_context_shapes_and_dtypes(vlm):
    imgs, mask = batch(b=2, v=3, hw=28)
    inputs = vlm.prepare(imgs, mask, ["a", "b"])
    s = inputs["input_ids"].shape[1]
    assert inputs["pixel_values"].shape == (2 * 3 * 4, 3 * 2 * 14 * 14)  # 2x2 patches per 28x28 view
    assert (inputs["input_ids"] == vlm.tokenizer.special("<|image_pad|>")).sum(1).tolist() == [3, 3]  # 1 per view
    with torch.no_grad():
        ctx = vlm.context(inputs, vlm.num_layers)
    assert len(ctx.keys) == len(ctx.values) == vlm.num_layers
    assert all(k.shape == (2, vlm.num_kv_heads, s, vlm.head_dim) and k.dtype == torch.float32 for k in ctx.keys)
    assert ctx.attention_mask.dtype == torch.bool and ctx.attention_mask.shape == (2, s)
    assert ctx.next_position.dtype == torch.long and ctx.next_position.shape == (2,)
    assert ctx.hidden.shape == (2, s, vlm.hidden_size) and ctx.extra_hidden is None
    with pytest.raises(ValueError, match="last 5 VLM layers but the VLM has 4"):
        vlm.context(inputs, 5)


def test_missing_camera_is_fed_as_a_zero_frame(vlm):
    imgs, mask = batch()
    mask[0, 1] = False
    zeroed = imgs.clone()
    zeroed[0, 1] = 0
    a = vlm.prepare(imgs, mask, ["a", "b"])
    b = vlm.prepare(zeroed, torch.ones_like(mask), ["a", "b"])
    assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["input_ids"], b["input_ids"])
    assert not torch.equal(a["pixel_values"], vlm.prepare(imgs, torch.ones_like(mask), ["a", "b"])["pixel_values"])


def test_instruction_is_truncated_not_the_template():
    vlm = BACKBONES.build("qwen3vl", max_text_tokens=5)
    imgs, mask = batch(b=1)
    ids = vlm.prepare(imgs, mask, ["pick up the red block"])["input_ids"][0].tolist()
    text = vlm.tokenizer.decode(ids)
    assert "pick " in text and "pick u" not in text  # 5 bytes of the instruction
    tail = vlm.tokenizer.encode("<|im_end|>\n<|im_start|>assistant\n")
    assert ids[-len(tail):] == tail


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        vlm = BACKBONES.build("qwen3vl", gradient_checkpointing=ckpt)
        vlm.train()
        imgs, mask = batch()
        ctx = vlm.context(vlm.prepare(imgs, mask, ["a", "bb"]), 2)
        (ctx.keys[-1].square().sum() + ctx.values[0].sum()).backward()
        lm = vlm.hf.model.language_model
        grads.append(torch.cat([lm.layers[0].mlp.up_proj.weight.grad.flatten(),
                                vlm.hf.model.visual.patch_embed.proj.weight.grad.flatten()]))
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_recipe_validation_catches_bad_options():
    from xr0.backbones.qwen3vl import Qwen3VLBackbone

    check = Qwen3VLBackbone.__xr0_validate__
    assert check({"tiny": {}, "lora": {"r": 4}}) == []
    assert any("unknown keys ['rank']" in p for p in check({"lora": {"rank": 4}}))
    assert any("drop one of freeze / lora" in p for p in check({"lora": {"r": 4}, "freeze": True}))
    assert any("mrope_section must sum to head_dim/2 = 8" in p
               for p in check({"tiny": {"text_config": {"head_dim": 16}}}))
    with pytest.raises(ValueError, match="drop one of freeze / lora"):
        BACKBONES.build("qwen3vl", lora={"r": 2}, freeze=True)


def test_pretrained_needs_a_local_directory_with_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json there"):
        BACKBONES.build("qwen3vl", pretrained=str(tmp_path))


def test_published_4b_architecture_has_4_44b_parameters():
    from transformers import Qwen3VLForConditionalGeneration

    from xr0.backbones import qwen3vl_4b_config

    with torch.device("meta"):  # shapes only: nothing allocated, nothing loaded
        model = Qwen3VLForConditionalGeneration(qwen3vl_4b_config())
    assert sum(p.numel() for p in model.parameters()) == 4_437_815_808


def test_4b_architecture_without_a_tokenizer_takes_the_byte_placeholders_ids():
    """A config-only 4B (the benchmark) prompts with the byte tokenizer: the model's image ids must be its ids, so
    3 views of 320x256 give 3x80 image tokens the vision tower fills."""
    with torch.device("meta"):
        bb = BACKBONES.build("qwen3vl", config="qwen3vl_4b")
    tok = bb.tokenizer
    assert bb.hf.config.image_token_id == tok.special("<|image_pad|>")
    assert bb.hf.config.vision_start_token_id == tok.special("<|vision_start|>")
    ids, _ = bb._prompt_ids(3, (256 // 32) * (320 // 32), "stack the red cube on the bowl", None)
    assert ids.count(bb.hf.config.image_token_id) == 240


# ---------------------------------------------------------------- a Hugging Face tokenizer with a chat template

# A minimal Qwen-VL-style ChatML template (user turn: one vision block per image, then text).
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.content is string %}{{ m.content }}{% else %}{% for c in m.content %}"
    "{% if c.type == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% elif c.type == 'text' %}{{ c.text }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _byte_level_tokenizer_dir(path, chat_template_file: bool):
    """A byte-level HF tokenizer whose ids equal ByteTokenizer's (bytes 0..255, then the same specials)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from xr0.backbones.tokenizer import SPECIALS

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    # GPT-2's byte→unicode map, so that id == byte value
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, extra = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    vocab = {chr(c): b for b, c in zip(bs, cs)}
    assert set(vocab) == set(byte_chars)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.add_special_tokens({"additional_special_tokens": SPECIALS[1:]})
    if not chat_template_file:
        fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)
    if chat_template_file:  # as processor folders ship it
        (path / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))
    return str(path)


@pytest.mark.parametrize("template_file", [False, True])
def test_hf_tokenizer_chat_template_gives_the_same_prompt(vlm, tmp_path, template_file):
    from xr0.backbones.tokenizer import ByteTokenizer, HFTokenizer

    path = _byte_level_tokenizer_dir(tmp_path, template_file)
    hf_tok = HFTokenizer(path)
    assert hf_tok.tok.chat_template == CHAT_TEMPLATE
    assert [hf_tok.special(s) for s in ("<|im_start|>", "<|image_pad|>")] == [257, 261]
    assert hf_tok.encode("a<|im_end|>") == ByteTokenizer().encode("a<|im_end|>") == [97, 258]
    torch.manual_seed(0)
    with_hf = BACKBONES.build("qwen3vl", tokenizer=path)
    imgs, mask = batch()
    texts, answers = ["pick up the red block", "go"], ["yes", "on the left"]
    a = with_hf.prepare(imgs, mask, texts, answers=answers)
    b = vlm.prepare(imgs, mask, texts, answers=answers)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(tmp_path):
    path = _byte_level_tokenizer_dir(tmp_path, False)
    with pytest.raises(ValueError, match="tokenizer has 264 tokens but the VLM's vocabulary only 200"):
        BACKBONES.build("qwen3vl", tokenizer=path, tiny={"text_config": {"vocab_size": 200}})


def test_prepare_pixels_match_the_image_processor_at_float32(vlm):
    rng = np.random.default_rng(2)
    imgs = rng.integers(0, 256, size=(2, 2, 28, 56, 3), dtype=np.uint8)  # (B, V, H, W, C)
    ref = Qwen2VLImageProcessor(do_resize=False, patch_size=14, temporal_patch_size=2, merge_size=2)(
        images=list(imgs.reshape(4, 28, 56, 3)), return_tensors="pt")
    x = torch.from_numpy(imgs).permute(0, 1, 4, 2, 3).float() / 255
    ours = vlm.prepare(x, torch.ones(2, 2, dtype=torch.bool), ["a", "b"])
    assert torch.equal(ours["image_grid_thw"], ref["image_grid_thw"])
    assert (ours["pixel_values"] - ref["pixel_values"]).abs().max() <= 1e-5


def test_bfloat16_context():
    torch.manual_seed(0)
    vlm = BACKBONES.build("qwen3vl", dtype="bfloat16", freeze=True)
    imgs, mask = batch()
    ctx = vlm.context(vlm.prepare(imgs, mask, ["a", "b"]), 2)
    assert ctx.keys[0].dtype == torch.bfloat16 and torch.isfinite(ctx.keys[0].float()).all()
    cos, _ = ctx.rope(ctx.next_position[:, None])
    assert cos.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="backbone.dtype='bf16'"):
        BACKBONES.build("qwen3vl", dtype="bf16")


def test_extra_tokens_sit_right_after_each_prompt_despite_padding(vlm):
    imgs, mask = batch()
    extra = torch.randn(2, 2, vlm.hidden_size)
    with torch.no_grad():
        both = vlm.context(vlm.prepare(imgs, mask, ["pick up the red block", "go"]), 1, extra_embeds=extra)
        alone = vlm.context(vlm.prepare(imgs[1:], mask[1:], ["go"]), 1, extra_embeds=extra[1:])
    assert torch.allclose(both.extra_hidden[1], alone.extra_hidden[0], atol=1e-5)
    assert both.next_position[1] == alone.next_position[0]


def test_prepared_positions_equal_hf_rope_index_also_with_extra_tokens(vlm):
    """prepare computes the M-RoPE positions on the host; appended extra tokens extend them. Both equal what
    HF's rope index gives for the same ids (which the forward no longer has to run)."""
    imgs, mask = batch()
    inputs = vlm.prepare(imgs, mask, ["pick up the red block", "go"])
    for inp in (inputs, vlm._append_extra(inputs, 3)):
        ref, _ = vlm.hf.model.get_rope_index(inp["input_ids"], inp["mm_token_type_ids"], inp["image_grid_thw"],
                                             attention_mask=inp["attention_mask"])
        valid = inp["attention_mask"].bool()[None].expand_as(ref)  # padding positions carry no meaning
        assert torch.equal(inp["position_ids"][valid], ref[valid])


def test_lora_gradients_reach_the_adapters_through_the_keys():
    torch.manual_seed(0)
    vlm = BACKBONES.build("qwen3vl", lora={"r": 4, "alpha": 8})
    imgs, mask = batch()
    ctx = vlm.context(vlm.prepare(imgs, mask, ["a", "b"]), 2)
    ctx.keys[-1].sum().backward()
    grads = {n: p.grad for n, p in vlm.named_parameters() if p.requires_grad}
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora_A" in n or "lora_B" in n)
    assert all(p.grad is None for n, p in vlm.named_parameters() if not p.requires_grad)


def test_cost_counts_every_weight_once(vlm):
    """The analytic bytes (xr0.flops via Qwen3VLBackbone.cost): the vision tower's weights plus its pixels, and with
    as many tokens as the vocabulary the whole language model (its embedding table read in full)."""
    from xr0 import flops
    from xr0.backbones.qwen3vl import vision_cost

    imgs, mask = batch()
    inputs = vlm.prepare(imgs, mask, ["a", "b"])
    cfg = vlm.hf.config
    vis = vision_cost(cfg.vision_config, 4, 56, 56, dtype_bytes=4)
    assert vis.bytes == 4 * (sum(p.numel() for p in vlm.hf.model.visual.parameters()) + inputs["pixel_values"].numel())
    full = flops.prefill_cost(cfg.text_config, cfg.text_config.vocab_size, 1, dtype_bytes=1, kv_layers_kept=0)
    assert full.bytes == sum(p.numel() for p in vlm.hf.model.language_model.parameters())
    assert vlm.cost(4, 56, 56, 10, 2, 4, 2)["vision"] == vis
