"""Stages 2 and 3 with the real tiny Qwen3-VL + DiT: the loss falls on a fixed batch; stage 2 leaves
the VLM bit-identical; stage-3 async trains with a prefix and re-weighting."""
from pathlib import Path

import lightning as L
import pytest
import torch

from xr0 import config
from xr0.config import load_recipe, validate

TINY = Path(__file__).parents[2] / "recipes" / "tiny"


class Losses(L.Callback):
    def __init__(self):
        self.values, self.mse = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.values.append(float(outputs["loss"]))
        self.mse.append(float(trainer.callback_metrics.get("train/mse", float("nan"))))  # unweighted flow MSE


def fit_fixed_batch(recipe: str, steps: int, *extra: str, metric: str = "loss"):
    """`steps` optimiser steps on one fixed batch of 4 samples; returns module and per-step losses (or, with
    metric="mse", the unweighted flow MSE)."""
    torch.manual_seed(0)
    tree = validate(load_recipe(TINY / recipe, ["stage.init_from=null", "data.num_samples=4", "data.batch_size=4",
                                                "stage.optim.lr=3e-3", "stage.optim.warmup_steps=1", *extra]))
    data, module = config.build(tree["data"], "data"), config.build(tree["stage"], "stage")
    rec = Losses()
    L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, callbacks=[rec]).fit(module, datamodule=data)
    return module, rec.values if metric == "loss" else rec.mse


def early_late(values, n=5):
    return sum(values[:n]) / n, sum(values[-n:]) / n


@pytest.mark.parametrize("family", ["qwen3vl", "paligemma"])
def test_stage2_overfits_and_keeps_the_vlm_bit_identical(family):
    """The DiT learns from either VLM family's K/V (the recipe switched in one key)."""
    torch.manual_seed(0)
    tree = validate(load_recipe(TINY / "stage2.yaml", ["stage.init_from=null", f"_tiny_vlm.name={family}"]))
    before = {k: v.clone() for k, v in config.build(tree["stage"], "stage").policy.backbone.state_dict().items()}
    module, losses = fit_fixed_batch("stage2.yaml", 40, f"_tiny_vlm.name={family}")
    early, late = early_late(losses)
    assert late < 0.7 * early, (early, late)
    after = module.policy.backbone.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not module.policy.backbone.training


def test_stage3_sync_overfits_and_trains_the_vlm():
    module, losses = fit_fixed_batch("stage3.yaml", 30, "stage.mode=sync", "stage.prefix_sampler=null",
                                     "stage.reweight=false")
    early, late = early_late(losses)
    assert late < 0.7 * early, (early, late)
    assert any(p.requires_grad for p in module.policy.backbone.parameters())


def test_stage3_async_lambda_with_reweighting_overfits():
    # the re-weighted loss moves its own target (weights follow the errors, normalised over the batch), so the
    # unweighted flow MSE is what shows the fit
    module, losses = fit_fixed_batch("stage3.yaml", 30, metric="mse")
    assert module.mode == "async" and module.reweight == "batch"
    early, late = early_late(losses)
    assert late < 0.8 * early, (early, late)
