"""Stage 1: overfit a fixed robot+VL batch, metrics, metadata in checkpoints, batch-kind routing."""
import warnings

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


def _quiet(mod):
    mod.log = mod.log_dict = lambda *a, **k: None  # no trainer here: the loss is what is checked
    return mod


def test_stage1_weighs_one_vl_sample_as_one_robot_sample():
    torch.manual_seed(0)
    mod = _quiet(VLMCoTrain(TinyBackbone(), ChoicePolicyHead(chunk=4, num_candidates=3)))
    robot = robot_batch(b=6, seed=3)
    vl = vl_batch(b=2, seed=4)
    vl["answer"] = ["no", "it is a long answer"]  # 2 and 12 answer tokens: each sample's mean counts once
    with torch.no_grad():
        r = mod.robot_step(robot, "val")  # mean over the 6 robot samples
        per_vl = mod.vl_step(vl, "val")  # (2,) one loss per VL sample
        alone = [mod.vl_step({k: v[i:i + 1] for k, v in vl.items()}, "val").item() for i in range(2)]
        total = mod._step({"robot": robot, "vl": vl}, "val")
    assert per_vl.shape == (2,) and per_vl.tolist() == pytest.approx(alone, rel=1e-5)
    assert abs(alone[0] - alone[1]) > 0.01  # the two answers are not the same loss
    assert total.item() == pytest.approx((6 * r.item() + sum(alone)) / 8, rel=1e-5)
    # vl_weight scales a VL sample against a robot sample; 0 trains robot-only
    mod.vl_weight = 0.5
    with torch.no_grad():
        half = mod._step({"robot": robot, "vl": vl}, "val")
    assert half.item() == pytest.approx((6 * r.item() + 0.5 * sum(alone)) / 8, rel=1e-5)


def test_stage1_warns_once_when_no_vl_sample_arrives(tmp_path):
    from xr0.stages.vlm_cotrain import NoVLWarning

    def run(batch, **kw):
        mod = VLMCoTrain(TinyBackbone(), ChoicePolicyHead(chunk=4, num_candidates=2), vl_warn_steps=3, **kw)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            trainer(tmp_path, 6).fit(mod, DataLoader(Fixed(batch), batch_size=None))
        return [w for w in seen if issubclass(w.category, NoVLWarning)]

    robot_only = run(robot_batch())
    assert len(robot_only) == 1  # once, after 3 steps, though 6 ran
    assert "no vision-language sample in 3 steps" in str(robot_only[0].message)
    assert "data.vl_ratio" in str(robot_only[0].message) and "stage.vl_weight: 0" in str(robot_only[0].message)
    assert run({"robot": robot_batch(), "vl": vl_batch()}) == []
    assert run(robot_batch(), vl_weight=0.0) == []  # robot-only on purpose


def test_synthetic_co_training_logs_the_ratio_it_was_given(tmp_path):
    """data.vl_ratio "1:6" with batches of 2 robot samples: one VL sample every third batch, and the stage logs
    train/vl_fraction = 1/7 after 6 steps."""
    from xr0.data.synthetic import SyntheticData

    mod = VLMCoTrain(TinyBackbone(), ChoicePolicyHead(chunk=4, num_candidates=2))
    data = SyntheticData(batch_size=2, num_samples=12, chunk=4, image_size=8, vl_ratio="1:6")
    tr = trainer(tmp_path, 6)
    tr.fit(mod, data)
    assert mod.seen.tolist() == [12, 2]
    assert float(tr.logged_metrics["train/vl_fraction"]) == pytest.approx(1 / 7)
