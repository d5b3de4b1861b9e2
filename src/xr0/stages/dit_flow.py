"""Stage 2 — frozen-VLM DiT training (docs/method.md §2.2, paper §2.2.1).

The VLM (from a stage-1 checkpoint via `init_from`, or a Hugging Face directory via
`backbone.pretrained`) is frozen: no gradients, eval mode, its forward under no_grad. Its input is
images + instruction only. The DiT is trained from scratch with flow matching (beta τ, causal mask,
no prefix); one VLM forward feeds `training_repeat` DiT draws of (ε, τ).
"""
from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from xr0.heads.protocol import validate_head
from xr0.plots import plot_policy_chunk
from xr0.policy import Policy
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


INIT_PARTS = ("backbone",)  # init_from gives the VLM only: the DiT starts from scratch


@STAGES.register("dit_flow")
class DiTFlow(ShardedStage, L.LightningModule):
    """Stage 2: DiT flow matching on a frozen VLM's KV cache (beta τ, causal mask, training_repeat k)."""

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        mask: Any,
        tau_sampler: Any,
        training_repeat: int = 4,
        optim: OptimConfig = OptimConfig(),
        flow_steps: int = 5,
        plot_every_n_steps: int = 500,
        init_from: str | None = None,
    ):
        super().__init__()
        if training_repeat < 1:
            raise ValueError(f"stage.training_repeat must be >= 1 (got {training_repeat})")
        self.policy = Policy(backbone=backbone, head=head, mask=mask, tau_sampler=tau_sampler,
                             flow_steps=flow_steps)
        self.training_repeat, self.optim = training_repeat, optim
        self.flow_steps, self.plot_every_n_steps = flow_steps, plot_every_n_steps
        self.xr0_recipe: dict[str, Any] | None = None
        self.xr0_stats: Any = None
        self.xr0_processor: Any = None  # xr0.processor.Processor, set by `xr0 fit`; saved in every checkpoint
        self.init_from = init_from  # read once, in `setup`
        self.policy.backbone.freeze()  # no grad, eval; the backbone keeps itself in eval across Lightning's .train()

    def setup(self, stage: str) -> None:
        load_init_from(self, INIT_PARTS)

    @staticmethod
    def __xr0_validate__(kwargs: dict[str, Any]) -> list[str]:
        return validate_head(kwargs, "flow", "dit_flow")

    trained_max_prefix = 0  # stage 2 never trains with a committed prefix (see PostTrain.trained_max_prefix)

    def _step(self, batch: dict[str, Any], tag: str) -> Tensor:
        with torch.no_grad():
            ctx = self.policy.context(batch)  # one VLM forward, no graph
        out = self.policy.flow_loss(batch, ctx, prefix_len=None, reweight=False, repeat=self.training_repeat)
        log_flow_terms(self, out, tag, batch_size_of(batch))
        return out["loss"]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss = self._step(batch, "train")
        plot_policy_chunk(self, self.policy, batch, self.plot_every_n_steps, self.flow_steps)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def configure_optimizers(self):
        return configure_optimizers(self, self.optim)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        save_metadata(self, checkpoint, "dit_flow")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        load_metadata(self, checkpoint)
