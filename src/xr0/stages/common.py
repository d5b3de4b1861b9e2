"""Plain functions the three stages share (no base class): optimiser + schedule, checkpoint metadata,
freezing, logging (the predicted-vs-true chunk figure is in xr0.plots)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


@dataclass
class OptimConfig:
    """The `optim:` section of a stage: AdamW with linear warmup then cosine decay to min_lr_ratio·lr."""

    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup_steps: int = 0
    total_steps: int | None = None  # None: trainer.max_steps
    min_lr_ratio: float = 0.1
    backbone_lr: float | None = None  # a separate LR for trainable VLM parameters (None: lr)
    fused: bool | None = None  # fused AdamW; None: on when every trainable parameter is on CUDA (see _fused)


def _groups(module: nn.Module, optim: OptimConfig) -> list[dict[str, Any]]:
    """Trainable parameters only; no weight decay on biases, norms and learned tokens (ndim < 2)."""
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for name, p in module.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        is_backbone = ".backbone." in f".{name}"
        buckets.setdefault((is_backbone, p.ndim >= 2), []).append(p)
    groups = []
    for (is_backbone, decay), params in buckets.items():
        lr = optim.backbone_lr if is_backbone and optim.backbone_lr is not None else optim.lr
        groups.append({"params": params, "lr": lr, "weight_decay": optim.weight_decay if decay else 0.0})
    if not groups:
        raise ValueError("this stage has no trainable parameters: check backbone.freeze / lora and the head")
    return groups


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup from 0 to 1 over `warmup` steps, then cosine from 1 to min_ratio at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _fused(module: Any, optim: OptimConfig, params: list[nn.Parameter]) -> bool:
    """optim.fused: null → fused when every parameter is on CUDA, except under a loss scaler (16-mixed) with
    gradient clipping: a fused AdamW unscales inside its step, so gradients cannot be clipped before it. bf16-mixed
    has no scaler; `clip_gradients` clips a fused optimizer's gradients there itself."""
    trainer = getattr(module, "_trainer", None)
    clips = (trainer is not None and bool(trainer.gradient_clip_val)
             and getattr(trainer.precision_plugin, "scaler", None) is not None)
    on_cuda = all(p.is_cuda for p in params)
    if optim.fused and clips:
        raise ValueError("optim.fused: true with trainer.gradient_clip_val under 16-mixed: the loss scaler's "
                         "gradients cannot be clipped before a fused step; use bf16-mixed, optim.fused: null, "
                         "or trainer.gradient_clip_val: null")
    if optim.fused and not on_cuda:
        raise ValueError("optim.fused: true needs every trainable parameter on CUDA; set optim.fused: null "
                         "(fused where possible) or false")
    return on_cuda and not clips if optim.fused is None else optim.fused


def clip_gradients(module: Any, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None,
                   gradient_clip_algorithm: str | None) -> None:
    """The stages' configure_gradient_clipping. Lightning's mixed-precision plugin refuses to clip any fused
    optimizer, but without a loss scaler (bf16-mixed) the gradients are already unscaled: clip them here."""
    scaler = getattr(module.trainer.precision_plugin, "scaler", None)
    if gradient_clip_val and scaler is None and optimizer.defaults.get("fused"):
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val, foreach=True)
        return
    module.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)


def configure_optimizers(module: Any, optim: OptimConfig) -> dict[str, Any]:
    """AdamW over the trainable parameters plus a per-step warmup+cosine LambdaLR."""
    total = optim.total_steps
    if total is None:
        trainer = getattr(module, "_trainer", None)
        total = trainer.max_steps if trainer is not None and trainer.max_steps and trainer.max_steps > 0 else None
    if total is None:
        raise ValueError("optim.total_steps is unset and trainer.max_steps is not positive: set one of them "
                         "so the cosine schedule knows its length")
    groups = _groups(module, optim)
    fused = _fused(module, optim, [p for g in groups for p in g["params"]])
    opt = torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, fused=fused)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, optim.warmup_steps, total, optim.min_lr_ratio))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}


# ---------------------------------------------------------------- initialisation
def load_init_from(module: Any, parts: tuple[str, ...]) -> None:
    """Every stage's Lightning `setup` hook: copy the `parts` of `module.init_from` (stage N's checkpoint) into the
    model, once. It runs before FSDP shards the model and before a resumed run's own checkpoint is restored (which
    then wins), and never when a model is only rebuilt (xr0.checkpoint.load_policy): no stage constructor reads
    files. Freezing is the backbone's own (`Backbone.freeze`)."""
    path = getattr(module, "init_from", None)
    if not path or getattr(module, "_init_loaded", False):
        return
    from xr0.checkpoint import init_from

    init_from(module, path, parts)
    module._init_loaded = True


def assert_grads_only_on_trainable(module: nn.Module) -> list[str]:
    """Names of frozen parameters that still received a gradient (empty when all is well)."""
    return [n for n, p in module.named_parameters() if not p.requires_grad and p.grad is not None]


# ---------------------------------------------------------------- checkpoint metadata
def embodiment_of(module: Any) -> str | None:
    """The embodiment name: the processor's, else the recipe's, else the data module's."""
    proc = getattr(module, "xr0_processor", None)
    if hasattr(proc, "embodiment"):
        return proc.embodiment.name
    recipe = getattr(module, "xr0_recipe", None) or {}
    emb = recipe.get("embodiment")
    if isinstance(emb, dict):
        emb = emb.get("name")
    if emb is None:
        trainer = getattr(module, "_trainer", None)
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        emb = getattr(dm, "embodiment", None)
    return emb


def save_metadata(module: Any, checkpoint: dict[str, Any], stage: str) -> None:
    """Everything deploy needs besides weights: resolved recipe, normalisation stats, embodiment, stage name, the
    longest committed prefix trained with."""
    checkpoint["xr0_recipe"] = getattr(module, "xr0_recipe", None)
    checkpoint["xr0_stats"] = getattr(module, "xr0_stats", None)
    checkpoint["xr0_embodiment"] = embodiment_of(module)
    checkpoint["xr0_stage"] = stage
    checkpoint["xr0_max_prefix"] = getattr(module, "trained_max_prefix", None)  # None: unknown
    proc = getattr(module, "xr0_processor", None)
    checkpoint["xr0_processor"] = proc.to_dict() if hasattr(proc, "to_dict") else proc


def load_metadata(module: Any, checkpoint: dict[str, Any]) -> None:
    """On resume, keep the stats/recipe/processor of the checkpoint if `xr0 fit` did not set them."""
    for key in ("xr0_recipe", "xr0_stats", "xr0_processor"):
        if getattr(module, key, None) is None and checkpoint.get(key) is not None:
            setattr(module, key, checkpoint[key])


def batch_size_of(batch: dict[str, Any]) -> int:
    for key in ("actions", "images", "state"):
        if torch.is_tensor(batch.get(key)):
            return int(batch[key].shape[0])
    for v in batch.values():
        if isinstance(v, (list, tuple)):
            return len(v)
    return 1


# ---------------------------------------------------------------- flow-matching step (stages 2 and 3)
def log_flow_terms(module: Any, out: dict[str, Tensor], tag: str, batch_size: int) -> None:
    """Log every scalar the policy's flow_loss returned (loss first, on the progress bar)."""
    scalars = {f"{tag}/{k}": v.detach() if torch.is_tensor(v) else v for k, v in out.items()
               if not torch.is_tensor(v) or v.numel() == 1}
    module.log(f"{tag}/loss", out["loss"], batch_size=batch_size, prog_bar=tag == "train")
    scalars.pop(f"{tag}/loss", None)
    if scalars:
        module.log_dict(scalars, batch_size=batch_size)
