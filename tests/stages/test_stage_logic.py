"""Stage logic with contract-shaped stand-ins (tests/stages/fakes.py): frozen VLM stays bit-identical,
gradients reach only trainable parameters, training_repeat/prefix/reweight reach the policy, the
stage hand-off 1→2→3 via init_from, and checkpoints carry recipe, stats and embodiment."""
import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from xr0.checkpoint import CheckpointMismatch
from xr0.export import load_checkpoint
from xr0.heads.choice_policy import ChoicePolicyHead
from xr0.stages.common import OptimConfig
from xr0.stages.dit_flow import DiTFlow
from xr0.stages.post_train import PostTrain
from xr0.stages.vlm_cotrain import VLMCoTrain

from fakes import FlowHead, TinyBackbone, robot_batch


class Fixed(torch.utils.data.IterableDataset):
    def __init__(self, batch):
        self.batch = batch

    def __iter__(self):
        while True:
            yield self.batch


def fit(mod, steps, tmp_path, batch=None, lr_zero=False):
    if lr_zero:
        mod.optim = OptimConfig(lr=0.0, backbone_lr=0.0, total_steps=steps)
    tr = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    tr.fit(mod, DataLoader(Fixed(batch or robot_batch()), batch_size=None))
    return tr


def prefix_sampler(b, device=None):
    return torch.tensor([0, 3][:b] + [1] * max(b - 2, 0), device=device)


@torch.no_grad()
def eval_loss(policy, batch):
    torch.manual_seed(123)
    return policy.flow_loss(batch, policy.context(batch), repeat=16)["loss"].item()


def test_stage2_freezes_vlm_bit_identical_and_overfits(tmp_path, fake_policy):
    torch.manual_seed(0)
    mod = DiTFlow(TinyBackbone(), FlowHead(), mask=None, tau_sampler=None, training_repeat=3,
                  optim=OptimConfig(lr=3e-3), plot_every_n_steps=0)
    vlm = {k: v.clone() for k, v in mod.policy.backbone.state_dict().items()}
    batch = robot_batch()
    before = eval_loss(mod.policy, batch)
    fit(mod, 30, tmp_path, batch)
    assert all(torch.equal(v, mod.policy.backbone.state_dict()[k]) for k, v in vlm.items())
    assert all(p.grad is None and not p.requires_grad for p in mod.policy.backbone.parameters())
    assert not mod.policy.backbone.training  # eval although Lightning put the module in train mode
    assert all(p.grad is not None for p in mod.policy.head.parameters())  # the DiT did train
    assert mod.policy.calls[-1] == {"prefix_len": None, "reweight": False, "repeat": 3}
    assert eval_loss(mod.policy, batch) < 0.9 * before  # flow matching has an irreducible floor


def test_post_train_async_passes_prefix_and_reweight(tmp_path, fake_policy):
    mod = PostTrain(TinyBackbone(), FlowHead(), mask=None, tau_sampler=None, mode="async",
                    prefix_sampler=prefix_sampler, reweight=True, optim=OptimConfig(lr=1e-3), plot_every_n_steps=0)
    tr = fit(mod, 2, tmp_path)
    call = mod.policy.calls[-1]
    assert call["reweight"] == "batch" and call["prefix_len"].tolist() == [0, 3]  # true means the paper's form
    assert mod.policy.backbone.embed.weight.grad is not None  # sync/async post-training trains the VLM too
    assert float(tr.logged_metrics["train/prefix_zero_fraction"]) == pytest.approx(0.5)


def test_stage_flow_steps_reach_the_policy(fake_policy):
    """stage.flow_steps sets the policy's Euler steps: re-weighting's generation and the default of predict_chunk."""
    assert PostTrain(TinyBackbone(), FlowHead(), None, None, flow_steps=3).policy.flow_steps == 3
    assert DiTFlow(TinyBackbone(), FlowHead(), None, None, flow_steps=7).policy.flow_steps == 7


def test_prefix_length_stays_below_the_chunk(fake_policy):
    """Δt_c is drawn from {0..6} whatever the chunk: on a chunk of 4 it is clamped to 3, so at least one action is
    noisy and the loss has something to train (docs/method.md §2.3)."""
    drawn = torch.tensor([0, 2, 3, 4, 6, -1])
    mod = PostTrain(TinyBackbone(), FlowHead(), None, None, mode="async",
                    prefix_sampler=lambda b, device=None: drawn[:b].to(device), plot_every_n_steps=0)
    got = mod.sample_prefix({"actions": torch.zeros(6, 4, 32)})
    assert got.dtype == torch.long and got.tolist() == [0, 2, 3, 3, 3, 0]
    assert mod.sample_prefix({"actions": torch.zeros(6, 7, 32)}).tolist() == [0, 2, 3, 4, 6, 0]
    sync = PostTrain(TinyBackbone(), FlowHead(), None, None, mode="sync", plot_every_n_steps=0)
    assert sync.sample_prefix({"actions": torch.zeros(6, 4, 32)}) is None


def test_post_train_sync_rejects_async_switches(fake_policy):
    with pytest.raises(ValueError, match="mode: async"):
        PostTrain(TinyBackbone(), FlowHead(), None, None, mode="sync", reweight=True)
    with pytest.raises(ValueError, match="prefix_sampler"):
        PostTrain(TinyBackbone(), FlowHead(), None, None, mode="async")


def test_post_train_frozen_backbone_trains_head_only(tmp_path, fake_policy):
    mod = PostTrain(TinyBackbone(freeze=True), FlowHead(), None, None, optim=OptimConfig(lr=1e-3),
                    plot_every_n_steps=0)
    vlm = {k: v.clone() for k, v in mod.policy.backbone.state_dict().items()}
    fit(mod, 2, tmp_path)
    assert all(torch.equal(v, mod.policy.backbone.state_dict()[k]) for k, v in vlm.items())


def test_handoff_1_to_2_to_3_with_metadata(tmp_path, fake_policy):
    torch.manual_seed(0)
    s1 = VLMCoTrain(TinyBackbone(), ChoicePolicyHead(chunk=4, num_candidates=2), optim=OptimConfig(lr=1e-3),
                    plot_every_n_steps=0)
    s1.xr0_recipe, s1.xr0_stats = {"embodiment": "sim", "stage": {"name": "vlm_cotrain"}}, {"mean": [0.0]}
    tr = fit(s1, 2, tmp_path / "s1")
    tr.save_checkpoint(tmp_path / "s1.ckpt")
    ck = load_checkpoint(tmp_path / "s1.ckpt")
    assert ck["xr0_stage"] == "vlm_cotrain" and ck["xr0_embodiment"] == "sim" and ck["xr0_stats"] == {"mean": [0.0]}

    s2 = DiTFlow(TinyBackbone(), FlowHead(), None, None, training_repeat=2, optim=OptimConfig(lr=1e-3),
                 plot_every_n_steps=0, init_from=str(tmp_path / "s1.ckpt"))
    # the constructor reads no file: the weights arrive in Lightning's setup, once
    assert not torch.equal(s2.policy.backbone.embed.weight, s1.backbone.embed.weight)
    s2.setup("fit")
    for k, v in s1.backbone.state_dict().items():
        assert torch.equal(s2.policy.backbone.state_dict()[k], v), k
    tr = fit(s2, 2, tmp_path / "s2")
    tr.save_checkpoint(tmp_path / "s2.ckpt")

    s3 = PostTrain(TinyBackbone(), FlowHead(), None, None, mode="sync", optim=OptimConfig(lr=1e-3),
                   plot_every_n_steps=0, init_from=str(tmp_path / "s2.ckpt"))
    fit(s3, 1, tmp_path / "s3", lr_zero=True)  # Lightning's setup loads stage 2; a zero-LR step changes nothing
    for k, v in s2.policy.state_dict().items():
        assert torch.equal(s3.policy.state_dict()[k], v), k

    with pytest.raises(CheckpointMismatch, match="missing in checkpoint: head"):
        PostTrain(TinyBackbone(), FlowHead(), None, None, init_from=str(tmp_path / "s1.ckpt")).setup("fit")
    with pytest.raises(CheckpointMismatch, match="backbone.embed.weight: checkpoint"):
        DiTFlow(TinyBackbone(hidden=48), FlowHead(), None, None, init_from=str(tmp_path / "s1.ckpt")).setup("fit")


def test_stage_constructors_read_no_files(tmp_path, fake_policy):
    """init_from is read in setup: building a stage (as load_policy and validate do) needs no earlier checkpoint."""
    gone = str(tmp_path / "deleted" / "last.ckpt")
    mod = PostTrain(TinyBackbone(), FlowHead(), None, None, init_from=gone)
    with pytest.raises(FileNotFoundError):
        mod.setup("fit")
