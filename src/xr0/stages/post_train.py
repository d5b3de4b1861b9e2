"""Stage 3 — post-training on one robot, sync or async (docs/method.md §2.3, paper §2.2.2).

`mode: sync` trains VLM + DiT (or LoRA on the VLM, via the backbone's `lora` option) with the stage-2
loss. `mode: async` prefixes Δt_c clean ground-truth actions (Δt_c from the `prefix` sampler) before
the noisy ones, with the loss on non-prefix positions only. The ablation pieces are separate switches:
the mask component (`causal` | `lambda`, prefix dropout is its option), the DiT's `rope_offset`
(0 | 10), and `reweight`: off | batch | sample (per-element |â − a| weights from a no-grad generation with the
same prefix, normalised over the batch as the paper does, or per sample; `true` means batch, `false` off).
"""
from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor, nn

from xr0.heads.protocol import validate_head
from xr0.plots import plot_policy_chunk
from xr0.policy import Policy, reweight_mode
from xr0.registry import STAGES
from xr0.stages.common import (
    OptimConfig,
    batch_size_of,
    clip_gradients,
    configure_optimizers,
    load_init_from,
    load_metadata,
    log_flow_terms,
    save_metadata,
)
from xr0.strategies import ShardedStage

MODES = ("sync", "async")


@STAGES.register("post_train")
class PostTrain(ShardedStage, L.LightningModule):
    """Stage 3: post-training, sync (VLM+DiT or LoRA) or async (clean Δt_c prefix, Λ mask, re-weighting)."""

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        mask: Any,
        tau_sampler: Any,
        mode: str = "sync",
        prefix_sampler: Any = None,
        reweight: bool | Literal["off", "batch", "sample"] = "off",
        training_repeat: int = 1,
        optim: OptimConfig = OptimConfig(),
        flow_steps: int = 5,
        plot_every_n_steps: int = 500,
        init_from: str | None = None,
    ):
        super().__init__()
        reweight = reweight_mode(reweight)
        if mode not in MODES:
            raise ValueError(f"stage.mode must be one of {MODES}, got {mode!r}")
        if mode == "async" and prefix_sampler is None:
            raise ValueError("stage.mode: async needs stage.prefix_sampler: {name: prefix} (the Δt_c distribution)")
        if mode == "sync" and (prefix_sampler is not None or reweight != "off"):
            raise ValueError("stage.prefix_sampler and stage.reweight only apply to mode: async; remove them or "
                             "set stage.mode: async")
        if training_repeat < 1:
            raise ValueError(f"stage.training_repeat must be >= 1 (got {training_repeat})")
        self.policy = Policy(backbone=backbone, head=head, mask=mask, tau_sampler=tau_sampler,
                             flow_steps=flow_steps)
        self.mode, self.prefix_sampler, self.reweight = mode, prefix_sampler, reweight
        self.training_repeat, self.optim = training_repeat, optim
        self.flow_steps, self.plot_every_n_steps = flow_steps, plot_every_n_steps
        self.xr0_recipe: dict[str, Any] | None = None
        self.xr0_stats: Any = None
        self.xr0_processor: Any = None  # xr0.processor.Processor, set by `xr0 fit`; saved in every checkpoint
        self.init_from = init_from  # read once, in `setup`; a frozen VLM (backbone.freeze: true) froze itself

    def setup(self, stage: str) -> None:
        load_init_from(self, ("backbone", "head"))

    @staticmethod
    def __xr0_validate__(kwargs: dict[str, Any]) -> list[str]:
        return validate_head(kwargs, "flow", "post_train")

    @property
    def trained_max_prefix(self) -> int | None:
        """The longest committed prefix Δt_c this stage trains with (0 in sync mode; None when the prefix sampler
        does not declare `max_len`). Checkpoints carry it so the executor never grows Δt_c past it."""
        if self.mode == "sync":
            return 0
        longest = getattr(self.prefix_sampler, "max_len", None)
        chunk = getattr(self.policy.head, "chunk", None)
        if longest is None:
            return None
        return int(min(longest, chunk - 1)) if chunk else int(longest)  # sample_prefix clamps to T − 1

    def sample_prefix(self, batch: dict[str, Any]) -> Tensor | None:
        """Δt_c per sample (B,) in async mode, None in sync mode; never past the chunk."""
        if self.mode == "sync":
            return None
        b, t = batch["actions"].shape[:2]
        p = self.prefix_sampler(b, device=batch["actions"].device)  # (B,) long
        return p.long().clamp(0, t - 1)

    def _step(self, batch: dict[str, Any], tag: str) -> Tensor:
        prefix_len = self.sample_prefix(batch)  # (B,) or None
        ctx = self.policy.context(batch)
        out = self.policy.flow_loss(batch, ctx, prefix_len=prefix_len, reweight=self.reweight,
                                    repeat=self.training_repeat)
        bs = batch_size_of(batch)
        log_flow_terms(self, out, tag, bs)
        if prefix_len is not None:
            self.log_dict({f"{tag}/prefix_len": prefix_len.float().mean(),
                           f"{tag}/prefix_zero_fraction": (prefix_len == 0).float().mean()}, batch_size=bs)
        self._last_prefix = prefix_len
        return out["loss"]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss = self._step(batch, "train")
        plot_policy_chunk(self, self.policy, batch, self.plot_every_n_steps, self.flow_steps, self._last_prefix)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def configure_optimizers(self):
        return configure_optimizers(self, self.optim)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        save_metadata(self, checkpoint, "post_train")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        load_metadata(self, checkpoint)
