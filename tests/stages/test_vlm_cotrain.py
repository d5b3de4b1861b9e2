"""Stage 1: overfit a fixed robot+VL batch, metrics, metadata in checkpoints, batch-kind routing."""
import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from xr0.heads.choice_policy import ChoicePolicyHead
from xr0.registry import STAGES
from xr0.stages.common import OptimConfig
from xr0.stages.vlm_cotrain import VLMCoTrain, split_kinds

from fakes import TinyBackbone, robot_batch, vl_batch


class Fixed(torch.utils.data.IterableDataset):
    def __init__(self, batch):
        self.batch = batch

    def __iter__(self):
        while True:
            yield self.batch


def trainer(tmp_path, steps):
    return L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)


@torch.no_grad()
def losses(mod, batch):
    """(per-sample L1 of the best candidate to the robot chunk (B,), the VL next-token loss) on `batch`."""
    r, v = batch["robot"], batch["vl"]
    cand, scores = mod.choice_forward(r)
    out = mod.head.loss(cand, scores, r["actions"], r["action_mask"])
    inputs = mod.backbone.prepare(v["images"], v["image_mask"], v["prompt"], answers=v["answer"])
    return out["l1_best"], mod.backbone.lm_loss(inputs)[0].item()


def test_split_kinds():
    r, v = robot_batch(), vl_batch()
    assert [k for k, _ in split_kinds(r)] == ["robot"]
    assert [k for k, _ in split_kinds(v)] == ["vl"]
    assert [k for k, _ in split_kinds({"robot": r, "vl": v})] == ["robot", "vl"]
    with pytest.raises(ValueError, match="mixes"):
        split_kinds({**r, "kind": ["robot", "vl"]})


def test_stage1_overfits_fixed_batch_and_logs_metrics(tmp_path):
    torch.manual_seed(0)
    assert STAGES.get("vlm_cotrain") is VLMCoTrain
    mod = VLMCoTrain(TinyBackbone(), ChoicePolicyHead(chunk=4, num_candidates=3),
                     optim=OptimConfig(lr=3e-3, warmup_steps=2))
    batch = {"robot": robot_batch(), "vl": vl_batch()}
    best_before, vl_before = losses(mod, batch)
    tr = trainer(tmp_path, 40)
    tr.fit(mod, DataLoader(Fixed(batch), batch_size=None))
    best_after, vl_after = losses(mod, batch)
    # co-training trains both halves on the trained samples: each sample's winning candidate moves toward its chunk
    # (only the winner gets the action gradient), and the VL answers become likelier
    assert (best_after < 0.9 * best_before).all(), (best_before, best_after)
    assert vl_after < 0.5 * vl_before, (vl_before, vl_after)
    logged = tr.logged_metrics
    for key in ("train/l1_chosen", "train/l1_best", "train/rank_accuracy", "train/vl_token_accuracy",
                "train/vl_perplexity", "train/vl_fraction"):
        assert key in logged, key
    assert logged["train/vl_fraction"] == pytest.approx(0.5)  # 2 robot + 2 VL samples per step
    assert logged["train/l1_best"] <= logged["train/l1_chosen"] + 1e-6


def test_stage1_rejects_a_non_choice_head():
    with pytest.raises(ValueError, match="choice_policy"):
        VLMCoTrain(TinyBackbone(), torch.nn.Linear(2, 2))
