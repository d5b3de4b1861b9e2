"""Plain functions the three stages share (no base class): optimiser + schedule, checkpoint metadata,
freezing, and the predicted-vs-true chunk figure for TensorBoard."""
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


# ---------------------------------------------------------------- freezing
def freeze(module: nn.Module) -> None:
    """No gradients and eval mode (dropout off); the stage keeps it in eval across Lightning's .train()."""
    module.requires_grad_(False)
    module.eval()
    if hasattr(module, "frozen"):
        module.frozen = True  # the backbone contract: a frozen backbone runs its forward under no_grad


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
    """Everything deploy needs besides weights: resolved recipe, normalisation stats, embodiment, stage name."""
    checkpoint["xr0_recipe"] = getattr(module, "xr0_recipe", None)
    checkpoint["xr0_stats"] = getattr(module, "xr0_stats", None)
    checkpoint["xr0_embodiment"] = embodiment_of(module)
    checkpoint["xr0_stage"] = stage
    proc = getattr(module, "xr0_processor", None)
    checkpoint["xr0_processor"] = proc.to_dict() if hasattr(proc, "to_dict") else proc


def load_metadata(module: Any, checkpoint: dict[str, Any]) -> None:
    """On resume, keep the stats/recipe/processor of the checkpoint if `xr0 fit` did not set them."""
    for key in ("xr0_recipe", "xr0_stats", "xr0_processor"):
        if getattr(module, key, None) is None and checkpoint.get(key) is not None:
            setattr(module, key, checkpoint[key])


# ---------------------------------------------------------------- TensorBoard figure
def chunk_figure(pred: Tensor, true: Tensor, action_mask: Tensor | None = None, max_dims: int = 4,
                 prefix_len: int = 0):
    """Predicted vs true action chunk for one sample: pred/true (T, D) -> a matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    pred, true = pred.detach().float().cpu(), true.detach().float().cpu()  # (T, D)
    if action_mask is not None and action_mask.ndim == 2:  # per chunk step (T, D): a dim valid at any step
        action_mask = action_mask.any(0)
    dims = torch.arange(true.shape[-1]) if action_mask is None else action_mask.detach().cpu().nonzero().flatten()
    dims = dims[:max_dims].tolist()
    fig, axes = plt.subplots(1, max(len(dims), 1), figsize=(3 * max(len(dims), 1), 2.5), squeeze=False)
    steps = range(true.shape[0])
    for ax, d in zip(axes[0], dims):
        ax.plot(steps, true[:, d], "k-", label="true")
        ax.plot(steps, pred[:, d], "r--", label="predicted")
        if prefix_len > 0:
            ax.axvspan(-0.5, prefix_len - 0.5, color="0.85", label="prefix")
        ax.set_title(f"dim {d}")
        ax.set_xlabel("chunk step")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def log_chunk_figure(module: Any, tag: str, pred: Tensor, true: Tensor, action_mask: Tensor | None,
                     every_n_steps: int, prefix_len: int = 0) -> bool:
    """Add the figure of sample 0 to TensorBoard every `every_n_steps` steps; returns whether it logged."""
    if every_n_steps <= 0 or module.global_step % every_n_steps != 0:
        return False
    logger = getattr(module, "logger", None)
    writer = getattr(logger, "experiment", None) if logger is not None else None
    if writer is None or not hasattr(writer, "add_figure"):
        return False
    import matplotlib.pyplot as plt

    fig = chunk_figure(pred[0], true[0], None if action_mask is None else action_mask[0], prefix_len=prefix_len)
    writer.add_figure(tag, fig, global_step=module.global_step)
    plt.close(fig)
    return True


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


def plot_policy_chunk(module: Any, policy: Any, batch: dict[str, Any], every_n_steps: int, steps: int,
                      prefix_len: Tensor | None = None) -> bool:
    """Every N steps: a no-grad 5-step generation for the batch, plotted against the true chunk."""
    if every_n_steps <= 0 or module.global_step % every_n_steps != 0 or not module.logger:
        return False
    p = int(prefix_len[0]) if prefix_len is not None else 0
    with torch.no_grad():
        prefix = batch["actions"][:, :p] if p > 0 else None  # (B, P, 32): sample 0's Δt_c for all
        pred = policy.predict_chunk(batch, prefix=prefix, steps=steps)  # (B, T, 32)
    return log_chunk_figure(module, "train/chunk", pred, batch["actions"], batch.get("action_mask"),
                            every_n_steps, prefix_len=p)
