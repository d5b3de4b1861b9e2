"""Plain helpers every transformers-based backbone shares: the recipe options they take alike (LoRA, dtype, freeze),
freezing, gradient checkpointing that keeps the DiT's KV cache, the last-K-layers cache of the static prefills and
the normalise step before a vision tower."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

IGNORE = -100  # label of tokens the LM loss skips
DTYPES = ("float32", "bfloat16", "float16")
LORA_KEYS = {"r", "alpha", "dropout", "target_modules"}
DEFAULT_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)"


def option_problems(kwargs: dict[str, Any]) -> list[str]:
    """`xr0 validate`'s checks of the shared options, needing no model or files: LoRA keys, freeze vs LoRA, dtype."""
    problems = []
    lora = kwargs.get("lora")
    if lora:
        bad = sorted(set(lora) - LORA_KEYS)
        if bad:
            problems.append(f"backbone.lora: unknown keys {bad}; valid: {sorted(LORA_KEYS)}")
        if kwargs.get("freeze"):
            problems.append("backbone: freeze: true also freezes the LoRA adapters, so nothing in the VLM would "
                            "train; LoRA already keeps the base weights fixed: drop one of freeze / lora")
    if kwargs.get("dtype") not in (None, *DTYPES):
        problems.append(f"backbone.dtype={kwargs['dtype']!r}: use one of {list(DTYPES)} (or null for the "
                        f"checkpoint's own dtype)")
    return problems


def enable_checkpointing(model: nn.Module, layers: Any) -> None:
    """Gradient checkpointing on the HF model, with the KV cache kept on `layers` (the decoder layers): the adapters'
    caches overwrite a layer's K/V on the recompute instead of appending to it."""
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.2x name
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for layer in layers:
        layer._can_checkpoint_with_cache = True


def apply_lora(model: nn.Module, lora: dict[str, Any]) -> nn.Module:
    """The model wrapped by peft with LoRA adapters on the language model's attention projections (by default)."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(
        r=lora.get("r", 16), lora_alpha=lora.get("alpha", 32), lora_dropout=lora.get("dropout", 0.0),
        target_modules=lora.get("target_modules", DEFAULT_LORA_TARGETS)))


def normalise(images: Tensor, mean: Any, std: Any) -> Tensor:
    """images (N, 3, H, W) in [0, 1] → (x − mean) / std per channel; mean/std may already be device tensors (then
    nothing is copied from the host, so the fast path can run this inside a CUDA graph)."""
    c = images.shape[1]
    m = torch.as_tensor(mean, device=images.device, dtype=images.dtype).reshape(c, 1, 1)
    s = torch.as_tensor(std, device=images.device, dtype=images.dtype).reshape(c, 1, 1)
    return (images - m) / s


class HFBackbone(nn.Module):
    """Base of a backbone that wraps a transformers model in `self.model` (maybe under peft): unwrapping and the
    protocol's freezing, alike for every family."""

    model: nn.Module
    frozen: bool = False

    @property
    def hf(self) -> nn.Module:
        """The underlying transformers model (unwrapped from peft)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def freeze(self) -> None:
        """No gradients, eval mode; the forward then runs under no_grad and `train()` keeps it in eval."""
        self.requires_grad_(False)
        self.frozen = True
        self.eval()

    def train(self, mode: bool = True) -> HFBackbone:
        return super().train(mode and not self.frozen)  # a frozen VLM stays in eval


class KeepLast:
    """A cache for HF decoder layers that keeps the rotated K/V of layers >= first and stores nothing else (the
    static prefills need only the last K layers the DiT reads)."""

    def __init__(self, first: int):
        self.first, self.keys, self.values = first, [], []

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args, **kwargs):
        if layer_idx >= self.first:
            self.keys.append(key_states)
            self.values.append(value_states)
        return key_states, value_states
