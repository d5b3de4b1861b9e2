"""Backbone adapter over transformers' Qwen3VLForConditionalGeneration (docs/method.md §1.1); it implements
xr0.backbones.protocol.Backbone, with both optional capabilities: a static prefill plan (xr0.backbones.qwen3vl_static)
and an analytic cost.

`prepare` turns images + instructions into model inputs (the tokenizer's chat template and our own torch
patchify, so nothing depends on the torchvision-backed processors); `context` runs one forward with
use_cache=True and hands the DiT the last K layers' rotated K/V, the padding mask, the next free position and
the VLM's rotary function. Prompts are LEFT-padded, so stage-1 extra tokens appended at the end sit right
after every prompt. A missing camera (image_mask False) is fed as an all-zero frame with its image tokens
kept, so shapes stay static across batches and the VLM sees a black image.
"""
from __future__ import annotations

import json
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers.cache_utils import DynamicCache
from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

from xr0.backbones.common import IGNORE, HFBackbone, apply_lora, enable_checkpointing, option_problems
from xr0.backbones.configs import tiny_qwen3vl_config
from xr0.backbones.images import CLIP_MEAN, CLIP_STD, MAX_PIXELS, MIN_PIXELS, patchify, read_preprocessor
from xr0.backbones.qwen3vl_static import Qwen3VLStatic, encode_images, vision_tables
from xr0.backbones.tokenizer import PROMPTS, ByteTokenizer, HFTokenizer, release_prompt
from xr0.registry import BACKBONES
from xr0.types import VLMContext

VISION_TABLES = 16  # image layouts whose vision tables are kept (least recently used dropped)


class _PrefillCache(DynamicCache):
    """One prefill only: a second update of a layer (gradient checkpointing's recompute) overwrites it,
    so the cache can stay on under checkpointing."""

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if layer_idx < len(self.layers) and layer_idx in getattr(self, "_filled", set()):
            self.layers[layer_idx].keys, self.layers[layer_idx].values = key_states, value_states
            return key_states, value_states
        self._filled = getattr(self, "_filled", set()) | {layer_idx}
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)


def _architecture(config: str | dict):
    """`qwen3vl_4b` (the published 4B architecture), a path to a Qwen3-VL config.json, or its content (a dict, as
    `xr0 import-release` records the release's VLM)."""
    import copy

    from transformers import Qwen3VLConfig

    from xr0.backbones.configs import qwen3vl_4b_config

    if isinstance(config, dict):
        return Qwen3VLConfig(**{k: copy.deepcopy(v) for k, v in config.items() if k != "model_type"})
    if config == "qwen3vl_4b":
        return qwen3vl_4b_config()
    path = Path(config)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"backbone.config={config}: not 'qwen3vl_4b' and no config.json there")
    return Qwen3VLConfig(**json.loads(path.read_text()))


@BACKBONES.register("qwen3vl")
class Qwen3VLBackbone(HFBackbone):
    """Qwen3-VL from a local directory (`pretrained`) or a tiny random config; KV cache for the DiT."""

    # `xr0 bench --scale`: the tiny random model (CPU, CI) and the published 4B architecture (random weights)
    scales = {"tiny": {"kwargs": {"tiny": {}}, "image_hw": (56, 56)},
              "paper": {"kwargs": {"config": "qwen3vl_4b"}, "image_hw": (256, 320)}}

    def __init__(self, pretrained: str | None = None, tiny: dict[str, Any] | None = None, freeze: bool = False,
                 gradient_checkpointing: bool = False, lora: dict[str, Any] | None = None,
                 max_text_tokens: int = 64, dtype: str | None = None, config: str | None = None,
                 tokenizer: str | None = None, preprocessor: str | dict | None = None,
                 image_mean: list[float] | None = None, image_std: list[float] | None = None,
                 prompt: str = "chat", view_labels: list[str] | None = None):
        """preprocessor: a Qwen-VL preprocessor_config.json (or its folder) giving pixel mean/std, pixel budget and
        resample filter (default: the one in `pretrained`, if any; else CLIP mean/std); image_mean/image_std override
        it. prompt: `chat` (the tokenizer's chat template) or `release` (the Xiaomi-Robotics-0 deployment prompt,
        one "# <view label>" line per camera from view_labels)."""
        super().__init__()
        from transformers import Qwen3VLForConditionalGeneration

        problems = self.__xr0_validate__({"lora": lora, "freeze": freeze, "dtype": dtype, "prompt": prompt,
                                          "view_labels": view_labels})
        if problems:
            raise ValueError("; ".join(problems))

        pre = read_preprocessor(preprocessor) if preprocessor else {}
        if pretrained:
            path = Path(pretrained)
            if not (path / "config.json").is_file():
                raise FileNotFoundError(f"backbone.pretrained={pretrained}: no config.json there; point it at a local "
                                        f"directory holding a downloaded Qwen3-VL (weights + tokenizer)")
            self.model = Qwen3VLForConditionalGeneration.from_pretrained(
                path, local_files_only=True, dtype=getattr(torch, dtype) if dtype else "auto")
            self.tokenizer = HFTokenizer(str(path))
            if not preprocessor and (path / "preprocessor_config.json").is_file():
                pre = read_preprocessor(path)
        elif config:  # an architecture without weights (they come from init_from, or the run is a benchmark)
            arch = _architecture(config)
            self.tokenizer = HFTokenizer(tokenizer) if tokenizer else ByteTokenizer()
            if not tokenizer:  # the byte placeholder: its image/vision ids replace the real tokenizer's in the config
                for key, name in (("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
                                  ("vision_start_token_id", "<|vision_start|>"),
                                  ("vision_end_token_id", "<|vision_end|>")):
                    setattr(arch, key, self.tokenizer.special(name))
            self.model = Qwen3VLForConditionalGeneration(arch)
        else:
            self.model = Qwen3VLForConditionalGeneration(tiny_qwen3vl_config(tiny))
            self.tokenizer = ByteTokenizer()
        if dtype and not pretrained:  # random init is float32; the benchmark runs the 4B architecture in bf16
            self.model.to(getattr(torch, dtype))
        if tokenizer and not isinstance(self.tokenizer, HFTokenizer):
            self.tokenizer = HFTokenizer(tokenizer)
        self.image_mean = tuple(image_mean or pre.get("image_mean", CLIP_MEAN))
        self.image_std = tuple(image_std or pre.get("image_std", CLIP_STD))
        self.prompt, self.view_labels = prompt, list(view_labels or [])
        cfg = self.model.config
        # a real tokenizer must fit the model; the byte fallback on a config-only build is a placeholder
        if isinstance(self.tokenizer, HFTokenizer) and self.tokenizer.vocab_size > cfg.text_config.vocab_size:
            raise ValueError(f"the tokenizer has {self.tokenizer.vocab_size} tokens but the VLM's vocabulary only "
                             f"{cfg.text_config.vocab_size}; use the tokenizer that belongs to the model")
        text = cfg.text_config
        self.hidden_size, self.num_layers = text.hidden_size, text.num_hidden_layers
        self.num_kv_heads, self.head_dim = text.num_key_value_heads, text.head_dim
        vis = cfg.vision_config
        self.patch, self.merge, self.temporal = vis.patch_size, vis.spatial_merge_size, vis.temporal_patch_size
        for key, mine in (("patch_size", self.patch), ("merge_size", self.merge)):
            if key in pre and pre[key] != mine:
                raise ValueError(f"backbone.preprocessor: {key} {pre[key]} but the VLM's vision config has {mine}: "
                                 f"use the preprocessor that belongs to the model")
        self.pixels = (pre.get("min_pixels", MIN_PIXELS), pre.get("max_pixels", MAX_PIXELS))
        self.resample = pre.get("resample", "bicubic")
        self.max_text_tokens = max_text_tokens
        self._vision_tables: OrderedDict[tuple, tuple[Tensor, ...]] = OrderedDict()  # LRU, VISION_TABLES entries
        self.frozen = False
        if gradient_checkpointing:  # safe with _PrefillCache (overwrites on recompute)
            enable_checkpointing(self.model, self.model.model.language_model.layers)
        if lora:
            self.model = apply_lora(self.model, lora)
        if freeze:
            self.freeze()

    @staticmethod
    def __xr0_validate__(kwargs: dict[str, Any]) -> list[str]:
        """Recipe checks that need no model or files: LoRA keys, tiny-config keys, freeze vs LoRA (weights folders
        are checked when built: recipes are validated on machines without them)."""
        problems = option_problems(kwargs)
        if kwargs.get("prompt", "chat") not in PROMPTS:
            problems.append(f"backbone.prompt={kwargs['prompt']!r}: use one of {list(PROMPTS)}")
        if kwargs.get("prompt") == "release" and not kwargs.get("view_labels"):
            problems.append("backbone.prompt: release needs backbone.view_labels, one label per camera (e.g. "
                            "['Base View', 'Left-Wrist View'])")
        tiny = kwargs.get("tiny")
        if tiny:
            try:
                tiny_qwen3vl_config(tiny)
            except (KeyError, ValueError, TypeError) as e:
                problems.append(f"backbone.tiny: {e}")
        return problems

    def input_spec(self) -> dict[str, Any]:
        """What the processor needs from this backbone (xr0.processor): image sides a multiple of `factor`, the
        smart-resize pixel budget and filter; and what it applies itself (pixel mean/std, prompt), for the record."""
        return {"factor": self.patch * self.merge, "min_pixels": int(self.pixels[0]), "max_pixels": int(self.pixels[1]),
                "resample": self.resample, "image_mean": list(self.image_mean), "image_std": list(self.image_std),
                "prompt": self.prompt, "view_labels": list(self.view_labels)}

    @staticmethod
    def spec_factor(kwargs: dict[str, Any]) -> int | None:
        """patch·merge from recipe kwargs without building the model (None when the sizes are not on this machine)."""
        try:
            if kwargs.get("pretrained"):
                cfg = Path(kwargs["pretrained"]) / "config.json"
                vis = json.loads(cfg.read_text()).get("vision_config", {}) if cfg.is_file() else None
                return None if vis is None else vis.get("patch_size", 16) * vis.get("spatial_merge_size", 2)
            vis = (_architecture(kwargs["config"]) if kwargs.get("config") else tiny_qwen3vl_config(kwargs.get("tiny")))
            return vis.vision_config.patch_size * vis.vision_config.spatial_merge_size
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def static_prefill(self) -> Qwen3VLStatic:
        """Declared capability: the planned, sync-free prefill FastPolicy chains (xr0.backbones.qwen3vl_static)."""
        return Qwen3VLStatic(self)

    def cost(self, n_images: int, h: int, w: int, vlm_tokens: int, batch: int, dtype_bytes: int,
             kv_layers: int) -> dict[str, Any]:
        """Declared capability: analytic FLOPs and bytes of the vision tower and the prefill (xr0.flops)."""
        from xr0 import flops

        cfg = self.hf.config
        return {"vision": vision_cost(cfg.vision_config, n_images, h, w, dtype_bytes),
                "prefill": flops.prefill_cost(cfg.text_config, vlm_tokens, batch, dtype_bytes, kv_layers)}

    def encode_images(self, inputs: dict[str, Any]) -> Any:
        """HF's own vision tower + mergers on prepared inputs (per image, with its host syncs)."""
        return self.hf.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])

    # ------------------------------------------------------------------ inputs
    def _prompt_ids(self, n_views: int, tokens_per_view: int, text: str, answer: str | None) -> tuple[list[int], int]:
        tok = self.tokenizer
        text_ids = tok.encode(text)
        if len(text_ids) > self.max_text_tokens:  # truncate the instruction, never the template around it
            text = tok.decode(text_ids[: self.max_text_tokens])
        if self.prompt == "release":
            if len(self.view_labels) != n_views:
                raise ValueError(f"backbone.view_labels has {len(self.view_labels)} labels for {n_views} camera views")
            ids = tok.encode(release_prompt(self.view_labels, text))
        else:
            ids = tok.encode(tok.chat_prompt(n_views, text))
        pad = tok.special("<|image_pad|>")
        if ids.count(pad) != n_views:
            raise ValueError(f"the chat template rendered {ids.count(pad)} <|image_pad|> tokens for {n_views} camera "
                             f"views (instruction {text!r}); the template must place one per image")
        ids = [j for i in ids for j in ([pad] * tokens_per_view if i == pad else [i])]  # one pad per merged patch
        n_prompt = len(ids)
        if answer is not None:
            ids += tok.encode(answer)[: self.max_text_tokens] + [tok.special("<|im_end|>")]
        return ids, n_prompt

    def prepare(self, images: Tensor, image_mask: Tensor | None, texts: list[str],
                answers: list[str] | None = None) -> dict[str, Tensor]:
        """images (B,V,3,H,W) in [0,1] → left-padded input_ids, attention_mask, mm_token_type_ids,
        pixel_values, image_grid_thw (and labels on the answer tokens when `answers` is given)."""
        device = next(self.model.parameters()).device
        b, v, c, h, w = images.shape
        images = images.to(device=device, dtype=torch.float32)
        if image_mask is not None:  # a missing camera is fed as a zero frame: shapes stay static
            images = images * image_mask.to(device=device, dtype=images.dtype)[:, :, None, None, None]
        pixel_values, grid = patchify(images.reshape(b * v, c, h, w), self.patch, self.merge, self.temporal,
                                      self.image_mean, self.image_std)
        tokens_per_view = (h // self.patch) * (w // self.patch) // (self.merge ** 2)
        seqs = [self._prompt_ids(v, tokens_per_view, t, None if answers is None else answers[i])
                for i, t in enumerate(texts)]
        length = max(len(s) for s, _ in seqs)
        pad = self.tokenizer.special("<|endoftext|>")
        img = self.tokenizer.special("<|image_pad|>")
        input_ids = torch.full((b, length), pad, dtype=torch.long)
        attn = torch.zeros(b, length, dtype=torch.long)
        labels = torch.full((b, length), IGNORE, dtype=torch.long)
        for i, (ids, n_prompt) in enumerate(seqs):
            input_ids[i, length - len(ids):] = torch.tensor(ids)
            attn[i, length - len(ids):] = 1
            labels[i, length - len(ids) + n_prompt:] = torch.tensor(ids[n_prompt:], dtype=torch.long)
        mm = (input_ids == img).int()
        # M-RoPE positions on the host tensors: HF's rope index loops per sample with host syncs on the device
        grid_host = torch.tensor([[1, h // self.patch, w // self.patch]] * (b * v), dtype=torch.long)
        positions, _ = self.hf.model.get_rope_index(input_ids, mm, grid_host, attention_mask=attn)  # (3,B,S)
        out = {"input_ids": input_ids.to(device), "attention_mask": attn.to(device), "mm_token_type_ids": mm.to(device),
               "pixel_values": pixel_values.to(self.hf.dtype), "image_grid_thw": grid,
               "image_layout": (b * v, h // self.patch, w // self.patch), "position_ids": positions.to(device)}
        if answers is not None:
            out["labels"] = labels.to(device)
        return out

    # ------------------------------------------------------------------ forward
    def _append_extra(self, inputs: dict[str, Tensor], n: int) -> dict[str, Tensor]:
        b = inputs["input_ids"].shape[0]
        dev = inputs["input_ids"].device
        extra = torch.full((b, n), self.tokenizer.special("<|extra|>"), dtype=torch.long, device=dev)
        out = {}
        if "position_ids" in inputs:  # text tokens after the prompt: one position each, the same on all 3 axes
            pos = inputs["position_ids"]  # (3,B,S)
            after = pos.amax(dim=(0, 2))[None, :, None] + 1 + torch.arange(n, device=pos.device)  # (1,B,n)
            out["position_ids"] = torch.cat([pos, after.expand(3, b, n)], dim=2)
        return {**inputs, **out,
                "input_ids": torch.cat([inputs["input_ids"], extra], 1),
                "attention_mask": torch.cat([inputs["attention_mask"], torch.ones(b, n, dtype=torch.long, device=dev)], 1),
                "mm_token_type_ids": torch.cat([inputs["mm_token_type_ids"], torch.zeros(b, n, dtype=torch.int, device=dev)], 1)}

    def _forward(self, inputs: dict[str, Tensor], extra_embeds: Tensor | None, lm_head: bool = False):
        hf = self.hf
        if extra_embeds is not None:
            inputs = self._append_extra(inputs, extra_embeds.shape[1])
        position_ids = inputs.get("position_ids")
        if position_ids is None:  # inputs not from prepare: HF's rope index (loops per sample, syncs)
            position_ids, _ = hf.model.get_rope_index(
                inputs["input_ids"], inputs["mm_token_type_ids"], inputs["image_grid_thw"],
                attention_mask=inputs["attention_mask"])  # (3,B,S)
        handle = None
        if extra_embeds is not None:
            n = extra_embeds.shape[1]

            def put_extra(_module, _args, out):  # the learnable tokens replace the placeholder embeddings
                return torch.cat([out[:, :-n], extra_embeds.to(out.dtype)], dim=1)

            handle = hf.get_input_embeddings().register_forward_hook(put_extra)
        try:
            cache = _PrefillCache(config=hf.config.text_config)
            out = hf.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                           position_ids=position_ids, cache=cache, use_cache=True,
                           image_grid_thw=inputs["image_grid_thw"], mm_token_type_ids=inputs["mm_token_type_ids"],
                           **self._images(inputs))
        finally:
            if handle is not None:
                handle.remove()
        logits = hf.lm_head(out.last_hidden_state) if lm_head else None
        return out, cache, position_ids, inputs["attention_mask"], logits

    def vision_tables(self, inputs: dict[str, Any]) -> tuple[Tensor, ...]:
        """Position-embedding taps/weights and vision RoPE of `prepare`'s image layout, computed once per layout
        and device (HF's helpers sync with the host)."""
        key = (inputs["image_layout"], inputs["pixel_values"].device)
        if key not in self._vision_tables:
            self._vision_tables[key] = vision_tables(self.hf.model.visual, inputs["image_grid_thw"])
            while len(self._vision_tables) > VISION_TABLES:  # a client cannot grow a server's memory with sizes
                self._vision_tables.popitem(last=False)
        self._vision_tables.move_to_end(key)
        return self._vision_tables[key]

    def _images(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The vision tower's output for HF's forward: batched over equal-size images, no host sync (tables
        cached per image layout), where `prepare` recorded the layout; else HF's own per-image path."""
        layout = inputs.get("image_layout")
        if layout is None:
            return {"pixel_values": inputs["pixel_values"]}
        embeds, deepstack = encode_images(self.hf.model.visual, inputs["pixel_values"], layout[0],
                                          self.vision_tables(inputs))
        return {"mm_encoder_outputs": {"image": BaseModelOutputWithDeepstackFeatures(
            pooler_output=(embeds,), deepstack_features=[(d,) for d in deepstack])}}

    def context(self, inputs: dict[str, Tensor], num_layers: int, extra_embeds: Tensor | None = None) -> VLMContext:
        """One forward with the KV cache on; the last `num_layers` layers' K/V go to the DiT."""
        if num_layers > self.num_layers:
            raise ValueError(f"asked for the last {num_layers} VLM layers but the VLM has {self.num_layers}")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            out, cache, pos, attn, _ = self._forward(inputs, extra_embeds)
        layers = cache.layers[len(cache.layers) - num_layers:]
        hidden = out.last_hidden_state  # (B,S,D)
        n = 0 if extra_embeds is None else extra_embeds.shape[1]
        rotary = self.hf.model.language_model.rotary_emb
        return VLMContext(
            keys=[layer.keys for layer in layers],  # each (B, kv_heads, S, head_dim), rotated
            values=[layer.values for layer in layers],
            attention_mask=attn.bool(),
            next_position=pos.amax(dim=(0, 2)) + 1,  # (B,) first free M-RoPE position
            rope=lambda positions: rotary(hidden, positions),  # text positions: same index on all three axes
            hidden=hidden[:, : hidden.shape[1] - n],
            extra_hidden=hidden[:, hidden.shape[1] - n:] if n else None)

    def lm_loss(self, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Next-token cross-entropy on the answer tokens only; logits and labels unshifted (HF convention)."""
        if "labels" not in inputs:
            raise ValueError("lm_loss needs labels: call prepare(..., answers=[...])")
        _, _, _, _, logits = self._forward(inputs, None, lm_head=True)
        labels = inputs["labels"]
        loss = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                           ignore_index=IGNORE)
        return loss, logits, labels

    def fsdp_wrap_modules(self) -> set[type]:
        """The decoder layers. Not the vision blocks: the batched vision path (`qwen3vl_static.encode_images`) calls
        their norm/attention/MLP directly, so a unit of their own would never be gathered."""
        return {type(self.hf.model.language_model.layers[0])}


def vision_cost(vision_config: Any, n_images: int, h: int, w: int, dtype_bytes: int):
    """Qwen3-VL vision tower forward on n_images of h×w (attention is per image), counted as xr0.flops counts."""
    from xr0.flops import Cost, matmul

    c = vision_config
    d, i, p, tp = c.hidden_size, c.intermediate_size, c.patch_size, c.temporal_patch_size
    merge2 = c.spatial_merge_size ** 2
    patch_in = c.in_channels * tp * p * p  # an image is repeated over the temporal patch
    n = (h // p) * (w // p)  # patches per image
    tokens = n_images * n
    merged = tokens // merge2
    md = d * merge2
    block = (matmul(tokens, d, 3 * d) + matmul(tokens, d, d) + 2 * matmul(tokens, d, i)
             + n_images * 2 * matmul(n, n, d))
    merger = matmul(merged, md, md) + matmul(merged, md, c.out_hidden_size)
    mergers = 1 + len(c.deepstack_visual_indexes)
    flops = matmul(tokens, patch_in, d) + c.depth * block + mergers * merger
    block_params = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * i + i) + (i * d + d)
    merger_params = (md * md + md) + (md * c.out_hidden_size + c.out_hidden_size)
    params = (patch_in * d + d + c.num_position_embeddings * d + c.depth * block_params
              + mergers * merger_params + 2 * d + len(c.deepstack_visual_indexes) * 2 * md)
    return Cost(flops, (params + tokens * patch_in) * dtype_bytes)


def lora_param_names(module: nn.Module) -> list[str]:
    return [n for n, _ in module.named_parameters() if re.search(r"lora_", n)]
