"""Shared stage pieces: warmup+cosine schedule, trainable-only AdamW groups, chunk figure, init_from errors."""
import math

import pytest
import torch
from torch import nn

from xr0.checkpoint import CheckpointMismatch, init_from
from xr0.stages.common import OptimConfig, configure_optimizers, lr_factor


def test_lr_factor_warmup_then_cosine():
    assert lr_factor(0, 10, 110, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 10, 110, 0.1) == pytest.approx(1.0)
    assert lr_factor(10, 10, 110, 0.1) == pytest.approx(1.0)
    assert lr_factor(60, 10, 110, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(110, 10, 110, 0.1) == pytest.approx(0.1)
    assert lr_factor(500, 10, 110, 0.1) == pytest.approx(0.1)


class Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(3, 3)
        self.head = nn.Linear(3, 2)


def test_optimizer_holds_only_trainable_params_and_backbone_lr():
    m = Two()
    opt = configure_optimizers(m, OptimConfig(lr=1e-3, backbone_lr=1e-5, total_steps=10))["optimizer"]
    params = {id(p) for g in opt.param_groups for p in g["params"]}
    assert params == {id(p) for p in m.parameters()}
    lrs = {g["lr"] for g in opt.param_groups if any(p is m.backbone.weight for p in g["params"])}
    assert lrs == {1e-5}  # the VLM has its own LR (no warmup: factor 1 at step 0)
    m.backbone.requires_grad_(False)
    opt = configure_optimizers(m, OptimConfig(total_steps=10))["optimizer"]
    params = {id(p) for g in opt.param_groups for p in g["params"]}
    assert params == {id(m.head.weight), id(m.head.bias)}
    decay = {g["weight_decay"] for g in opt.param_groups if any(p is m.head.bias for p in g["params"])}
    assert decay == {0.0}  # no weight decay on biases


def test_optimizer_needs_a_schedule_length():
    with pytest.raises(ValueError, match="total_steps"):
        configure_optimizers(Two(), OptimConfig())


def test_init_from_lists_first_mismatching_keys(tmp_path):
    src = Two()
    path = tmp_path / "a.ckpt"
    torch.save({"state_dict": {f"policy.{k}": v for k, v in src.state_dict().items()}, "xr0_stage": "dit_flow"}, path)
    dst = Two()
    loaded = init_from(dst, path, parts=("backbone",))
    assert sorted(loaded) == ["backbone.bias", "backbone.weight"]
    assert torch.equal(dst.backbone.weight, src.backbone.weight)
    assert not torch.equal(dst.head.weight, src.head.weight)  # only the requested part
    dst.head = nn.Linear(3, 4)
    with pytest.raises(CheckpointMismatch, match=r"head.weight: checkpoint \(2, 3\) vs model \(4, 3\)"):
        init_from(dst, path, parts=("backbone", "head"))
