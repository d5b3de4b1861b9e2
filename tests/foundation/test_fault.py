"""Non-finite steps are skipped then stop the run; resume skips corrupt checkpoints."""
import lightning as L
import pytest
import torch

from xr0.fault import NonFiniteError, find_resume_checkpoint
from xr0.run import build_trainer


class Toy(L.LightningModule):
    def __init__(self, bad_steps=()):
        super().__init__()
        self.lin = torch.nn.Linear(2, 1)
        self.bad_steps = set(bad_steps)

    def training_step(self, batch, idx):
        loss = self.lin(batch["x"]).pow(2).mean()
        if self.global_step in self.bad_steps:
            loss = loss * float("nan")
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.1)

    def train_dataloader(self):
        data = [{"x": torch.randn(4, 2), "source": ["toy"] * 4} for _ in range(8)]
        return torch.utils.data.DataLoader(data, batch_size=None)


def tree(max_steps, max_bad=3):
    return {"trainer": {"max_steps": max_steps, "accelerator": "cpu", "enable_progress_bar": False,
                        "enable_model_summary": False},
            "run": {"checkpoint_every_n_steps": 2, "keep_last_k": 2, "tensorboard": False,
                    "max_nonfinite_steps": max_bad}}


def test_nonfinite_step_is_skipped_and_weights_untouched(tmp_path):
    module = Toy(bad_steps={0})
    before = module.lin.weight.detach().clone()
    trainer = build_trainer(tree(1), module, tmp_path)
    with pytest.warns(UserWarning, match="non-finite"):
        trainer.fit(module)
    assert torch.equal(module.lin.weight, before)  # the only step was skipped
    assert torch.isfinite(module.lin.weight).all()


def test_consecutive_nonfinite_steps_stop_with_step_and_source(tmp_path):
    module = Toy(bad_steps={0, 1, 2, 3, 4})
    trainer = build_trainer(tree(6, max_bad=2), module, tmp_path)
    with pytest.raises(NonFiniteError, match=r"global step \d+ \(batch index 1, source=\['toy'\]\)"):
        with pytest.warns(UserWarning):
            trainer.fit(module)


def test_resume_falls_back_past_a_corrupt_last_checkpoint(tmp_path):
    module = Toy()
    trainer = build_trainer(tree(4), module, tmp_path)
    trainer.fit(module)
    ckpts = tmp_path / "checkpoints"
    names = sorted(p.name for p in ckpts.glob("*.ckpt"))
    assert "last.ckpt" in names and len(names) == 3  # keep_last_k=2 plus last
    (ckpts / "last.ckpt").write_bytes(b"truncated")
    with pytest.warns(UserWarning, match="corrupt"):
        good = find_resume_checkpoint(ckpts)
    assert good.name == "step0000004.ckpt"
    resumed = Toy()
    trainer = build_trainer(tree(6), resumed, tmp_path)
    trainer.fit(resumed, ckpt_path=str(good), weights_only=True)
    assert trainer.global_step == 6


def test_resume_with_no_checkpoints_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="start without --resume"):
        find_resume_checkpoint(tmp_path)
