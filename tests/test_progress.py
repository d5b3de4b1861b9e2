"""What a user sees from `xr0 fit`: a bar over steps with its total, a one-line summary, no warning that asks
nothing of them (the frozen VLM's eval mode, Lightning's advertisement), and real warnings kept."""
from __future__ import annotations

import re
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader

from xr0.progress import StepProgress, quiet

ROOT = Path(__file__).resolve().parents[1]


def test_a_tiny_run_shows_steps_of_a_total_and_a_summary_and_no_noise(tmp_path):
    # the real CLI in its own process: what a user's terminal shows (in-process, pytest's log capture would swallow
    # Lightning's tip). 2 samples make 1 batch per epoch, fewer than log_every_n_steps (5): Lightning's warning
    # about it asks the user to act and must still show.
    cmd = [sys.executable, "-m", "xr0.cli", "fit", "recipes/tiny/stage2.yaml", "stage.init_from=null",
           "trainer.max_steps=3", "data.num_samples=2", f"run.out_dir={tmp_path}"]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=240, cwd=ROOT)
    shown = r.stdout + r.stderr
    assert r.returncode == 0, shown[-3000:]
    assert re.search(r"train: 100%.*\| 3/3 ", r.stderr), shown[-3000:]  # steps out of max_steps, not Epoch 0/-2
    assert re.search(r"\[xr0\] done: 3 steps in [\d.]+ s, train/loss [\d.e+-]+; checkpoint .*last\.ckpt", r.stdout)
    assert "Modules in eval mode: 106" in shown  # the frozen VLM is in eval mode ...
    assert "in eval mode at the start of training" not in shown  # ... as declared: no warning about it
    for noise in ("Tip:", "litlogger", "no `val_dataloader`", "LeafSpec"):
        assert noise not in shown, noise
    assert "smaller than the logging interval" in shown  # a warning that asks something still shows


def test_an_epoch_bounded_run_counts_the_steps_its_epochs_make(tmp_path, capfd):
    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 1)

        def training_step(self, batch, i):
            return self.lin(batch).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    loader = DataLoader(torch.randn(6, 2), batch_size=2)  # 3 batches per epoch
    L.Trainer(max_epochs=2, max_steps=-1, logger=False, enable_checkpointing=False, enable_model_summary=False,
              callbacks=[StepProgress()], default_root_dir=tmp_path).fit(Tiny(), loader)
    assert re.search(r"train: 100%.*\| 6/6 ", capfd.readouterr().err)  # 2 epochs × 3 batches, not Epoch 0/-2


def test_a_module_left_in_eval_by_mistake_still_warns():
    class Stage(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Linear(2, 2)
            self.backbone.frozen = True  # declared frozen: its eval mode is meant
            self.head = nn.Dropout()

        def train(self, mode=True):
            super().train(mode)
            self.backbone.eval()
            self.head.eval()  # not declared: a bug Lightning should still flag
            return self

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet(Stage())
        warnings.warn("Found 2 module(s) in eval mode at the start of training. This may lead to ...")
    assert any("in eval mode" in str(w.message) for w in caught)


def test_the_noise_is_dropped_and_a_real_warning_is_not():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet(nn.Linear(2, 2))
        warnings.warn("Checkpoint directory /runs/x/checkpoints exists and is not empty.")  # a resume: asks nothing
        warnings.warn("You defined a `validation_step` but have no `val_dataloader`. Skipping val loop.")
        real = "checkpoint last.ckpt is corrupt or truncated; falling back to the previous one"
        warnings.warn(real)
    assert [str(w.message) for w in caught] == [real]
