"""Qwen3-VL prefill with static shapes and no host syncs: the VLM half of the fast inference path (xr0.infer).

HF's forward recomputes on every call what depends only on the prompt and the image size (M-RoPE position ids,
the padding mask, the vision RoPE, the position-embedding taps) and splits vision attention per image with a
`.tolist()` host sync. `plan_prompt` computes those once; `static_context` is then pure tensor work over HF's own
modules (patch embed, vision blocks' weights, mergers, decoder layers), so a CUDA graph can capture it.
`Qwen3VLStatic` is this as the static prefill Qwen3VLBackbone declares (xr0.backbones.protocol.StaticPrefill).
tests/backbones/test_qwen3vl_static.py holds it equal to `Qwen3VLBackbone.context`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint
from transformers.masking_utils import create_causal_mask
from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb_vision
from transformers.vision_utils import get_vision_interpolation_indices_and_weights, get_vision_position_ids

from xr0.backbones.common import KeepLast
from xr0.backbones.images import pixel_patches
from xr0.types import VLMContext


@dataclass
class PromptPlan:
    """Per (instructions, views, image size): everything of a prefill that does not depend on the pixels."""

    input_ids: Tensor  # (B, S) left-padded prompt
    attention_mask: Tensor  # (B, S) bool
    image_index: Tensor  # (B·V·tokens_per_view,) flat index into B·S of each image token, in order
    causal_mask: Tensor | None  # what HF's create_causal_mask builds for this padding
    text_cos: Tensor  # (B, S, head_dim) M-RoPE of the prompt
    text_sin: Tensor
    next_position: Tensor  # (B,) first free text position
    vis_taps: Tensor  # (patches, taps) position-embedding interpolation indices
    vis_weights: Tensor  # (patches, taps)
    vis_cos: Tensor  # (patches, vision head_dim) vision RoPE
    vis_sin: Tensor
    mean: Tensor  # (3,) image normalisation on the device
    std: Tensor
    views: int
    hw: tuple[int, int]


@torch.no_grad()
def plan_prompt(backbone, texts: list[str], views: int, h: int, w: int) -> PromptPlan:
    """Tokenise, position and mask one prompt layout (host work and syncs happen here, once)."""
    hf = backbone.hf
    device = next(hf.parameters()).device
    dummy = torch.zeros(len(texts), views, 3, h, w, device=device)
    inputs = backbone.prepare(dummy, None, list(texts))
    position_ids = inputs["position_ids"]  # (3,B,S), computed by prepare on the host
    lm = hf.model.language_model
    embeds = lm.embed_tokens(inputs["input_ids"])  # (B,S,D): dtype and shape for the mask and the RoPE
    mask = create_causal_mask(config=lm.config, inputs_embeds=embeds, attention_mask=inputs["attention_mask"],
                              cache=None)
    cos, sin = lm.rotary_emb(embeds, position_ids)  # (B,S,hd)
    taps, weights, vis_cos, vis_sin = backbone.vision_tables(inputs)
    image_index = (inputs["input_ids"].flatten() == hf.config.image_token_id).nonzero().flatten()
    return PromptPlan(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"].bool(), image_index=image_index,
        causal_mask=mask, text_cos=cos, text_sin=sin, next_position=position_ids.amax(dim=(0, 2)) + 1,
        vis_taps=taps, vis_weights=weights, vis_cos=vis_cos, vis_sin=vis_sin,
        mean=torch.tensor(backbone.image_mean, device=device), std=torch.tensor(backbone.image_std, device=device),
        views=views, hw=(h, w))


def vision_tables(vis, grid: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Position-embedding taps and weights, vision RoPE cos and sin of an image grid (N, 3): HF's own helpers,
    run once per grid (they sync with the host)."""
    taps, weights = get_vision_interpolation_indices_and_weights(
        grid, num_grid_per_side=vis.num_grid_per_side, mode=vis.interpolation_mode,
        align_corners=vis.interpolation_align_corners, spatial_merge_size=vis.spatial_merge_size)
    cos, sin = vis.rotary_pos_emb(vis.pos_embed.weight, get_vision_position_ids(grid, vis.spatial_merge_size))
    return taps, weights, cos, sin


def encode_images(vis, pixels: Tensor, n_images: int, tables: tuple[Tensor, Tensor, Tensor, Tensor]
                  ) -> tuple[Tensor, list[Tensor]]:
    """HF's Qwen3VLVisionModel forward for n_images of one size: pixels (N, 3·t·p·p) → merged embeddings
    (N/merge², D_text) and the deepstack features. Attention is batched per image (HF splits it by cu_seqlens
    with a host sync); each block is checkpointed when the model's gradient checkpointing is on."""
    taps, weights, cos, sin = tables
    x = vis.patch_embed(pixels)  # (N, Dv)
    x = x + (vis.pos_embed(taps) * weights[:, :, None]).sum(1).to(x.dtype)
    deepstack = []
    for i, blk in enumerate(vis.blocks):
        if blk.gradient_checkpointing and blk.training and torch.is_grad_enabled():
            x = checkpoint(_vision_block, blk, x, cos, sin, n_images, use_reentrant=False)
        else:
            x = _vision_block(blk, x, cos, sin, n_images)
        if i in vis.deepstack_visual_indexes:
            deepstack.append(vis.deepstack_merger_list[vis.deepstack_visual_indexes.index(i)](x))
    return vis.merger(x), deepstack


def vision(backbone, plan: PromptPlan, images: Tensor, image_mask: Tensor | None) -> tuple[Tensor, list[Tensor]]:
    """images (B,V,3,H,W) in [0,1] → merged image embeddings (B·V·tokens, D_text) and the deepstack features."""
    b, v, c, h, w = images.shape
    if (v, h, w) != (plan.views, *plan.hw):
        raise ValueError(f"images of {v} views at {h}x{w} do not fit this plan ({plan.views} views at "
                         f"{plan.hw[0]}x{plan.hw[1]}): plan the prompt again")
    if image_mask is not None:  # a missing camera is a zero frame, as in Qwen3VLBackbone.prepare
        images = images * image_mask.to(images.dtype)[:, :, None, None, None]
    pixels = pixel_patches(images.reshape(b * v, c, h, w), backbone.patch, backbone.merge, backbone.temporal,
                           plan.mean, plan.std)
    tables = (plan.vis_taps, plan.vis_weights, plan.vis_cos, plan.vis_sin)
    return encode_images(backbone.hf.model.visual, pixels.to(backbone.hf.dtype), b * v, tables)


def _vision_block(blk, x: Tensor, cos: Tensor, sin: Tensor, n_images: int) -> Tensor:
    """HF's Qwen3VLVisionBlock with attention batched over equal-size images (same weights, same math)."""
    n = x.shape[0]
    attn = blk.attn
    q, k, v = attn.qkv(blk.norm1(x)).reshape(n, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)  # (N,H,hd)
    q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
    q, k, v = (t.reshape(n_images, n // n_images, attn.num_heads, -1).transpose(1, 2) for t in (q, k, v))
    o = F.scaled_dot_product_attention(q, k, v, scale=attn.scaling)  # (I,H,n/I,hd)
    x = x + attn.proj(o.transpose(1, 2).reshape(n, -1))
    return x + blk.mlp(blk.norm2(x))


def static_context(backbone, plan: PromptPlan, images: Tensor, image_mask: Tensor | None,
                   num_layers: int) -> VLMContext:
    """The VLMContext of `Qwen3VLBackbone.context` for a planned prompt, with no host syncs (inference only)."""
    keys, values = prefill(backbone, plan, *vision(backbone, plan, images, image_mask), num_layers)
    return make_context(backbone, plan, keys, values)


def prefill(backbone, plan: PromptPlan, image_embeds: Tensor, deepstack: list[Tensor],
            num_layers: int) -> tuple[list[Tensor], list[Tensor]]:
    """The language model over the planned prompt with the image embeddings in place → the rotated K/V of the
    last `num_layers` layers, each (B, kv_heads, S, head_dim). No final norm, no logits: the DiT needs neither."""
    lm = backbone.hf.model.language_model
    b, s = plan.input_ids.shape
    hidden = lm.embed_tokens(plan.input_ids)  # (B,S,D)
    d = hidden.shape[-1]
    # image tokens take the image embeddings in order (HF: masked_scatter), by a planned index: no sync
    hidden = hidden.reshape(b * s, d).index_copy(0, plan.image_index, image_embeds.to(hidden.dtype)).view(b, s, d)
    cache = KeepLast(backbone.num_layers - num_layers)
    for i, layer in enumerate(lm.layers):
        hidden = layer(hidden, position_embeddings=(plan.text_cos, plan.text_sin), attention_mask=plan.causal_mask,
                       cache=cache)
        if i < len(deepstack):  # deepstack: early layers add the vision features at the image tokens
            hidden = hidden.reshape(b * s, d).index_add(0, plan.image_index, deepstack[i].to(hidden.dtype)).view(b, s, d)
    return cache.keys, cache.values


class Qwen3VLStatic:
    """Qwen3VLBackbone's declared static prefill: the plan and the three sync-free parts FastPolicy chains."""

    def __init__(self, backbone):
        self.backbone = backbone

    def plan(self, texts: list[str], views: int, h: int, w: int) -> PromptPlan:
        return plan_prompt(self.backbone, texts, views, h, w)

    def tokens(self, plan: PromptPlan) -> int:
        return int(plan.input_ids.shape[1])

    def vision(self, plan: PromptPlan, images: Tensor, image_mask: Tensor | None) -> list[Tensor]:
        """[merged image embeddings, deepstack features …]."""
        embeds, deepstack = vision(self.backbone, plan, images, image_mask)
        return [embeds, *deepstack]

    def prefill(self, plan: PromptPlan, seen: list[Tensor], num_layers: int) -> tuple[list[Tensor], list[Tensor]]:
        return prefill(self.backbone, plan, seen[0], list(seen[1:]), num_layers)

    def context(self, plan: PromptPlan, keys: list[Tensor], values: list[Tensor]) -> VLMContext:
        return make_context(self.backbone, plan, keys, values)


def make_context(backbone, plan: PromptPlan, keys: list[Tensor], values: list[Tensor]) -> VLMContext:
    rotary, like = backbone.hf.model.language_model.rotary_emb, plan.text_cos[:, :0]  # `like`: device and dtype
    return VLMContext(keys=list(keys), values=list(values), attention_mask=plan.attention_mask,
                      next_position=plan.next_position, rope=lambda positions: rotary(like, positions))
