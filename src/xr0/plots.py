"""The predicted-vs-true chunk figure TensorBoard shows during training: every action dimension in a grid,
named as the embodiment names it, in robot units (through the run's processor), the committed prefix shaded."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor


def robot_units(module: Any, pred: Tensor, true: Tensor, batch: dict[str, Any], i: int = 0):
    """Sample i's chunks (T, 32) normalised → (T, A) in robot units and the dimension names, through the module's
    processor (un-normalised, relative dims made absolute against the sample's state, not clipped: a plot shows
    what the model said). Without a processor: the valid canonical dims, normalised."""
    proc = getattr(module, "xr0_processor", None)
    if hasattr(proc, "decode"):
        raw_state = proc.raw_from_model_state(batch["state"][i].detach().float().cpu().numpy())
        p = proc.decode(pred[i].detach().float().cpu(), raw_state, clip=False)[0]
        t = proc.decode(true[i].detach().float().cpu(), raw_state, clip=False)[0]
        return p, t, list(proc.embodiment.action_names), "robot units"
    mask = batch.get("action_mask")
    m = mask[i] if mask is not None else torch.ones(true.shape[-1], dtype=torch.bool)
    dims = (m.any(0) if m.ndim == 2 else m).cpu().nonzero().flatten().tolist()
    pred_np, true_np = pred[i].detach().float().cpu().numpy(), true[i].detach().float().cpu().numpy()
    return pred_np[:, dims], true_np[:, dims], [f"dim {d}" for d in dims], "normalised"


def chunk_figure(pred: np.ndarray, true: np.ndarray, names: list[str], prefix_len: int = 0, units: str = "",
                 valid: np.ndarray | None = None, cols: int = 4, true_label: str = "true"):
    """pred/true (T, A) → a grid of A panels (cols per row), true in black, predicted in red, prefix shaded;
    steps past the episode end (valid False) are left out of `true`. true_label names the black line (an
    evaluation compares with the expert)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = max(len(names), 1)
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.8 * cols, 2.1 * rows + 0.4), squeeze=False)
    steps = np.arange(len(true))
    shown = np.ones(len(true), bool) if valid is None else np.asarray(valid, bool)
    for j, ax in enumerate(axes.flat):
        if j >= len(names):
            ax.axis("off")
            continue
        if prefix_len > 0:
            ax.axvspan(-0.5, prefix_len - 0.5, color="0.88", label="prefix")
        ax.plot(steps[shown], true[shown, j], "k-", label=true_label)
        ax.plot(steps, pred[:, j], "r--", label="predicted")
        ax.set_title(names[j], fontsize=9)
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=6)
    fig.supxlabel("chunk step", fontsize=8)
    if units:
        fig.supylabel(units, fontsize=8)
    fig.tight_layout()
    return fig


def log_chunk_figure(module: Any, tag: str, pred: Tensor, true: Tensor, batch: dict[str, Any], every_n_steps: int,
                     prefix_len: int = 0) -> bool:
    """Add sample 0's figure to TensorBoard every `every_n_steps` steps; returns whether it logged."""
    if every_n_steps <= 0 or module.global_step % every_n_steps != 0:
        return False
    logger = getattr(module, "logger", None)
    writer = getattr(logger, "experiment", None) if logger is not None else None
    if writer is None or not hasattr(writer, "add_figure"):
        return False
    import matplotlib.pyplot as plt

    p, t, names, units = robot_units(module, pred, true, batch)
    valid = batch["chunk_mask"][0].cpu().numpy() if torch.is_tensor(batch.get("chunk_mask")) else None
    fig = chunk_figure(p, t, names, prefix_len=prefix_len, units=units, valid=valid)
    writer.add_figure(tag, fig, global_step=module.global_step)
    plt.close(fig)
    return True


def plot_policy_chunk(module: Any, policy: Any, batch: dict[str, Any], every_n_steps: int, steps: int,
                      prefix_len: Tensor | None = None) -> bool:
    """Every N steps: a no-grad generation for the batch (sample 0's prefix for all), plotted against the truth."""
    if every_n_steps <= 0 or module.global_step % every_n_steps != 0 or not module.logger:
        return False
    p = int(prefix_len[0]) if prefix_len is not None else 0
    with torch.no_grad():
        prefix = batch["actions"][:, :p] if p > 0 else None  # (B, P, 32)
        pred = policy.predict_chunk(batch, prefix=prefix, steps=steps)  # (B, T, 32)
    return log_chunk_figure(module, "train/chunk", pred, batch["actions"], batch, every_n_steps, prefix_len=p)
