"""Backbone adapter over transformers' PaliGemmaForConditionalGeneration: PaliGemma 2 (SigLIP vision tower, a linear
projector, a Gemma 2 decoder), the VLM family π0 builds on (docs/method.md §1.1). It implements
xr0.backbones.protocol.Backbone with both optional capabilities (`PaliGemmaStatic`, `cost`).

Where its K/V and positions differ from Qwen3-VL's — the reason it is xr0's second family:
- positions are 1-D and start at 1 (HF's PaliGemma convention), counted over the valid tokens so left padding
  shifts nothing; the DiT continues at the next integer (Qwen3-VL: 3-axis M-RoPE, image tokens on a 2-D grid);
- the images and the instruction form one bidirectional prefix (token type 0): every prefix token's K/V has seen the
  whole prompt, later text included; answers and stage 1's appended tokens are a causal suffix (token type 1)
  (Qwen3-VL: causal throughout);
- each view is a fixed grid of patch tokens straight from SigLIP (no 2×2 merge, no deepstack); SigLIP's position
  table is interpolated (bicubic) to other image sizes, so any multiple of the patch size is taken;
- Gemma 2: embeddings scaled by √hidden, attention-logit soft-capping, sliding-window layers (the DiT reads every
  K/V of a layer, never only the window), head_dim 256 at 3B.
The prompt is PaliGemma's processor layout: `<image>`×(views·patches) `<bos>` instruction `\\n`; an answer follows
as `answer <eos>`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from xr0.backbones.common import (
    IGNORE,
    HFBackbone,
    KeepLast,
    apply_lora,
    enable_checkpointing,
    normalise,
    option_problems,
)
from xr0.backbones.tokenizer import ByteTokenizer, HFTokenizer
from xr0.registry import BACKBONES
from xr0.types import VLMContext

SPECIALS = ("<pad>", "<eos>", "<bos>", "<image>")  # the Gemma tokenizer's names; byte placeholders for tiny models
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)  # SigLIP's image processor (PaliGemma's preprocessor_config.json)


# ---------------------------------------------------------------------------------------------------- configs
def _merge(base: dict[str, Any], over: dict[str, Any] | None) -> dict[str, Any]:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for k, v in (over or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def tiny_paligemma_config(overrides: dict[str, Any] | None = None):
    """A ~0.8M-parameter PaliGemma 2 for tests and CPU runs: byte vocabulary, 4 Gemma 2 layers whose K/V match the
    tiny Qwen3-VL's (2 heads of 32, so the tiny recipes' DiT fits both), 2 SigLIP layers at 56×56 (16 patches)."""
    from transformers import PaliGemmaConfig

    tok = ByteTokenizer(SPECIALS)
    base = {
        "text_config": {"model_type": "gemma2", "vocab_size": tok.vocab_size, "hidden_size": 128,
                        "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
                        "num_key_value_heads": 2, "head_dim": 32, "query_pre_attn_scalar": 32,
                        "sliding_window": 4096, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
                        "pad_token_id": tok.special("<pad>"), "bos_token_id": tok.special("<bos>"),
                        "eos_token_id": tok.special("<eos>")},
        "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 64, "intermediate_size": 128,
                          "num_hidden_layers": 2, "num_attention_heads": 2, "patch_size": 14, "image_size": 56,
                          "vision_use_head": False},
        "image_token_index": tok.special("<image>"), "projection_dim": 128,
    }
    cfg = _merge(base, overrides)
    cfg["projection_dim"] = cfg["text_config"]["hidden_size"]  # the projector maps SigLIP into the decoder's width
    return PaliGemmaConfig(**cfg)


def paligemma2_3b_config():
    """The published PaliGemma 2 3B (224) architecture: SigLIP So400m/14 at 224² (27 layers, 1152 wide, 256 patches)
    and Gemma 2 2B (26 layers, 2304 wide, 8 heads, 4 K/V heads of 256, sliding window 4096, soft-caps 50/30), vocab
    257,216 with `<image>` at 257,152 (google/paligemma2-3b-pt-224's config.json); random init only."""
    from transformers import PaliGemmaConfig

    return PaliGemmaConfig(
        text_config={"model_type": "gemma2", "vocab_size": 257216, "hidden_size": 2304, "intermediate_size": 9216,
                     "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
                     "query_pre_attn_scalar": 256, "sliding_window": 4096, "attn_logit_softcapping": 50.0,
                     "final_logit_softcapping": 30.0, "hidden_activation": "gelu_pytorch_tanh"},
        vision_config={"model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304,
                       "num_hidden_layers": 27, "num_attention_heads": 16, "patch_size": 14, "image_size": 224,
                       "vision_use_head": False},
        image_token_index=257152, projection_dim=2304)


def _architecture(config: str | dict):
    """`paligemma2_3b`, a path to a PaliGemma config.json (or its folder), or its content."""
    from transformers import PaliGemmaConfig

    if isinstance(config, dict):
        return PaliGemmaConfig(**{k: v for k, v in config.items() if k != "model_type"})
    if config == "paligemma2_3b":
        return paligemma2_3b_config()
    path = Path(config)
    path = path / "config.json" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"backbone.config={config}: not 'paligemma2_3b' and no config.json there")
    return PaliGemmaConfig(**{k: v for k, v in json.loads(path.read_text()).items() if k != "model_type"})


class _FullKV(DynamicCache):
    """One prefill: every layer's K/V as computed. A sliding-window layer would keep only its window, hiding early
    prompt tokens from the DiT; gradient checkpointing's recompute overwrites instead of appending."""

    def __init__(self):
        super().__init__()
        self.kv: dict[int, tuple[Tensor, Tensor]] = {}

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        self.kv[layer_idx] = (key_states, value_states)
        return key_states, value_states


# ---------------------------------------------------------------------------------------------------- adapter
@BACKBONES.register("paligemma")
class PaliGemmaBackbone(HFBackbone):
    """PaliGemma 2 from a local directory (`pretrained`), the published 3B-224 architecture, or a tiny random one."""

    # `xr0 bench --backbone paligemma --scale`: the tiny random model and PaliGemma 2 3B at its native 224²
    scales = {"tiny": {"kwargs": {"tiny": {}}, "image_hw": (56, 56)},
              "paper": {"kwargs": {"config": "paligemma2_3b"}, "image_hw": (224, 224)}}

    def __init__(self, pretrained: str | None = None, tiny: dict[str, Any] | None = None, config: str | None = None,
                 freeze: bool = False, gradient_checkpointing: bool = False, lora: dict[str, Any] | None = None,
                 max_text_tokens: int = 64, dtype: str | None = None, tokenizer: str | None = None,
                 image_mean: list[float] | None = None, image_std: list[float] | None = None):
        """pretrained: a local folder with a downloaded PaliGemma (2) (weights + tokenizer); config: `paligemma2_3b`
        or a config.json without weights; neither: the tiny random model. image_mean/std: SigLIP's 0.5 by default."""
        super().__init__()
        from transformers import PaliGemmaForConditionalGeneration

        problems = self.__xr0_validate__({"lora": lora, "freeze": freeze, "dtype": dtype, "tiny": tiny})
        if problems:
            raise ValueError("; ".join(problems))
        if pretrained:
            if not (Path(pretrained) / "config.json").is_file():
                raise FileNotFoundError(f"backbone.pretrained={pretrained}: no config.json there; point it at a local "
                                        f"directory holding a downloaded PaliGemma (weights + tokenizer)")
            self.model = PaliGemmaForConditionalGeneration.from_pretrained(
                pretrained, local_files_only=True, dtype=getattr(torch, dtype) if dtype else "auto")
            self.tokenizer = HFTokenizer(tokenizer or pretrained)
        else:
            cfg = _architecture(config) if config else tiny_paligemma_config(tiny)
            self.tokenizer = HFTokenizer(tokenizer) if tokenizer else ByteTokenizer(SPECIALS)
            if not tokenizer:  # byte placeholders: their ids replace the real tokenizer's in a config-only build
                cfg.image_token_id = self.tokenizer.special("<image>")
            self.model = PaliGemmaForConditionalGeneration(cfg)
            if dtype:
                self.model.to(getattr(torch, dtype))
        cfg = self.model.config
        text, vis = cfg.text_config, cfg.vision_config
        self.hidden_size, self.num_layers = text.hidden_size, text.num_hidden_layers
        self.num_kv_heads, self.head_dim = text.num_key_value_heads, text.head_dim
        self.patch, self.native = vis.patch_size, vis.image_size
        self.image_mean, self.image_std = tuple(image_mean or SIGLIP_MEAN), tuple(image_std or SIGLIP_STD)
        self.max_text_tokens = max_text_tokens
        self.ids = {name: self.tokenizer.special(name) for name in SPECIALS}
        if self.ids["<image>"] != cfg.image_token_id:
            raise ValueError(f"the tokenizer's <image> id {self.ids['<image>']} is not the model's image_token_id "
                             f"{cfg.image_token_id}: use the tokenizer that belongs to the model")
        self.frozen = False
        if gradient_checkpointing:
            enable_checkpointing(self.model, self.model.model.language_model.layers)
        if lora:
            self.model = apply_lora(self.model, lora)
        if freeze:
            self.freeze()

    @staticmethod
    def __xr0_validate__(kwargs: dict[str, Any]) -> list[str]:
        problems = option_problems(kwargs)
        if kwargs.get("tiny"):
            try:
                tiny_paligemma_config(kwargs["tiny"])
            except (KeyError, ValueError, TypeError) as e:
                problems.append(f"backbone.tiny: {e}")
        return problems

    # ------------------------------------------------------------------ contract: spec, freezing, capabilities
    def input_spec(self) -> dict[str, Any]:
        """Sides a multiple of the patch (SigLIP's positions are interpolated off its native size); a smart resize
        aims at the native pixel count."""
        return {"factor": self.patch, "min_pixels": self.native ** 2, "max_pixels": self.native ** 2,
                "resample": "bicubic", "image_mean": list(self.image_mean), "image_std": list(self.image_std),
                "prompt": "paligemma", "view_labels": []}

    @staticmethod
    def spec_factor(kwargs: dict[str, Any]) -> int | None:
        try:
            if kwargs.get("pretrained"):
                cfg = Path(kwargs["pretrained"]) / "config.json"
                return json.loads(cfg.read_text()).get("vision_config", {}).get("patch_size", 14) \
                    if cfg.is_file() else None
            cfg = _architecture(kwargs["config"]) if kwargs.get("config") else tiny_paligemma_config(kwargs.get("tiny"))
            return cfg.vision_config.patch_size
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def static_prefill(self) -> PaliGemmaStatic:
        return PaliGemmaStatic(self)

    def cost(self, n_images: int, h: int, w: int, vlm_tokens: int, batch: int, dtype_bytes: int,
             kv_layers: int) -> dict[str, Any]:
        from xr0.flops import prefill_cost

        cfg = self.hf.config
        text = cfg.text_config
        return {"vision": siglip_cost(cfg.vision_config, cfg.projection_dim, n_images, h, w, dtype_bytes),
                "prefill": prefill_cost(text, vlm_tokens, batch, dtype_bytes, kv_layers,
                                        norm_params=4 * text.hidden_size)}  # Gemma 2: norms around attn and MLP

    def fsdp_wrap_modules(self) -> set[type]:
        m = self.hf.model
        return {type(m.language_model.layers[0]), type(m.vision_tower.vision_model.encoder.layers[0])}

    # ------------------------------------------------------------------ inputs
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _pixels(self, images: Tensor, image_mask: Tensor | None, mean: Any, std: Any) -> Tensor:
        """(B,V,3,H,W) in [0,1] → normalised (B·V,3,H,W); a missing camera is a zero frame (tokens kept)."""
        b, v, c, h, w = images.shape
        if h % self.patch or w % self.patch:
            raise ValueError(f"image size {h}x{w} must be a multiple of the SigLIP patch {self.patch}; set data.image_size "
                             f"to e.g. {max(1, round(h / self.patch)) * self.patch}")
        if image_mask is not None:
            images = images * image_mask.to(images.dtype)[:, :, None, None, None]
        return normalise(images.reshape(b * v, c, h, w), mean, std)

    def _ids(self, n_image: int, text: str, answer: str | None) -> tuple[list[int], int]:
        """PaliGemma's layout: images, <bos>, the instruction, a newline (the prefix); then `answer <eos>`."""
        tok = self.tokenizer
        ids = [self.ids["<image>"]] * n_image + [self.ids["<bos>"]] + tok.encode(text)[: self.max_text_tokens]
        ids += tok.encode("\n")
        n_prefix = len(ids)
        if answer is not None:
            ids += tok.encode(answer)[: self.max_text_tokens] + [self.ids["<eos>"]]
        return ids, n_prefix

    def prepare(self, images: Tensor, image_mask: Tensor | None, texts: list[str],
                answers: list[str] | None = None) -> dict[str, Tensor]:
        """images (B,V,3,H,W) in [0,1] → left-padded input_ids, attention_mask, token_type_ids (1 on the answer),
        position_ids (1-based over valid tokens), pixel_values (B·V,3,H,W), and labels when answers are given."""
        device = self._device()
        b, v, _, h, w = images.shape
        pixels = self._pixels(images.to(device, torch.float32), image_mask, self.image_mean, self.image_std)
        n_image = v * (h // self.patch) * (w // self.patch)
        seqs = [self._ids(n_image, t, None if answers is None else answers[i]) for i, t in enumerate(texts)]
        length = max(len(s) for s, _ in seqs)
        ids = torch.full((b, length), self.ids["<pad>"], dtype=torch.long)
        attn, types = torch.zeros(b, length, dtype=torch.long), torch.zeros(b, length, dtype=torch.long)
        labels = torch.full((b, length), IGNORE, dtype=torch.long)
        for i, (seq, n_prefix) in enumerate(seqs):
            start = length - len(seq)
            ids[i, start:], attn[i, start:] = torch.tensor(seq), 1
            types[i, start + n_prefix:] = 1
            labels[i, start + n_prefix:] = torch.tensor(seq[n_prefix:], dtype=torch.long)
        out = {"input_ids": ids, "attention_mask": attn, "token_type_ids": types, "position_ids": attn.cumsum(1) * attn}
        out = {k: t.to(device) for k, t in out.items()}
        out["pixel_values"] = pixels.to(self.hf.dtype)
        if answers is not None:
            out["labels"] = labels.to(device)
        return out

    # ------------------------------------------------------------------ forward
    def encode_images(self, inputs: dict[str, Any]) -> Tensor:
        """SigLIP + the projector: (B·V, patches, hidden)."""
        out = self.hf.model.get_image_features(inputs["pixel_values"], interpolate_pos_encoding=True)
        return out.pooler_output

    def _append_extra(self, inputs: dict[str, Tensor], n: int) -> dict[str, Tensor]:
        """n causal suffix tokens after each prompt (their embeddings replaced in the forward), positions continuing."""
        b, dev = inputs["input_ids"].shape[0], inputs["input_ids"].device
        after = inputs["position_ids"].amax(dim=1, keepdim=True) + 1 + torch.arange(n, device=dev)  # (B,n)
        ones = torch.ones(b, n, dtype=torch.long, device=dev)
        return {**inputs, "input_ids": torch.cat([inputs["input_ids"], ones * self.ids["<pad>"]], 1),
                "attention_mask": torch.cat([inputs["attention_mask"], ones], 1),
                "token_type_ids": torch.cat([inputs["token_type_ids"], ones], 1),
                "position_ids": torch.cat([inputs["position_ids"], after], 1)}

    def _forward(self, inputs: dict[str, Tensor], extra_embeds: Tensor | None, lm_head: bool = False):
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        hf = self.hf
        if extra_embeds is not None:
            inputs = self._append_extra(inputs, extra_embeds.shape[1])
        images = {"image": BaseModelOutputWithPooling(pooler_output=self.encode_images(inputs))}
        handle = None
        if extra_embeds is not None:
            n = extra_embeds.shape[1]
            handle = hf.get_input_embeddings().register_forward_hook(
                lambda _m, _a, out: torch.cat([out[:, :-n], extra_embeds.to(out.dtype)], dim=1))
        try:
            cache = _FullKV()
            args = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids", "token_type_ids")}
            if lm_head:  # the whole model: Gemma 2's final logit soft-capping included
                return hf(**args, mm_encoder_outputs=images).logits, inputs
            out = hf.model(**args, mm_encoder_outputs=images, cache=cache, use_cache=True)
        finally:
            if handle is not None:
                handle.remove()
        return out, cache, inputs

    def context(self, inputs: dict[str, Tensor], num_layers: int, extra_embeds: Tensor | None = None) -> VLMContext:
        """One forward with the cache on; the last `num_layers` layers' K/V (all of it, sliding layers too)."""
        if num_layers > self.num_layers:
            raise ValueError(f"asked for the last {num_layers} VLM layers but the VLM has {self.num_layers}")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            out, cache, inputs = self._forward(inputs, extra_embeds)
        kept = [cache.kv[i] for i in range(self.num_layers - num_layers, self.num_layers)]
        hidden = out.last_hidden_state  # (B,S,D)
        n = 0 if extra_embeds is None else extra_embeds.shape[1]
        rotary = self.hf.model.language_model.rotary_emb
        return VLMContext(keys=[k for k, _ in kept], values=[v for _, v in kept],  # each (B, kv_heads, S, hd)
                          attention_mask=inputs["attention_mask"].bool(),
                          next_position=inputs["position_ids"].amax(dim=1) + 1,  # (B,) 1-D positions
                          rope=lambda positions: rotary(hidden, positions),
                          hidden=hidden[:, : hidden.shape[1] - n],
                          extra_hidden=hidden[:, hidden.shape[1] - n:] if n else None)

    def lm_loss(self, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Next-token cross-entropy on the answer (the causal suffix); logits and labels unshifted."""
        if "labels" not in inputs:
            raise ValueError("lm_loss needs labels: call prepare(..., answers=[...])")
        logits, _ = self._forward(inputs, None, lm_head=True)
        labels = inputs["labels"]
        loss = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                           ignore_index=IGNORE)
        return loss, logits, labels


def siglip_cost(vision_config: Any, projection_dim: int, n_images: int, h: int, w: int, dtype_bytes: int):
    """SigLIP + PaliGemma's projector on n_images of h×w (attention per image), counted as xr0.flops counts."""
    from xr0.flops import Cost, matmul

    c = vision_config
    d, i, p = c.hidden_size, c.intermediate_size, c.patch_size
    n = (h // p) * (w // p)
    tokens, patch_in = n_images * n, c.num_channels * p * p
    layer = 4 * matmul(tokens, d, d) + 2 * matmul(tokens, d, i) + n_images * 2 * matmul(n, n, d)
    flops = matmul(tokens, patch_in, d) + c.num_hidden_layers * layer + matmul(tokens, d, projection_dim)
    layer_params = 4 * d + 4 * (d * d + d) + (d * i + i) + (i * d + d)
    params = (patch_in * d + d + (c.image_size // p) ** 2 * d + c.num_hidden_layers * layer_params + 2 * d
              + d * projection_dim + projection_dim)
    return Cost(flops, (params + n_images * c.num_channels * h * w) * dtype_bytes)


# ---------------------------------------------------------------------------------------------------- fast path
@dataclass
class PaliGemmaPlan:
    """Per (instructions, views, image size): everything of a prefill that does not depend on the pixels."""

    input_ids: Tensor  # (B, S) left-padded prompt
    attention_mask: Tensor  # (B, S) bool
    image_index: Tensor  # (B·V·patches,) flat index into B·S of each image token, in order
    masks: dict[str, Any]  # layer type → the mask HF builds (bidirectional prefix, padding, sliding window)
    cos: Tensor  # (B, S, head_dim) RoPE of the prompt's 1-D positions
    sin: Tensor
    next_position: Tensor  # (B,)
    mean: Tensor  # (3,) image normalisation on the device
    std: Tensor
    views: int
    hw: tuple[int, int]


class PaliGemmaStatic:
    """PaliGemmaBackbone's declared static prefill (xr0.backbones.protocol.StaticPrefill): tokens, positions, masks
    and RoPE planned once; SigLIP, the projector and the Gemma 2 layers then run with no host sync."""

    def __init__(self, backbone: PaliGemmaBackbone):
        self.backbone = backbone

    @torch.no_grad()
    def plan(self, texts: list[str], views: int, h: int, w: int) -> PaliGemmaPlan:
        bb = self.backbone
        lm = bb.hf.model.language_model
        device = bb._device()
        inputs = bb.prepare(torch.zeros(len(texts), views, 3, h, w, device=device), None, list(texts))
        embeds = lm.embed_tokens(inputs["input_ids"])  # (B,S,D): dtype and shape for the masks and the RoPE
        kwargs = {"config": lm.config, "inputs_embeds": embeds, "attention_mask": inputs["attention_mask"],
                  "cache": None, "position_ids": inputs["position_ids"],
                  "block_sequence_ids": torch.where(inputs["token_type_ids"] == 0, 0, -1)}  # as HF's PaliGemma
        masks = {"full_attention": create_causal_mask(**kwargs)}
        if getattr(lm.config, "sliding_window", None) is not None:
            masks["sliding_attention"] = create_sliding_window_causal_mask(**kwargs)
        cos, sin = lm.rotary_emb(embeds, inputs["position_ids"])
        image_index = (inputs["input_ids"].flatten() == bb.ids["<image>"]).nonzero().flatten()
        return PaliGemmaPlan(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"].bool(), image_index=image_index,
            masks=masks, cos=cos, sin=sin, next_position=inputs["position_ids"].amax(dim=1) + 1,
            mean=torch.tensor(bb.image_mean, device=device), std=torch.tensor(bb.image_std, device=device),
            views=views, hw=(h, w))

    def tokens(self, plan: PaliGemmaPlan) -> int:
        return int(plan.input_ids.shape[1])

    def vision(self, plan: PaliGemmaPlan, images: Tensor, image_mask: Tensor | None) -> list[Tensor]:
        """[image embeddings (B·V·patches, hidden)]."""
        _, v, _, h, w = images.shape
        if (v, h, w) != (plan.views, *plan.hw):
            raise ValueError(f"images of {v} views at {h}x{w} do not fit this plan ({plan.views} views at "
                             f"{plan.hw[0]}x{plan.hw[1]}): plan the prompt again")
        bb = self.backbone
        pixels = bb._pixels(images, image_mask, plan.mean, plan.std).to(bb.hf.dtype)
        return [bb.encode_images({"pixel_values": pixels}).flatten(0, 1)]

    def prefill(self, plan: PaliGemmaPlan, seen: list[Tensor], num_layers: int) -> tuple[list[Tensor], list[Tensor]]:
        """Gemma 2 over the planned prompt with the image embeddings in place → the last `num_layers` layers' K/V."""
        lm = self.backbone.hf.model.language_model
        b, s = plan.input_ids.shape
        hidden = lm.embed_tokens(plan.input_ids)  # (B,S,D), scaled by √hidden inside the embedding
        d = hidden.shape[-1]
        hidden = hidden.reshape(b * s, d).index_copy(0, plan.image_index, seen[0].to(hidden.dtype)).view(b, s, d)
        cache = KeepLast(self.backbone.num_layers - num_layers)
        types = getattr(lm.config, "layer_types", None) or ["full_attention"] * len(lm.layers)
        for layer, kind in zip(lm.layers, types):
            hidden = layer(hidden, position_embeddings=(plan.cos, plan.sin), attention_mask=plan.masks[kind],
                           cache=cache)
        return cache.keys, cache.values

    def context(self, plan: PaliGemmaPlan, keys: list[Tensor], values: list[Tensor]) -> VLMContext:
        rotary, like = self.backbone.hf.model.language_model.rotary_emb, plan.cos[:, :0]  # `like`: device, dtype
        return VLMContext(keys=list(keys), values=list(values), attention_mask=plan.attention_mask,
                          next_position=plan.next_position, rope=lambda positions: rotary(like, positions))
