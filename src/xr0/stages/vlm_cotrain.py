"""Stage 1 — choice-policy VLM co-training (docs/method.md §2.1, paper §2.2.1).

Robot batches: the VLM reads `o_t, l, s_t, [A_1..A_T], [S]` (the last T+2 embeddings come from the
choice-policy head) and the head turns their outputs into N candidate chunks and N scores.
Vision-language batches: next-token prediction on the answer tokens. The VL:robot ratio (1:6 in the
paper) is set by the data (`data.vl_ratio`, xr0.data.mix); the loss weighs every sample alike — the robot loss
of each robot sample and the mean answer-token loss of each VL sample, summed and divided by the sample count
(times `vl_weight` for VL samples) — so the ratio of samples is the ratio in the loss, whatever each batch holds.
The module logs the VL fraction it saw (`train/vl_fraction`) and warns once when no VL sample arrived in the
first `vl_warn_steps` steps of a run that co-trains (vl_weight > 0).
"""
from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torchmetrics
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.text import Perplexity

from xr0.backbones.protocol import POLICY_MEMBERS
from xr0.backbones.protocol import check as check_backbone
from xr0.heads.protocol import require, validate_head
from xr0.plots import log_chunk_figure
from xr0.registry import STAGES
from xr0.stages.common import (
    OptimConfig,
    batch_size_of,
    clip_gradients,
    configure_optimizers,
    load_init_from,
    load_metadata,
    save_metadata,
)
from xr0.strategies import ShardedStage

KV_LAYERS = 1  # stage 1 reads only the appended tokens' outputs; the KV of one layer is the cheapest ask


def split_kinds(batch: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A batch → [(kind, sub-batch)] with kind 'robot' or 'vl'.

    Accepts a combined batch {'robot': {...}, 'vl': {...}} (either may be missing), or one flat batch
    whose kind is given by `kind` (a string or a list of equal strings) or, failing that, by its keys:
    `actions` means robot, `answer` means vision-language (src/xr0/types.py).
    """
    if "robot" in batch or "vl" in batch:
        return [(k, batch[k]) for k in ("robot", "vl") if batch.get(k) is not None]
    kind = batch.get("kind")
    if isinstance(kind, (list, tuple)):
        kinds = set(kind)
        if len(kinds) != 1:
            raise ValueError(f"a flat batch mixes sample kinds {sorted(kinds)}; the data module must batch "
                             f"robot and vision-language samples separately (or as {{'robot':…, 'vl':…}})")
        kind = kinds.pop()
    if kind in ("vl", "vision_language", "vision-language"):
        return [("vl", batch)]
    if kind == "robot" or "actions" in batch:
        return [("robot", batch)]
    if "answer" in batch:
        return [("vl", batch)]
    raise ValueError(f"cannot tell the batch kind from keys {sorted(batch)}: a robot batch has 'actions', a "
                     f"vision-language batch has 'prompt' and 'answer'")


def stage1_metrics(num_candidates: int) -> nn.ModuleDict:
    n = num_candidates
    return nn.ModuleDict({
        "l1_chosen": torchmetrics.MeanMetric(),  # action L1 of the lowest-scored candidate
        "l1_best": torchmetrics.MeanMetric(),  # action L1 of the best candidate (oracle)
        # how often the lowest score picks the best candidate
        "rank_accuracy": MulticlassAccuracy(num_classes=n, average="micro") if n > 1 else torchmetrics.MeanMetric(),
        "winners": torchmetrics.CatMetric(),  # index of the best candidate per sample, for the histogram
        "vl_token_accuracy": torchmetrics.MeanMetric(),
        "vl_perplexity": Perplexity(ignore_index=-100),
    })


class NoVLWarning(UserWarning):
    """Stage 1 co-trains with vision-language data, but none arrived."""


@STAGES.register("vlm_cotrain")
class VLMCoTrain(ShardedStage, L.LightningModule):
    """Stage 1: choice-policy VLM co-training on robot + vision-language batches (N candidates, WTA L1)."""

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        optim: OptimConfig = OptimConfig(),
        vl_weight: float = 1.0,
        vl_warn_steps: int = 100,
        plot_every_n_steps: int = 500,
        init_from: str | None = None,
    ):
        super().__init__()
        require(head, "choice", "stage vlm_cotrain")
        check_backbone(backbone, (*POLICY_MEMBERS, "lm_loss"))
        if vl_weight < 0 or vl_warn_steps < 1:
            raise ValueError(f"stage.vl_weight must be >= 0 (0: robot-only on purpose) and stage.vl_warn_steps >= 1; "
                             f"got {vl_weight}, {vl_warn_steps}")
        head.bind(backbone.hidden_size)
        self.backbone, self.head = backbone, head
        self.optim, self.vl_weight, self.plot_every_n_steps = optim, vl_weight, plot_every_n_steps
        self.vl_warn_steps, self._warned_no_vl = vl_warn_steps, False
        self.metrics = nn.ModuleDict({f"{t}_": stage1_metrics(head.num_candidates) for t in ("train", "val")})  # "train" is a Module method name
        self.register_buffer("seen", torch.zeros(2, dtype=torch.long), persistent=True)  # robot, vl samples
        self.xr0_recipe: dict[str, Any] | None = None
        self.xr0_stats: Any = None
        self.xr0_processor: Any = None  # xr0.processor.Processor, set by `xr0 fit`; saved in every checkpoint
        self.init_from = init_from  # read once, in `setup`

    def setup(self, stage: str) -> None:
        load_init_from(self, ("backbone", "head"))

    @staticmethod
    def __xr0_validate__(kwargs: dict[str, Any]) -> list[str]:
        return validate_head(kwargs, "choice", "vlm_cotrain")

    # ------------------------------------------------------------ forward pieces
    def choice_forward(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Robot batch → candidates (B, N, T, 32), scores (B, N)."""
        inputs = self.backbone.prepare(batch["images"], batch["image_mask"], list(batch["instruction"]))
        extra = self.head.tokens(batch["state"].float())  # (B, T+2, hidden)
        ctx = self.backbone.context(inputs, KV_LAYERS, extra_embeds=extra)
        return self.head(ctx.extra_hidden)

    @torch.no_grad()
    def predict_chunk(self, batch: dict[str, Any]) -> Tensor:
        """Inference: the lowest-scored candidate chunk (B, T, 32)."""
        cand, scores = self.choice_forward(batch)
        return self.head.select(cand, scores)

    def robot_step(self, batch: dict[str, Any], tag: str) -> Tensor:
        """The mean robot loss of this sub-batch (each sample's WTA L1 + score loss, averaged)."""
        cand, scores = self.choice_forward(batch)
        out = self.head.loss(cand, scores, batch["actions"], batch["action_mask"], batch.get("chunk_mask"))
        bs, m = batch_size_of(batch), self.metrics[f"{tag}_"]
        m["l1_chosen"](out["l1_chosen"])
        m["l1_best"](out["l1_best"])
        if self.head.num_candidates > 1:
            m["rank_accuracy"](out["chosen"], out["best"])
        else:
            m["rank_accuracy"](torch.ones_like(out["l1_best"]))
        m["winners"](out["best"].float())
        self.log_dict({f"{tag}/robot_loss": out["loss"], f"{tag}/action_loss": out["action_loss"],
                       f"{tag}/score_loss": out["score_loss"]}, batch_size=bs, prog_bar=tag == "train")
        self.log_dict({f"{tag}/{k}": m[k] for k in ("l1_chosen", "l1_best", "rank_accuracy")}, batch_size=bs)
        if tag == "train":
            chosen = self.head.select(cand.detach(), scores.detach())  # (B, T, D)
            if log_chunk_figure(self, "train/chunk", chosen, batch["actions"], batch, self.plot_every_n_steps):
                winners = m["winners"].compute().reshape(-1)  # (samples,) best-candidate indices
                self.logger.experiment.add_histogram("train/winner", winners, global_step=self.global_step,
                                                     bins=self.head.num_candidates)
        return out["loss"]

    def vl_step(self, batch: dict[str, Any], tag: str) -> Tensor:
        """Per-sample next-token loss (B,): the mean over each sample's answer tokens, so a long answer weighs as
        much as a short one, as one robot sample weighs as one."""
        inputs = self.backbone.prepare(batch["images"], batch["image_mask"], list(batch["prompt"]),
                                       answers=list(batch["answer"]))
        _, logits, labels = self.backbone.lm_loss(inputs)
        pred, target = logits[:, :-1].float(), labels[:, 1:]  # (B, S-1, V), (B, S-1): token t predicts t+1
        valid, m = target != -100, self.metrics[f"{tag}_"]
        nll = nn.functional.cross_entropy(pred.transpose(1, 2), target, ignore_index=-100, reduction="none")  # (B, S-1)
        loss = (nll * valid).sum(1) / valid.sum(1).clamp_min(1)  # (B,)
        if valid.any():
            correct = (pred.argmax(-1) == target)[valid].float()  # (n,)
            m["vl_token_accuracy"](correct)
            m["vl_perplexity"](pred.detach(), target)
            self.log_dict({f"{tag}/{k}": m[k] for k in ("vl_token_accuracy", "vl_perplexity")},
                          batch_size=batch_size_of(batch))
        self.log(f"{tag}/vl_loss", loss.mean(), batch_size=batch_size_of(batch), prog_bar=tag == "train")
        return loss

    def _step(self, batch: dict[str, Any], tag: str) -> Tensor:
        """Every sample weighs alike: (Σ robot-sample losses + vl_weight · Σ VL-sample losses) / samples."""
        total, count = None, 0
        for kind, sub in split_kinds(batch):
            n = batch_size_of(sub)
            part = self.robot_step(sub, tag) * n if kind == "robot" else self.vl_weight * self.vl_step(sub, tag).sum()
            total, count = (part if total is None else total + part), count + n
            if tag == "train":
                self.seen[0 if kind == "robot" else 1] += n
        total = total / max(count, 1)
        if tag == "train":
            robot, vl = self.seen.tolist()
            self.log("train/vl_fraction", vl / max(robot + vl, 1), batch_size=1)  # paper 1:6 → 0.143
            self._check_vl_arrives(vl)
        self.log(f"{tag}/loss", total, batch_size=batch_size_of(batch))
        return total

    def _check_vl_arrives(self, vl_seen: int) -> None:
        """Once per run: a co-training run (vl_weight > 0) whose first vl_warn_steps steps brought no VL sample."""
        if self._warned_no_vl or vl_seen or self.vl_weight == 0 or self.global_step + 1 < self.vl_warn_steps:
            return
        import warnings

        self._warned_no_vl = True
        warnings.warn(f"stage 1 (vlm_cotrain) has seen no vision-language sample in {self.global_step + 1} steps: "
                      f"the paper co-trains VL:robot = 1:6 (report §2.2.1). Add a `kind: vl` card to data.cards with "
                      f"data.vl_ratio: \"1:6\" (synthetic data: data.vl_ratio), check that card with `xr0 data "
                      f"inspect`, or set stage.vl_weight: 0 to train robot-only on purpose", NoVLWarning, stacklevel=2)

    # ------------------------------------------------------------ Lightning hooks
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def configure_optimizers(self):
        return configure_optimizers(self, self.optim)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        save_metadata(self, checkpoint, "vlm_cotrain")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        load_metadata(self, checkpoint)
