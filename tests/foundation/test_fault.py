"""Non-finite steps are skipped then stop the run; saves are atomic; resume skips (and sets aside) corrupt
checkpoints; rotation deletes only the run's own checkpoints."""
import os
import tempfile

import lightning as L
import pytest
import torch

from xr0.fault import (
    LEDGER,
    AtomicCheckpointIO,
    NonFiniteError,
    atomic_write,
    checkpoint_is_readable,
    clean_stale,
    find_resume_checkpoint,
    recover_last,
)
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
    with pytest.warns(UserWarning, match="kept the unreadable last.ckpt as last.corrupt-"):
        last = recover_last(ckpts)
    # what recipes and init_from point at is the checkpoint the run continues from; the bad file is kept
    assert last == ckpts / "last.ckpt" and checkpoint_is_readable(last)
    assert torch.load(last, weights_only=True)["global_step"] == 4
    (aside,) = ckpts.glob("last.corrupt-*.ckpt")
    assert aside.read_bytes() == b"truncated"
    assert find_resume_checkpoint(ckpts) == last  # set-aside files are never candidates again
    resumed = Toy()
    trainer = build_trainer(tree(6), resumed, tmp_path)
    trainer.fit(resumed, ckpt_path=str(last), weights_only=True)
    assert trainer.global_step == 6
    names = sorted(p.name for p in ckpts.glob("*.ckpt"))
    assert names == ["last.ckpt", aside.name, "step0000004.ckpt", "step0000006.ckpt"]  # no last-v1.ckpt
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 6
    assert torch.load(ckpts / "step0000004.ckpt", weights_only=True)["global_step"] == 4  # the link was replaced,
    # not written through


def test_resume_takes_the_checkpoint_with_the_most_steps_when_last_is_one_save_behind(tmp_path):
    # a kill between a run's step save and its last.ckpt save: step 12 is complete, last.ckpt still holds step 8
    module = Toy()
    trainer = build_trainer(tree(8), module, tmp_path)
    trainer.fit(module)
    ckpts = tmp_path / "checkpoints"
    newer = torch.load(ckpts / "last.ckpt", weights_only=True)
    newer["global_step"] = 12
    torch.save(newer, ckpts / "step0000012.ckpt")
    os.utime(ckpts / "step0000012.ckpt", (1, 1))  # older on the clock than last.ckpt: the step decides, not mtime
    assert find_resume_checkpoint(ckpts).name == "step0000012.ckpt"
    last = recover_last(ckpts)
    assert torch.load(last, weights_only=True)["global_step"] == 12
    assert torch.load(ckpts / "step0000012.ckpt", weights_only=True)["global_step"] == 12
    assert not list(ckpts.glob("*corrupt*")), "a readable checkpoint is never set aside"
    # a tie goes to last.ckpt, so a plain run's resume is unchanged
    assert find_resume_checkpoint(ckpts) == last


def test_atomic_write_keeps_the_old_file_until_the_new_one_is_complete(tmp_path):
    path = tmp_path / "ckpts" / "a.ckpt"
    atomic_write(path, lambda f: f.write(b"old"))
    seen = {}

    def half_then_fail(f):
        f.write(b"new-but-")
        f.flush()
        seen["temp"], seen["dest"] = f.name, path.read_bytes()
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert seen["dest"] == b"old"  # mid-write the destination still holds the complete old file
    assert seen["temp"].startswith(str(path.parent) + "/.a.ckpt.tmp-")  # the temporary sits beside it
    assert path.read_bytes() == b"old" and sorted(p.name for p in path.parent.iterdir()) == ["a.ckpt"]


def test_checkpoint_io_writes_nothing_to_tmpdir_and_orphans_are_cleaned(tmp_path, monkeypatch):
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))  # where fsspec would have put its temporary
    dest = tmp_path / "run" / "checkpoints" / "step0000002.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.arange(5.0)}}, dest)
    assert list(tmpdir.iterdir()) == []
    assert torch.equal(torch.load(dest, weights_only=True)["state_dict"]["w"], torch.arange(5.0))
    orphan = dest.with_name(".step0000004.ckpt.tmp-123-abcd")  # what a SIGKILL mid-save leaves
    orphan.write_bytes(b"half")
    assert clean_stale(dest.parent) == [orphan.name]
    assert sorted(p.name for p in dest.parent.iterdir()) == ["step0000002.ckpt"]


def test_rotation_deletes_only_this_runs_checkpoints(tmp_path):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    foreign = ckpts / "step0000001.ckpt"  # another run's (or a person's) file in the folder
    torch.save({"state_dict": {}, "global_step": 1}, foreign)
    module = Toy()
    trainer = build_trainer(tree(6), module, tmp_path)
    trainer.fit(module)
    names = sorted(p.name for p in ckpts.glob("*.ckpt"))
    assert names == ["last.ckpt", "step0000001.ckpt", "step0000004.ckpt", "step0000006.ckpt"]
    # a resumed run is the same run: it rotates what its killed predecessor wrote after the state it resumes
    resumed = Toy()
    trainer = build_trainer(tree(10), resumed, tmp_path)
    trainer.fit(resumed, ckpt_path=str(ckpts / "step0000004.ckpt"), weights_only=True)
    names = sorted(p.name for p in ckpts.glob("*.ckpt"))
    assert names == ["last.ckpt", "step0000001.ckpt", "step0000008.ckpt", "step0000010.ckpt"]
    assert len({line.split()[0] for line in (ckpts / LEDGER).read_text().splitlines()}) == 1


def test_resume_with_no_checkpoints_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="start without --resume"):
        find_resume_checkpoint(tmp_path)


def test_readable_means_a_lightning_dict_and_a_sharded_folder_needs_both_parts(tmp_path):
    torch.save({"global_step": 3}, tmp_path / "no_weights.ckpt")  # a dict, but not a checkpoint
    torch.save(torch.zeros(2), tmp_path / "tensor.ckpt")
    torch.save({"state_dict": {}, "global_step": 3}, tmp_path / "ok.ckpt")
    assert [checkpoint_is_readable(tmp_path / n) for n in ("no_weights.ckpt", "tensor.ckpt", "ok.ckpt")] == [
        False, False, True]
    sharded = tmp_path / "step0000004.ckpt"  # torch.distributed.checkpoint folder: .metadata + Lightning's meta.pt
    sharded.mkdir()
    torch.save({"global_step": 4}, sharded / "meta.pt")
    assert not checkpoint_is_readable(sharded)  # .metadata is written last: without it the save never finished
    (sharded / ".metadata").write_bytes(b"x")
    assert checkpoint_is_readable(sharded)
    torch.save({"epoch": 0}, sharded / "meta.pt")
    assert not checkpoint_is_readable(sharded)


def test_a_set_aside_checkpoint_is_never_resumed_from(tmp_path):
    """`recover_last` renames unreadable files `<stem>.corrupt-<time>.ckpt`; even one that reads fine later (a
    flaky disk) is no candidate: the run continues from the newest checkpoint it did not set aside."""
    torch.save({"state_dict": {}, "global_step": 2}, tmp_path / "step0000002.ckpt")
    torch.save({"state_dict": {}, "global_step": 9}, tmp_path / "last.corrupt-20260101-000000.ckpt")
    assert find_resume_checkpoint(tmp_path) == tmp_path / "step0000002.ckpt"
