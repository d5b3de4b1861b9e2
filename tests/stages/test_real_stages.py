"""Stages 2 and 3 with the real tiny Qwen3-VL + DiT on one fixed batch, each checked for what it must do: the loss
on that batch (fixed noise and τ) falls, gradients reach exactly the trainable parts (stage 2: the DiT only, the VLM
bit-identical; stage 3 sync: the VLM layers the DiT reads too), and stage-3 async trains with a prefix, re-weighting
and a model that keeps the committed actions it is given."""
from pathlib import Path

import lightning as L
import pytest
import torch

from xr0 import config
from xr0.config import load_recipe, validate

TINY = Path(__file__).parents[2] / "recipes" / "tiny"


class Record(L.Callback):
    """Per-step losses and logged metrics, the first batch as the module saw it (after the device hooks), and the
    loss on it before the first optimiser step (`start`, with `prefix_len`)."""

    def __init__(self, prefix_len=None):
        self.values, self.metrics, self.batch, self.start, self.prefix_len = [], [], None, None, prefix_len

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.batch is None:
            self.batch = {k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()}
            self.start = loss_on(pl_module, self.batch, self.prefix_len)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.values.append(float(outputs["loss"]))
        self.metrics.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def build(recipe: str, *extra: str):
    torch.manual_seed(0)
    tree = validate(load_recipe(TINY / recipe, ["stage.init_from=null", "data.num_samples=4", "data.batch_size=4",
                                                "stage.optim.lr=3e-3", "stage.optim.warmup_steps=1", *extra]))
    return config.build(tree["data"], "data"), config.build(tree["stage"], "stage")


def fit_fixed_batch(data, module, steps: int, prefix_len=None) -> Record:
    """`steps` optimiser steps on one fixed batch of 4 samples."""
    rec = Record(prefix_len)
    L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, callbacks=[rec]).fit(module, datamodule=data)
    return rec


def loss_on(module, batch, prefix_len=None) -> float:
    """The flow loss on `batch` with one fixed draw of noise and τ (4 of them), in eval mode; the global random state
    is left as it was, so measuring does not change the training run."""
    pol = module.policy
    was = pol.training
    pol.eval()
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(123)
        out = pol.flow_loss(batch, pol.context(batch), prefix_len=prefix_len, repeat=4)
    pol.train(was)
    return float(out["loss"])


def grads_of_one_step(module, batch, prefix_len=None) -> dict[str, torch.Tensor | None]:
    """Gradients of one training loss on `batch`, by parameter name (None: not reached)."""
    module.zero_grad(set_to_none=True)
    module.train()
    torch.manual_seed(7)
    pol = module.policy
    pol.flow_loss(batch, pol.context(batch), prefix_len=prefix_len)["loss"].backward()
    return {n: p.grad for n, p in module.named_parameters()}


def reached(g) -> bool:
    return g is not None and bool(g.abs().sum() > 0)


@pytest.mark.parametrize("family", ["qwen3vl", "paligemma"])
def test_stage2_trains_the_dit_only_and_fits_the_batch(family):
    """The DiT learns from either VLM family's K/V (the recipe switched in one key)."""
    data, module = build("stage2.yaml", f"_tiny_vlm.name={family}")
    before = {k: v.clone() for k, v in module.state_dict().items()}
    rec = fit_fixed_batch(data, module, 40)
    batch = rec.batch
    after = module.state_dict()
    vlm = [k for k in before if k.startswith("policy.backbone.")]
    assert vlm and all(torch.equal(before[k], after[k]) for k in vlm)  # the frozen VLM is bit-identical
    assert not module.policy.backbone.training and not any(p.requires_grad for p in module.policy.backbone.parameters())
    head = [k for k in before if k.startswith("policy.head.")]
    assert sum(not torch.equal(before[k], after[k]) for k in head) == len(head)  # every DiT tensor trained

    grads = grads_of_one_step(module, batch)
    assert all(g is None for n, g in grads.items() if n.startswith("policy.backbone."))
    assert sum(reached(g) for n, g in grads.items() if n.startswith("policy.head.")) >= 0.9 * len(head)

    end = loss_on(module, batch)
    assert end < 0.7 * rec.start, (rec.start, end)  # the loss on the trained batch, same noise and τ


def test_stage3_sync_trains_the_vlm_layers_the_dit_reads():
    data, module = build("stage3.yaml", "stage.mode=sync", "stage.prefix_sampler=null", "stage.reweight=false")
    before = {k: v.clone() for k, v in module.state_dict().items()}
    rec = fit_fixed_batch(data, module, 30)
    batch = rec.batch
    grads = grads_of_one_step(module, batch)
    depth = module.policy.head.depth
    layers = module.policy.backbone.num_layers
    read = [f".layers.{i}.self_attn.{p}_proj.weight" for i in range(layers - depth, layers) for p in ("k", "v")]
    for suffix in read:  # the K/V projections of every VLM layer the DiT attends to take gradients
        names = [n for n in grads if n.startswith("policy.backbone.") and n.endswith(suffix) and "visual" not in n]
        assert names and all(reached(grads[n]) for n in names), suffix
    after = module.state_dict()
    changed = [k for k in before if k.startswith("policy.backbone.") and not torch.equal(before[k], after[k])]
    assert any(k.endswith(read[-1]) for k in changed)  # and training moved them
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    end = loss_on(module, batch)
    assert end < 0.7 * rec.start, (rec.start, end)


def test_stage3_async_trains_with_a_prefix_and_reweighting_and_keeps_committed_actions():
    data, module = build("stage3.yaml")
    assert module.mode == "async" and module.reweight == "batch"
    plen = torch.tensor([2, 0, 1, 3])
    rec = fit_fixed_batch(data, module, 30, plen)
    batch = rec.batch
    m = rec.metrics
    assert any(x["train/prefix_len"] > 0 for x in m) and any(x["train/prefix_zero_fraction"] < 1 for x in m)
    # re-weighting ran: per-element weights |â − a| / (batch mean), clamped, are not all 1 on steps with a prefix
    assert any(abs(x["train/weight_mean"] - 1.0) > 1e-3 for x in m if x["train/prefix_len"] > 0)
    end = loss_on(module, batch, plen)  # unweighted: the re-weighted loss moves its own target
    assert end < 0.8 * rec.start, (rec.start, end)
    # the model post-trained with a prefix returns the committed actions unchanged, on the valid dims
    prefix = batch["actions"][:, :2]
    with torch.no_grad():
        chunk = module.policy.predict_chunk(batch, prefix=prefix)
    valid = batch["action_mask"].bool()[:, None, :].expand(-1, 2, -1)
    assert torch.equal(chunk[:, :2][valid], prefix[valid])
    assert not torch.allclose(chunk[:, 2:], batch["actions"][:, 2:])  # the rest is generated, not copied
