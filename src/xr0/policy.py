"""The policy: VLM backbone + DiT action expert, trained by flow matching and sampled with Euler steps.

`predict_chunk` runs the VLM once and reuses its KV cache for every flow step (docs/method.md §1.4). `flow_loss`
covers stage 2 (no prefix) and stage 3 async (clean Δt_c prefix, loss on the rest, optional re-weighting).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from xr0 import flow
from xr0.backbones.protocol import POLICY_MEMBERS
from xr0.backbones.protocol import check as check_backbone
from xr0.flow import step_mask
from xr0.heads.protocol import require
from xr0.types import VLMContext

REWEIGHT_CLAMP = (0.5, 5.0)  # docs/method.md §2.3
REWEIGHT = ("off", "batch", "sample")  # batch: the paper's form (report §2.2.2); sample: per-sample normalisation


def reweight_mode(value: bool | str | None) -> str:
    """`reweight` as a recipe may give it: true = batch (the paper's form), false/null = off, or a mode name."""
    if value is True:
        return "batch"
    if value is False or value is None:
        return "off"
    if value not in REWEIGHT:
        raise ValueError(f"stage.reweight must be one of {', '.join(REWEIGHT)} (or true = batch, false = off), "
                         f"got {value!r}")
    return value


def reweight_weights(err: Tensor, valid: Tensor, has_prefix: Tensor, mode: str = "batch") -> Tensor:
    """Per-element loss weights from the generation error (docs/method.md §2.3).

    err (B,T,A) = |â − a|, valid (B,T,A) bool (positions the loss covers), has_prefix (B,) bool → w (B,T,A).
    w = err / mean(err), clamped to [0.5, 5]. `batch`: the mean runs over the valid elements of every sample that
    has a prefix, so a sample whose generation deviates more weighs more (the report: re-weighting "prioritizes
    samples with larger deviations"). `sample`: each sample's own mean, which leaves every sample the same mean
    weight and only redistributes within it. Samples without a prefix are generated from scratch, not re-weighted:
    they keep weight 1 and stay out of the mean."""
    if mode not in ("batch", "sample"):
        raise ValueError(f"reweight mode must be 'batch' or 'sample', got {mode!r}")
    rows = valid & has_prefix[:, None, None]  # (B,T,A) the elements that get a weight
    err = err * rows
    dims = (0, 1, 2) if mode == "batch" else (1, 2)
    mean = err.sum(dim=dims, keepdim=True) / rows.sum(dim=dims, keepdim=True).clamp_min(1)  # (1,1,1) or (B,1,1)
    w = (err / mean.clamp_min(1e-8)).clamp(*REWEIGHT_CLAMP)
    return torch.where(has_prefix[:, None, None], w, torch.ones_like(w))



class Policy(nn.Module):
    """VLM backbone + action head (DiT), with the DiT mask and the τ sampler; not a registered component."""

    def __init__(self, backbone: nn.Module, head: nn.Module, mask: Any, tau_sampler: Any, flow_steps: int = 5):
        super().__init__()
        if flow_steps < 1:
            raise ValueError(f"flow_steps must be >= 1, got {flow_steps}")
        self.backbone, self.head, self.mask, self.tau_sampler = backbone, head, mask, tau_sampler
        self.flow_steps = flow_steps
        check_backbone(backbone, POLICY_MEMBERS)  # the contracts, each named when unmet
        require(head, "flow", "the policy (stages dit_flow, post_train)")
        head.bind(backbone.head_dim)  # a head_dim the recipe left null follows the VLM
        head.check_backbone(backbone.num_layers, backbone.num_kv_heads, backbone.head_dim)
        self.special = len(head.special_tokens)  # the masks are built over the head's own special tokens

    # ------------------------------------------------------------------ VLM
    def context(self, batch: dict[str, Any]) -> VLMContext:
        """One VLM forward on images + instruction; its KV cache feeds every DiT call."""
        inputs = self.backbone.prepare(batch["images"], batch.get("image_mask"), list(batch["instruction"]))
        return self.backbone.context(inputs, num_layers=self.head.depth)

    # ------------------------------------------------------------------ DiT
    def velocity(self, ctx: VLMContext, batch: dict[str, Any], x_tau: Tensor, tau: Tensor,
                 prefix_len: Tensor | None = None, training: bool = False) -> Tensor:
        """One DiT call. x_tau (B,T,A), tau (B,T) per token → v (B,T,A)."""
        b, t, _ = x_tau.shape
        is_prefix = flow.prefix_positions(prefix_len, b, t, x_tau.device)  # (B,T)
        amask = step_mask(batch["action_mask"], x_tau.dtype)  # (B,1,A) or (B,T,A)
        mask = self.mask(t, prefix_len, training=training, device=x_tau.device, special=self.special)
        return self.head(ctx, batch["state"], x_tau * amask, tau, mask, noisy=~is_prefix)  # (B,T,A)

    @torch.no_grad()
    def sample(self, ctx: VLMContext, batch: dict[str, Any], prefix: Tensor | None = None,
               prefix_len: Tensor | None = None, steps: int | None = None, noise: Tensor | None = None) -> Tensor:
        """Euler from noise to actions on a fixed context; prefix (B,T,A) rows < prefix_len stay clean.
        K/V, RoPE and mask are prepared once and reused by every step; nothing in the loop syncs with the host."""
        state, amask = batch["state"], batch["action_mask"]
        b, a_dim, t = state.shape[0], amask.shape[-1], self.head.chunk
        if noise is None:
            noise = torch.randn(b, t, a_dim, device=state.device, dtype=state.dtype)
        is_prefix = flow.prefix_positions(prefix_len, b, t, noise.device)  # (B,T)
        mask = self.mask(t, prefix_len, training=False, device=noise.device, special=self.special)
        inputs = self.head.prepare(ctx, mask, ~is_prefix)
        amask = step_mask(amask, noise.dtype)  # (B,1,A) or (B,T,A)
        fn = lambda x, tau: self.head.step(inputs, state, x * amask, tau)
        x = flow.euler_sample(fn, noise, steps or self.flow_steps, prefix, prefix_len, self.head.prefix_tau)
        return x * amask  # (B,T,A)

    @torch.no_grad()
    def predict_chunk(self, batch: dict[str, Any], prefix: Tensor | None = None, steps: int | None = None,
                      noise: Tensor | None = None) -> Tensor:
        """Actions (B,T,A) for a batch of observations; prefix (B,P,A) = committed actions kept fixed."""
        ctx = self.context(batch)  # the VLM runs once
        prefix_full, prefix_len = None, None
        if prefix is not None and prefix.shape[1] > 0:
            b, p, a_dim = prefix.shape
            if p > self.head.chunk:
                raise ValueError(f"prefix of {p} actions is longer than the chunk ({self.head.chunk})")
            prefix_full = torch.zeros(b, self.head.chunk, a_dim, device=prefix.device, dtype=prefix.dtype)
            prefix_full[:, :p] = prefix
            prefix_len = torch.full((b,), p, dtype=torch.long, device=prefix.device)
        return self.sample(ctx, batch, prefix_full, prefix_len, steps, noise)

    # ------------------------------------------------------------------ loss
    def flow_loss(self, batch: dict[str, Any], ctx: VLMContext, prefix_len: Tensor | None = None,
                  reweight: bool | str = False, repeat: int = 1) -> dict[str, Tensor]:
        """Flow-matching MSE over valid dims and timesteps, excluding the clean prefix; `repeat` draws of
        (ε, τ) share one VLM context (training_repeat); `reweight`: off | batch | sample (see reweight_weights)."""
        mode = reweight_mode(reweight)
        a = batch["actions"]  # (B,T,A)
        b, t, _ = a.shape
        is_prefix = flow.prefix_positions(prefix_len, b, t, a.device)  # (B,T)
        chunk_mask = batch.get("chunk_mask")
        chunk_mask = torch.ones(b, t, dtype=torch.bool, device=a.device) if chunk_mask is None else chunk_mask.bool()
        valid = step_mask(batch["action_mask"].bool()) & (chunk_mask & ~is_prefix)[..., None]  # (B,T,A)
        weight = torch.ones_like(a)
        if mode != "off" and prefix_len is not None and bool((prefix_len > 0).any()):
            weight = self._reweight(ctx, batch, prefix_len, valid, mode)
        losses, mses = [], []
        n_valid = valid.sum().clamp_min(1)
        for _ in range(repeat):
            eps = torch.randn_like(a)  # (B,T,A)
            tau = flow.token_tau(self.tau_sampler(b, device=a.device).to(a.dtype), is_prefix, self.head.prefix_tau)  # (B,T)
            x = torch.where(is_prefix[..., None], a, flow.interpolate(a, eps, tau))  # (B,T,A) prefix stays clean
            u = torch.where(is_prefix[..., None], torch.zeros_like(a), flow.target_velocity(a, eps))  # (B,T,A)
            v = self.velocity(ctx, batch, x, tau, prefix_len, training=self.training)  # (B,T,A)
            sq = (v - u).pow(2) * valid  # (B,T,A)
            losses.append((weight * sq).sum() / n_valid)
            mses.append(sq.detach().sum() / n_valid)
        loss = torch.stack(losses).mean()
        return {"loss": loss, "mse": torch.stack(mses).mean(),
                "weight_mean": (weight * valid).sum().detach() / n_valid,
                "valid_frac": valid.float().mean().detach()}

    @torch.no_grad()
    def _reweight(self, ctx: VLMContext, batch: dict[str, Any], prefix_len: Tensor, valid: Tensor,
                  mode: str = "batch") -> Tensor:
        """Weights from â, a no-grad `flow_steps` generation with the same prefix (see reweight_weights)."""
        a = batch["actions"]
        a_hat = self.sample(ctx, batch, prefix=a, prefix_len=prefix_len, steps=self.flow_steps)
        return reweight_weights((a_hat - a).abs(), valid, prefix_len > 0, mode)  # (B,T,A)

    # ------------------------------------------------------------------ helpers
    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters that take gradients (the DiT; the VLM too unless frozen; LoRA adapters only under LoRA)."""
        return [p for p in self.parameters() if p.requires_grad]

    def fsdp_wrap_modules(self) -> set[type]:
        mods = set()
        for part in (self.backbone, self.head):
            fn = getattr(part, "fsdp_wrap_modules", None)
            mods |= set(fn()) if fn else set()
        return mods
