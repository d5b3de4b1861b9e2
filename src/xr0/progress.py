"""What a run prints: one progress bar over optimizer steps, a one-line summary at the end, and no warning that
asks nothing of the user.

Lightning's own bar counts batches per epoch, so a step-bounded run over a stream shows `Epoch 0/-2` and no total;
xr0 runs are bounded by `trainer.max_steps`, so the bar counts steps against it.
"""
from __future__ import annotations

import logging
import sys
import warnings
from typing import Any

from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar


class StepProgress(ProgressBar):
    """tqdm over global steps out of max_steps, with the progress-bar metrics (the train loss) as its postfix."""

    def __init__(self) -> None:
        super().__init__()
        self._enabled, self.bar = True, None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        from tqdm import tqdm

        total = steps_total(trainer)
        tty = sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=trainer.global_step, desc="train", unit="step", dynamic_ncols=True,
                        disable=not (self._enabled and trainer.is_global_zero), mininterval=0.2 if tty else 15.0)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.bar is None:
            return
        self.bar.update(trainer.global_step - self.bar.n)
        metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k != "v_num"}
        self.bar.set_postfix({k.split("/")[-1]: v for k, v in metrics.items()}, refresh=False)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def steps_total(trainer: Any) -> int | None:
    """Optimizer steps the run will take: max_steps when it bounds the run, else what the epochs amount to
    (None for an endless stream)."""
    if trainer.max_steps and trainer.max_steps > 0:
        return trainer.max_steps
    est = trainer.estimated_stepping_batches  # inf for a stream without a length
    return int(est) if est != float("inf") else None


class _DropTips(logging.Filter):
    """Lightning's advertisement of third-party services asks nothing of a user."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


# Warnings that ask nothing of an xr0 user: the stages define a validation step for labs that add a validation
# split, and the stock recipes have none; a resumed run writes into its own checkpoint folder (xr0.run decides who
# owns a folder, xr0.fault's ledger what rotation may delete); Lightning's own use of a torch API torch deprecated.
NOISE = (r"You defined a `validation_step` but have no `val_dataloader`",
         r"Checkpoint directory .* exists and is not empty",
         r".*isinstance\(treespec, LeafSpec\)")


def quiet(module: Any) -> None:
    """Silence what asks nothing of the user: the litlogger tip, the warnings in NOISE, and Lightning's "modules in
    eval mode" warning when the modules in eval mode are exactly the frozen backbone's (declared frozen: eval mode is
    the point). Any other module left in eval mode still warns. Call it before the Trainer is built: the tip is
    printed by the Trainer's constructor."""
    for text in NOISE:
        warnings.filterwarnings("ignore", message=text)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in log.filters):
            log.addFilter(_DropTips())
    module.train()  # the mode Lightning checks at fit start: stages keep a frozen backbone in eval
    frozen = [n for n, m in module.named_modules() if getattr(m, "frozen", False)]
    in_eval = [n for n, m in module.named_modules() if not m.training]
    if in_eval and all(any(n == f or n.startswith(f + ".") for f in frozen) for n in in_eval):
        warnings.filterwarnings("ignore", message=rf"Found {len(in_eval)} module\(s\) in eval mode at the start of "
                                                  rf"training")


def summary(trainer: Any, seconds: float, checkpoint: Any) -> str:
    """`[xr0] done: 20 steps in 12.3 s, train/loss 0.123; checkpoint runs/x/checkpoints/last.ckpt`."""
    loss = trainer.callback_metrics.get("train/loss")
    loss_text = f", train/loss {float(loss):.4g}" if loss is not None else ""
    return (f"[xr0] done: {trainer.global_step} steps in {seconds:.1f} s{loss_text}; checkpoint {checkpoint}")


