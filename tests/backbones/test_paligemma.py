"""The PaliGemma 2 adapter on a tiny random config (transformers' own classes, nothing downloaded): the K/V and
positions the DiT reads equal transformers' own forward and cache, the image+prompt prefix is bidirectional and the
answer causal, padding shifts nothing, SigLIP takes other sizes, the static prefill equals the HF path (on the meta
device too), the analytic cost counts every weight, and the contract holds."""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from xr0.backbones import protocol
from xr0.backbones.paligemma import PaliGemmaBackbone, paligemma2_3b_config, siglip_cost
from xr0.config import RecipeError, load_recipe, validate
from xr0.registry import BACKBONES

TEXTS = ["pick up the red cube", "open the drawer slowly and then close it again please"]  # unequal: left padding


@pytest.fixture(scope="module")
def vlm():
    torch.manual_seed(0)
    return BACKBONES.build("paligemma", tiny={}).eval()


def images(b=2, v=2, h=56, w=56, seed=1):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, v, dtype=torch.bool)
    mask[-1, -1] = b == 1  # a missing camera (when there are two samples)
    return torch.rand(b, v, 3, h, w, generator=g), mask


@torch.no_grad()
def test_context_equals_transformers_own_forward_and_cache(vlm):
    """One unpadded sample at SigLIP's native size through transformers' PaliGemma with its own DynamicCache and its
    own (1-based) positions: the same K/V, next position S+1 and RoPE."""
    imgs, _ = images(b=1)
    inputs = vlm.prepare(imgs, None, ["pick up the red cube"])
    ctx = vlm.context(inputs, num_layers=3)
    out = vlm.hf(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"],
                 token_type_ids=inputs["token_type_ids"], attention_mask=inputs["attention_mask"], use_cache=True)
    s = inputs["input_ids"].shape[1]
    assert inputs["input_ids"][0, : 2 * 16].eq(vlm.ids["<image>"]).all() and inputs["input_ids"][0, 32] == vlm.ids["<bos>"]
    for i, layer in enumerate(out.cache.layers[-3:]):
        torch.testing.assert_close(ctx.keys[i], layer.keys, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(ctx.values[i], layer.values, atol=1e-6, rtol=1e-6)
    assert ctx.next_position.tolist() == [s + 1]  # positions 1..S: the DiT continues at S+1 (one axis)
    pos = torch.arange(s + 1, s + 5)[None]
    ref = vlm.hf.model.language_model.rotary_emb(ctx.hidden, pos)
    for a, b in zip(ctx.rope(pos), ref):
        torch.testing.assert_close(a, b)


@torch.no_grad()
def test_the_prefix_is_bidirectional_and_the_answer_causal(vlm):
    imgs, _ = images(b=1)
    base = vlm.prepare(imgs, None, ["pick it"], answers=["yes it is"])
    later = {k: v.clone() for k, v in base.items()}
    n_prefix = int((base["token_type_ids"][0] == 0).sum())
    later["input_ids"][0, n_prefix - 2] = ord("x")  # the instruction's last character, after every image token
    a, b = vlm.context(base, 1), vlm.context(later, 1)
    assert not torch.allclose(a.keys[0][0, :, 0], b.keys[0][0, :, 0])  # the first image token saw the later text
    answer = {k: v.clone() for k, v in base.items()}
    answer["input_ids"][0, -2] = ord("z")  # the answer's last character
    c = vlm.context(answer, 1)
    torch.testing.assert_close(c.keys[0][:, :, :-2], a.keys[0][:, :, :-2])  # nothing before it changed
    assert base["token_type_ids"][0, n_prefix:].all() and base["labels"][0, :n_prefix].eq(-100).all()


@torch.no_grad()
def test_left_padding_shifts_nothing(vlm):
    """A prompt alone and the same prompt left-padded beside a longer one: the same K/V and next position."""
    imgs, _ = images()
    both = vlm.context(vlm.prepare(imgs, None, TEXTS), 2)
    alone = vlm.context(vlm.prepare(imgs[:1], None, TEXTS[:1]), 2)
    s = alone.keys[0].shape[2]
    assert both.keys[0].shape[2] > s and not both.attention_mask[0, 0]
    torch.testing.assert_close(both.keys[1][:1, :, -s:], alone.keys[1], atol=1e-5, rtol=1e-5)
    assert torch.equal(both.next_position[:1], alone.next_position)


@torch.no_grad()
def test_missing_camera_is_a_zero_frame_and_other_sizes_interpolate(vlm):
    imgs, mask = images()
    zeroed = imgs.clone()
    zeroed[1, 1] = 0
    a = vlm.prepare(imgs, mask, TEXTS)
    assert torch.equal(a["pixel_values"], vlm.prepare(zeroed, None, TEXTS)["pixel_values"])
    wide = vlm.prepare(torch.rand(1, 2, 3, 70, 84), None, TEXTS[:1])  # SigLIP's table interpolated to 5×6 patches
    assert wide["input_ids"][0].eq(vlm.ids["<image>"]).sum() == 2 * 5 * 6
    assert vlm.context(wide, 1).keys[0].shape[2] == wide["input_ids"].shape[1]
    with pytest.raises(ValueError, match="multiple of the SigLIP patch 14"):
        vlm.prepare(torch.rand(1, 1, 3, 50, 56), None, ["x"])


def test_extra_tokens_come_back_after_the_prompt_and_carry_gradients(vlm):
    imgs, mask = images()
    inputs = vlm.prepare(imgs, mask, TEXTS)
    extra = torch.randn(2, 3, vlm.hidden_size, requires_grad=True)
    ctx = vlm.context(inputs, 1, extra_embeds=extra)
    assert ctx.extra_hidden.shape == (2, 3, vlm.hidden_size) and ctx.hidden.shape[1] == inputs["input_ids"].shape[1]
    ctx.extra_hidden.sum().backward()
    assert extra.grad.abs().sum() > 0
    assert torch.equal(ctx.next_position, inputs["position_ids"].amax(1) + 4)  # 3 extra positions continue the prompt


def test_lm_loss_covers_the_answer_with_gemma_soft_capping(vlm):
    imgs, mask = images()
    inputs = vlm.prepare(imgs, mask, ["is it red?", "where?"], answers=["yes", "on the left"])
    labels = inputs["labels"]
    assert (labels != -100).sum(1).tolist() == [len("yes") + 1, len("on the left") + 1]  # bytes + <eos>
    loss, logits, _ = vlm.lm_loss(inputs)
    assert logits.abs().max() <= 30.0  # final_logit_softcapping
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                            labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(loss, ref)


def test_frozen_has_no_gradients_and_stays_in_eval():
    bb = BACKBONES.build("paligemma", freeze=True)
    bb.train()
    assert bb.frozen and not bb.training and not any(p.requires_grad for p in bb.parameters())
    ctx = bb.context(bb.prepare(*images(), TEXTS), 1)
    assert not ctx.keys[0].requires_grad


def test_gradient_checkpointing_gives_the_same_gradients():
    imgs, mask = images()
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        bb = BACKBONES.build("paligemma", gradient_checkpointing=ckpt).train()
        ctx = bb.context(bb.prepare(imgs, mask, TEXTS), num_layers=2)
        (ctx.keys[-1].square().mean() + ctx.values[0].mean()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in bb.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)
    assert grads[0].abs().sum() > 0


# ---------------------------------------------------------------- the static prefill (fast path)
@torch.no_grad()
def test_static_prefill_equals_the_hf_path(vlm):
    imgs, mask = images()
    ref = vlm.context(vlm.prepare(imgs, mask, TEXTS), num_layers=3)
    static = vlm.static_prefill()
    plan = static.plan(TEXTS, 2, 56, 56)
    keys, values = static.prefill(plan, static.vision(plan, imgs, mask), 3)
    out = static.context(plan, keys, values)
    for a, b in zip(out.keys + out.values, ref.keys + ref.values, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert torch.equal(out.attention_mask, ref.attention_mask) and torch.equal(out.next_position, ref.next_position)
    assert static.tokens(plan) == ref.keys[0].shape[2]
    with pytest.raises(ValueError, match="plan the prompt again"):
        static.vision(plan, torch.rand(2, 3, 3, 56, 56), None)


@torch.no_grad()
def test_static_prefill_runs_on_the_meta_device(vlm):
    """Nothing made on the host, nothing read back: what a CUDA graph capture needs."""
    static = vlm.static_prefill()
    plan = static.plan(TEXTS, 2, 56, 56)
    meta = BACKBONES.build("paligemma", tiny={}).eval().to("meta")
    move = lambda v: (v.to("meta") if torch.is_tensor(v) else {k: x.to("meta") for k, x in v.items()}  # noqa: E731
                      if isinstance(v, dict) else v)
    mplan = type(plan)(**{k: move(v) for k, v in vars(plan).items()})
    imgs, mask = images()
    mstatic = meta.static_prefill()
    keys, _ = mstatic.prefill(mplan, mstatic.vision(mplan, imgs.to("meta"), mask.to("meta")), 2)
    assert keys[0].device.type == "meta" and keys[0].shape == (2, 2, plan.input_ids.shape[1], 32)


# ---------------------------------------------------------------- cost, sizes, recipes, contract
def test_siglip_cost_counts_every_weight_and_the_flop_counter(vlm):
    imgs, mask = images()
    inputs = vlm.prepare(imgs, mask, TEXTS)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        vlm.encode_images(inputs)
    cfg = vlm.hf.config
    cost = siglip_cost(cfg.vision_config, cfg.projection_dim, 4, 56, 56, dtype_bytes=4)
    assert cost.flops == fc.get_total_flops()
    params = sum(p.numel() for p in vlm.hf.model.vision_tower.parameters())
    params += sum(p.numel() for p in vlm.hf.model.multi_modal_projector.parameters())
    assert cost.bytes == 4 * (params + inputs["pixel_values"].numel())
    prefill = vlm.cost(4, 56, 56, vlm.num_layers, 1, 1, 0)["prefill"]  # as many tokens as layers: check the norms
    lm = vlm.hf.model.language_model
    rows = vlm.num_layers * vlm.hidden_size  # embedding rows read
    assert prefill.bytes == sum(p.numel() for p in lm.layers.parameters()) + rows + vlm.hidden_size


def test_published_3b_architecture():
    from transformers import PaliGemmaForConditionalGeneration

    with torch.device("meta"):
        model = PaliGemmaForConditionalGeneration(paligemma2_3b_config())
    n = sum(p.numel() for p in model.parameters())
    assert 3.0e9 < n < 3.1e9  # PaliGemma 2 3B: SigLIP So400m (0.41 B) + Gemma 2 2B (2.61 B)
    assert model.config.text_config.head_dim == 256 and model.config.text_config.num_key_value_heads == 4


def test_recipe_validation_catches_bad_options():
    with pytest.raises(RecipeError, match="drop one of freeze / lora"):
        validate(load_recipe("recipes/tiny/stage2.yaml", ["_tiny_vlm={name: paligemma, freeze: true, lora: {r: 4}}"]))
    with pytest.raises(RecipeError, match="image_size: image size 50x50 must be positive multiples of the backbone's "
                                          "patch\\*merge = 14"):
        validate(load_recipe("recipes/tiny/stage2.yaml", ["_tiny_vlm.name=paligemma", "data.image_size=50"]))
    assert PaliGemmaBackbone.spec_factor({"config": "paligemma2_3b"}) == 14


def test_the_contract_holds_for_every_registered_backbone():
    for name in BACKBONES.names():
        protocol.check(BACKBONES.get(name))
    assert isinstance(BACKBONES.build("paligemma", tiny={}), protocol.Backbone)

    class Half:
        hidden_size = 1

    with pytest.raises(TypeError, match="missing num_layers, num_kv_heads"):
        protocol.check(Half())


# ---------------------------------------------------------------- the whole path with the second family
def test_stages_1_2_3_fit_and_the_checkpoint_serves(tmp_path):
    """The tiny chain with one key switched (`_tiny_vlm.name=paligemma`): stage 1 (choice policy + VL co-training),
    stage 2 from it (the VLM bit-identical), stage 3 async from that (a non-finite loss would stop a run: the
    guard); then `xr0 serve`'s path —
    load_local picks FastPolicy through the declared static prefill — answers the real openpi client in robot
    units, the same chunk as the eager path for the same noise."""
    import numpy as np

    from xr0.run import fit

    common = ["_tiny_vlm.name=paligemma", "trainer.max_steps=3", "run.checkpoint_every_n_steps=3"]
    runs = {}
    for n, extra in ((1, []), (2, ["stage.init_from=${_s1}"]), (3, ["stage.init_from=${_s2}"])):
        links = [f"_s{k}={runs[k]}/checkpoints/last.ckpt" for k in runs]
        runs[n] = fit(f"recipes/tiny/stage{n}.yaml", common + links + extra + [f"run.out_dir={tmp_path}/s{n}"])
    ck = {n: torch.load(runs[n] / "checkpoints" / "last.ckpt", weights_only=True) for n in runs}
    assert ck[3]["xr0_recipe"]["stage"]["backbone"]["name"] == "paligemma"
    vlm1 = {k: v for k, v in ck[1]["state_dict"].items() if k.startswith("backbone.")}
    assert vlm1 and all(torch.equal(ck[2]["state_dict"][f"policy.{k}"], v) for k, v in vlm1.items())
    assert ck[3]["xr0_processor"]["backbone"]["factor"] == 14  # the processor recorded SigLIP's spec

    openpi = pytest.importorskip("openpi_client.websocket_client_policy")
    from xr0.infer import FastPolicy
    from xr0_deploy.local import load_local
    from xr0_deploy.server import PolicyServer

    policy, plain = load_local(str(runs[3] / "checkpoints" / "last.ckpt")), load_local(
        str(runs[3] / "checkpoints" / "last.ckpt"), fast="off")
    assert isinstance(policy.model, FastPolicy)
    srv = PolicyServer(policy, policy.metadata(), port=0)
    srv.start()
    try:
        client = openpi.WebsocketClientPolicy(host="127.0.0.1", port=srv.port)
        meta = client.get_server_metadata()
        rng = np.random.default_rng(0)
        obs = {"observation/state": rng.uniform(-1, 1, meta["state_dim"]), "prompt": "stack the cups",
               **{f"observation/{c}": rng.integers(0, 255, (70, 90, 3), dtype=np.uint8) for c in meta["cameras"]}}
        out = client.infer(obs)
        assert out["actions"].shape == (meta["chunk_len"], meta["action_dim"]) and np.all(np.isfinite(out["actions"]))
        assert srv.counts["errors"] == 0
    finally:
        srv.stop()
    torch.manual_seed(3)
    a = policy.infer(obs, None)
    torch.manual_seed(3)
    np.testing.assert_allclose(a, plain.infer(obs, None), atol=1e-5)
