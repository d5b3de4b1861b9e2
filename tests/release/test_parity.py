"""Numerical parity: a tiny model in the released layout, run (a) through xr0 after `import-release` and
`init_from` of the post_train recipe, and (b) through a reference of the released forward written here from
the released layout's facts (MiBoTForActionGeneration.forward: VLM once with its KV cache; DiT tokens
[SINK, state, actions] at positions max(VLM position ids) + 1 + i on every M-RoPE axis with no offset;
a lower-triangular DiT mask next to the VLM padding mask; one scalar τ per sample through
sinusoid(τ·1000, 256; cos then sin) -> Linear-SiLU-Linear -> Linear to (6, D) plus each layer's adaln_table;
per layer: norm -> modulate -> attention (qkv with bias, per-head q/k RMSNorm, RoPE, VLM K/V of layer
L_vlm - L + i in front) -> gated residual -> norm, then norm -> modulate -> SwiGLU -> gated residual -> norm;
the action projector sees the noisy actions times the action mask; 5 Euler steps from τ=0).

The VLM in (b) is transformers' Qwen3-VL loaded straight from the release's `vlm.*` tensors, not xr0's
backbone adapter. The first test feeds both the same prepared tensors; the second starts from what a user has —
uint8 camera frames at their native size, the instruction text, the state in robot units — and the reference then
also does the released preprocessing itself: transformers' Qwen2-VL PIL image processor with the release's
preprocessor_config.json (smart resize, bicubic, mean/std 0.5), the deployment prompt of the release's README
(view labels, text after the images, "/no_cot", an empty cot answer), the raw zero-padded state, the per-timestep
action mask `std > 1e-5`, noise drawn after `torch.manual_seed(seed)` per call, and `a * std + mean`.
"""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import torch
import torch.nn.functional as F

from xr0.backbones.tokenizer import ByteTokenizer
from xr0.release.importer import import_release


def _load_fixture_module():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("xr0_release_parity_fixture", Path(__file__).with_name("conftest.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


conftest = _load_fixture_module()
EPS = 1e-6
STEPS = 5


def _byte_vocab_release_config():
    """The fixture's config with a VLM vocabulary xr0's byte tokenizer can drive."""
    tok = ByteTokenizer()
    vlm = copy.deepcopy(conftest.VLM_CONFIG)
    vlm["text_config"]["vocab_size"] = tok.vocab_size
    vlm.update(image_token_id=tok.special("<|image_pad|>"), video_token_id=tok.special("<|video_pad|>"),
               vision_start_token_id=tok.special("<|vision_start|>"), vision_end_token_id=tok.special("<|vision_end|>"))
    return {**copy.deepcopy(conftest.CONFIG), "vlm_config": vlm}


def _scaled(tensors):
    """Weights at a trained-like scale (norm weights near 1, the rest small), so activations stay moderate."""
    out = {}
    for k, v in tensors.items():
        v = v.float()
        out[k] = (1 + 0.1 * v if k.endswith("norm.weight") else 0.2 * v).to(torch.bfloat16)
    return out


# ---------------------------------------------------------------- reference of the released forward
def _rms(x, w):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS))


def _mlp2(x, W, name):
    return F.gelu(x @ W[name + ".layers.0.weight"].T, approximate="tanh") @ W[name + ".layers.2.weight"].T


def _rot(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


def reference_velocity(W, n_layers, head_dim, kv, vlm_mask, cos, sin, state, x, t, action_mask):
    b, T, _ = x.shape
    D = W["sink.weight"].shape[1]
    H = D // head_dim
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = (t * 1000)[:, None] * freqs[None]
    t_emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    t_emb = F.silu(t_emb @ W["t_embedder.mlp.0.weight"].T) @ W["t_embedder.mlp.2.weight"].T  # (B,D)
    mod = (t_emb @ W["t_projector.layers.0.weight"].T + W["t_projector.layers.0.bias"]).view(b, 6, D)
    h = torch.cat([W["sink.weight"][None].expand(b, 1, D), _mlp2(state[:, None], W, "state_projector"),
                   _mlp2(x * (action_mask if action_mask.ndim == 3 else action_mask[:, None]), W,
                         "action_projector")], dim=1)  # (B,n,D); a per-timestep mask is (B,T,A) already
    n = h.shape[1]
    mask = torch.cat([vlm_mask[:, None, :].expand(b, n, -1),
                      torch.tril(torch.ones(n, n, dtype=torch.bool)).expand(b, n, n)], dim=-1)[:, None]
    for i, (kc, vc) in enumerate(kv):
        p = f"dit.layers.{i}."
        s_a, c_a, g_a, s_m, c_m, g_m = (W[p + "adaln_table"][None] + mod).chunk(6, dim=1)  # each (B,1,D)
        res = h
        y = _rms(h, W[p + "input_layernorm.weight"]) * (1 + c_a) + s_a
        q, k, v = (y @ W[p + "attn.qkv_proj.weight"].T + W[p + "attn.qkv_proj.bias"]).view(b, n, 3, H, head_dim).unbind(2)
        q = _rms(q, W[p + "attn.q_norm.weight"]).transpose(1, 2)
        k = _rms(k, W[p + "attn.k_norm.weight"]).transpose(1, 2)
        v = v.transpose(1, 2)
        q, k = q * cos[:, None] + _rot(q) * sin[:, None], k * cos[:, None] + _rot(k) * sin[:, None]
        rep = H // kc.shape[1]
        k = torch.cat([kc.repeat_interleave(rep, 1), k], dim=2)
        v = torch.cat([vc.repeat_interleave(rep, 1), v], dim=2)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(b, n, D)
        h = _rms(res + g_a * (o @ W[p + "attn.o_proj.weight"].T), W[p + "middle_layernorm.weight"])
        res = h
        y = _rms(h, W[p + "post_layernorm.weight"]) * (1 + c_m) + s_m
        y = (F.silu(y @ W[p + "mlp.gate_proj.weight"].T) * (y @ W[p + "mlp.up_proj.weight"].T)) @ W[p + "mlp.down_proj.weight"].T
        h = _rms(res + g_m * y, W[p + "final_layernorm.weight"])
    return _mlp2(h[:, -T:], W, "action_output_layer")


def reference_chunk(W, config, inputs, state, noise, action_mask):
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration
    from transformers.cache_utils import DynamicCache

    vcfg = Qwen3VLConfig(**{k: copy.deepcopy(v) for k, v in config["vlm_config"].items() if k != "model_type"})
    vlm = Qwen3VLForConditionalGeneration(vcfg).eval()
    sd = {k[len("vlm."):]: v for k, v in W.items() if k.startswith("vlm.")}
    sd["lm_head.weight"] = sd["model.language_model.embed_tokens.weight"]  # tied
    vlm.load_state_dict(sd, strict=True)
    pos, _ = vlm.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"], inputs["image_grid_thw"],
                                      attention_mask=inputs["attention_mask"])  # (3,B,S)
    cache = DynamicCache(config=vcfg.text_config)
    vlm.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], position_ids=pos,
              cache=cache, use_cache=True, pixel_values=inputs["pixel_values"],
              image_grid_thw=inputs["image_grid_thw"], mm_token_type_ids=inputs["mm_token_type_ids"])
    L = config["dit_config"]["num_hidden_layers"]
    kv = [(layer.keys, layer.values) for layer in cache.layers[len(cache.layers) - L:]]
    b, T, _ = noise.shape
    n = T + 2
    dit_pos = torch.arange(n).view(1, 1, -1).repeat(3, b, 1) + pos.max(dim=-1)[0][..., None] + 1  # (3,B,n)
    cos, sin = vlm.model.language_model.rotary_emb(noise, dit_pos)
    x = noise
    for step in range(STEPS):
        t = torch.full((b,), step / STEPS)
        x = x + reference_velocity(W, L, config["dit_config"]["head_dim"], kv, inputs["attention_mask"].bool(),
                                   cos, sin, state, x, t, action_mask) / STEPS
    return x


def test_xr0_matches_the_released_forward(tmp_path):
    config = _byte_vocab_release_config()
    W = _scaled(conftest.released_tensors(seed=3, vlm_config=config["vlm_config"]))
    rel = conftest.write_release(tmp_path / "release", W, robots=["libero_all"], config=config)
    import_release(rel, tmp_path / "imp")
    stage, _ = conftest.tiny_post_train(tmp_path / "imp", ["_view_labels=[Base View]"])  # one camera view here
    policy = stage.policy.eval()

    g = torch.Generator().manual_seed(0)
    b, A = 2, conftest.A
    action_mask = torch.zeros(b, A, dtype=torch.bool)
    action_mask[:, :7] = True
    batch = {"images": torch.rand(b, 1, 3, 56, 56, generator=g), "image_mask": torch.ones(b, 1, dtype=torch.bool),
             "instruction": ["pick up the red cube", "stack"],  # different lengths: left padding is exercised
             "state": torch.randn(b, A, generator=g) * action_mask, "action_mask": action_mask}
    noise = torch.randn(b, conftest.T, A, generator=g)
    with torch.no_grad():
        ours = policy.predict_chunk(batch, noise=noise, steps=STEPS)
        inputs = policy.backbone.prepare(batch["images"], batch["image_mask"], batch["instruction"])
        ref = reference_chunk({k: v.float() for k, v in W.items()}, config, inputs, batch["state"], noise,
                              action_mask.float())
    valid = action_mask[:, None, :].expand_as(ref)
    diff = (ours - ref)[valid].abs().max().item()
    print(f"\nparity: max |xr0 - reference| over valid dims = {diff:.3g} (|ref| max {ref.abs().max().item():.3g})")
    assert ref.abs().max() > 0.1  # a non-trivial output
    assert diff < 1e-4
    assert torch.all(ours[~valid] == 0)  # xr0 zeroes padded dims; the release leaves them to the processor


RELEASE_IMAGE_PROCESSOR = {"image_processor_type": "Qwen2VLImageProcessor", "patch_size": 14, "merge_size": 2,
                           "temporal_patch_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
                           "min_pixels": 56 * 56, "max_pixels": 28 * 28 * 16, "resample": 3}
VIEWS = ["Base View", "Left-Wrist View"]


def released_preprocessing(images, instruction, config, tok):
    """The release's processor call, written from its public README and processor: the deployment prompt, one
    `<|image_pad|>` per image expanded to grid.prod() // merge² tokens, Qwen2-VL image processing."""
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    proc = Qwen2VLImageProcessorPil(**{k: v for k, v in RELEASE_IMAGE_PROCESSOR.items() if k != "image_processor_type"})
    pix = proc(images=[Image.fromarray(im) for im in images], return_tensors="pt")
    prompt = ("<|im_start|>user\nThe following observations are captured from multiple views.\n"
              + "".join(f"# {v}\n<|vision_start|><|image_pad|><|vision_end|>\n" for v in VIEWS)
              + f"Generate robot actions for the task:\n{instruction} /no_cot<|im_end|>\n"
              "<|im_start|>assistant\n<cot></cot><|im_end|>\n")
    for grid in pix["image_grid_thw"]:
        prompt = prompt.replace("<|image_pad|>", "<|placeholder|>" * int(grid.prod() // 4), 1)
    ids = torch.tensor([tok.encode(prompt.replace("<|placeholder|>", "<|image_pad|>"))])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pix["pixel_values"],
            "image_grid_thw": pix["image_grid_thw"],
            "mm_token_type_ids": (ids == config["vlm_config"]["image_token_id"]).int()}


def test_raw_inputs_match_the_released_preprocessing_and_forward(tmp_path):
    from xr0_deploy.local import load_local

    tok = ByteTokenizer()
    config = _byte_vocab_release_config()
    W = _scaled(conftest.released_tensors(seed=5, vlm_config=config["vlm_config"]))
    rel = conftest.write_release(tmp_path / "release", W, robots=["libero_all"], config=config,
                                 image_processor=RELEASE_IMAGE_PROCESSOR)
    pre_path = rel / "preprocessor_config.json"
    pre = json.loads(pre_path.read_text())
    ac = pre["action_config"]["libero_all"]
    for t in range(2, conftest.T):  # dim 6 is active in the first two chunk steps only: the mask is per timestep
        ac["std"][t][6] = 0.0
    pre_path.write_text(json.dumps(pre))
    import_release(rel, tmp_path / "imp", cameras=["base", "wrist"], view_labels=VIEWS)

    g = np.random.default_rng(0)
    frames = [g.integers(0, 256, (60, 100, 3), dtype=np.uint8) for _ in VIEWS]  # native camera size, uint8
    state = g.normal(0.4, 1.5, 8)  # LIBERO-like 8-D state in robot units; the release pads it to 32 with zeros
    instruction = "put the bowl on the plate"
    mean, std = torch.tensor(ac["mean"]), torch.tensor(ac["std"])  # (T, 32) per timestep
    action_mask = (std > 1e-5).float()[None]  # (1, T, 32): the release's per-timestep mask
    raw_state = torch.zeros(1, conftest.S)
    raw_state[0, :8] = torch.tensor(state, dtype=torch.float32)
    with torch.no_grad():
        inputs = released_preprocessing(frames, instruction, config, tok)
        torch.manual_seed(42)  # the release reseeds before drawing its noise, on every call
        noise = torch.randn_like(action_mask)
        ref = reference_chunk({k: v.float() for k, v in W.items()}, config, inputs, raw_state, noise, action_mask)
        ref = ref[0] * std + mean  # (T, 32) decode_action
    dims = action_mask[0].bool().any(0)
    obs = {"state": np.concatenate([state, np.zeros(conftest.S - 8)]), "prompt": instruction,
           "images": {"base": frames[0], "wrist": frames[1]}}
    for fast in ("off", "auto"):
        ours = load_local(str(tmp_path / "imp"), fast=fast, noise_seed=42).reply(obs)
        diff = float(np.abs(ours.actions - ref[:, dims].numpy()).max())
        print(f"\nraw-input parity ({fast}): max |xr0 - release reference| = {diff:.3g} "
              f"(|actions| max {ref[:, dims].abs().max().item():.3g})")
        assert ref[:, dims].abs().max() > 0.5 and ours.clipped == 0
        assert diff <= 1e-5
