"""Surviving bad steps and bad files: a non-finite guard and a resume that falls back past corrupt checkpoints.

Checkpoint writes themselves are atomic already: Lightning's TorchCheckpointIO saves through an fsspec
transaction (temporary file, then rename), so a SIGKILL mid-save leaves the previous file intact.
"""
from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch


class NonFiniteError(RuntimeError):
    pass


class NonFiniteGuard(L.Callback):
    """Skip optimiser steps whose gradients are not finite; stop after `max_consecutive` in a row.

    Setting every grad to None makes torch optimisers skip those parameters, so the weights and the
    AdamW moments stay as they were (the LR scheduler still advances one step).
    """

    def __init__(self, max_consecutive: int = 5):
        self.max_consecutive = max_consecutive
        self.skipped = 0
        self.consecutive = 0
        self._source = "?"

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._source = describe_batch(batch, batch_idx)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        finite = all(torch.isfinite(g).all() for g in grads)
        if finite:
            self.consecutive = 0
            return
        self.skipped += 1
        self.consecutive += 1
        for g in optimizer.param_groups:
            for p in g["params"]:
                p.grad = None
        pl_module.log("train/nonfinite_skipped", float(self.skipped), on_step=True, reduce_fx="max")
        warnings.warn(f"step {trainer.global_step}: non-finite loss/gradients, step skipped (batch {self._source})")
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteError(
                f"{self.consecutive} consecutive non-finite steps, last at global step {trainer.global_step} "
                f"(batch {self._source}). Lower the learning rate, check the data source for NaN/inf, or use "
                f"precision 32 to locate the overflow."
            )

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))


def describe_batch(batch: Any, batch_idx: int) -> str:
    """Where a batch came from, for error messages: its sources/embodiments and index."""
    parts = [f"index {batch_idx}"]
    if isinstance(batch, dict):
        for key in ("source", "kind", "embodiment", "__url__"):
            if key in batch:
                val = batch[key]
                if isinstance(val, (list, tuple)):
                    val = sorted({str(v) for v in val})
                parts.append(f"{key}={val}")
    return ", ".join(parts)


def _step_of(path: Path) -> float:
    m = re.search(r"step(\d+)", path.name)
    return float(m.group(1)) if m else math.inf  # last.ckpt is newest


def checkpoint_is_readable(path: Path) -> bool:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return isinstance(ckpt, dict) and "state_dict" in ckpt
    except Exception:
        return False


def find_resume_checkpoint(ckpt_dir: Path) -> Path:
    """The newest readable checkpoint in a run's checkpoint folder; warns about each corrupt one skipped."""
    candidates = sorted(Path(ckpt_dir).glob("*.ckpt"), key=lambda p: (_step_of(p), p.stat().st_mtime), reverse=True)
    if not candidates:
        raise FileNotFoundError(f"--resume last: no checkpoints in {ckpt_dir}; start without --resume")
    for cand in candidates:
        if checkpoint_is_readable(cand):
            return cand
        warnings.warn(f"checkpoint {cand} is corrupt or truncated; falling back to the previous one")
    raise FileNotFoundError(f"--resume last: every checkpoint in {ckpt_dir} is unreadable ({', '.join(p.name for p in candidates)})")


class RollingCheckpoint(L.pytorch.callbacks.ModelCheckpoint):
    """ModelCheckpoint that keeps the newest `keep_last_k` step checkpoints on disk, including files an
    earlier, killed process wrote after its last recorded state (which a resumed run would not know of)."""

    def __init__(self, keep_last_k: int, **kwargs: Any):
        super().__init__(save_top_k=keep_last_k, monitor="step", mode="max", **kwargs)
        self.keep_last_k = keep_last_k

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        if trainer.is_global_zero and self.dirpath and self.keep_last_k > 0:
            steps = sorted(Path(self.dirpath).glob("step*.ckpt"), key=_step_of, reverse=True)
            for old in steps[self.keep_last_k:]:
                old.unlink(missing_ok=True)
