"""Data contracts shared by backbones, heads, stages, data and deploy. Shapes are the contract.

Batch dict produced by every DATASETS builder for robot samples (B = batch, V = views, T = chunk,
D_A = D_S = 32 canonical padded dims):
  images        float32 (B, V, 3, H, W) in [0, 1]   camera frames, fixed V and H×W per recipe
  image_mask    bool    (B, V)                      False where a camera is missing (frame is zeros)
  instruction   list[str] (B)                       language instruction
  state         float32 (B, D_S)                    normalised, padded
  actions       float32 (B, T, D_A)                 normalised, padded (relative dims already relative)
  action_mask   bool    (B, D_A)                    valid action dims of the sample's embodiment
  chunk_mask    bool    (B, T)                      False past the episode end
  embodiment    list[str] (B)
Vision-language samples (stage 1) carry: images, image_mask, prompt list[str], answer list[str].
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

ACTION_DIM = 32  # canonical padded action/state width (docs/method.md §4)
STD_FLOOR = 1e-6  # a std below this (padded or constant dims) normalises by 1 instead


@dataclass
class VLMContext:
    """What the DiT needs from one VLM forward (docs/method.md §1.1)."""

    keys: list[Tensor]  # per VLM layer given to the DiT (the last K), each (B, kv_heads, S, head_dim), rotated
    values: list[Tensor]  # same shapes
    attention_mask: Tensor  # (B, S) bool, True = valid (non-padding) VLM token
    next_position: Tensor  # (B,) long, first free text position id after the VLM tokens
    rope: Callable[[Tensor], tuple[Tensor, Tensor]]  # positions (B, N) long -> cos, sin (B, N, head_dim)
    hidden: Tensor | None = None  # (B, S, hidden) last hidden states of the VLM tokens
    extra_hidden: Tensor | None = None  # (B, n, hidden) outputs of `extra_embeds` appended after each prompt (stage 1)
