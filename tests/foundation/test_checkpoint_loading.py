"""Every path that reads a checkpoint file unpickles tensors and plain containers only (`weights_only=True`).

A checkpoint from somewhere else (a shared drive, a download) can hold a pickle that runs code when it is loaded.
Each test hands one load path a checkpoint whose payload would create a marker file if it were ever unpickled: the
load must refuse it, and the marker must not exist afterwards.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from xr0.export import load_checkpoint
from xr0.fault import checkpoint_is_readable, find_resume_checkpoint

RECIPE = Path(__file__).parents[2] / "recipes" / "tiny" / "stage2.yaml"


class Payload:
    """Unpickling this calls Path(marker).touch(): harmless, and visible."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (Path(self.marker),)


def poisoned(path: Path, marker: Path, step: int = 3) -> Path:
    """A checkpoint that looks like Lightning's (state_dict, global_step) with the payload beside the weights."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"w": torch.arange(3.0)}, "global_step": step, "epoch": 0, "note": Payload(marker)},
               path)
    return path


def test_the_payload_runs_when_unpickled(tmp_path):
    """The control: without weights_only the payload does run, so its absence below means the load refused it."""
    marker = tmp_path / "ran"
    torch.load(poisoned(tmp_path / "c.ckpt", marker), weights_only=False)
    assert marker.exists()


def test_load_checkpoint_and_load_policy_refuse_a_pickle_payload(tmp_path):
    from xr0.checkpoint import load_policy, read_state

    marker = tmp_path / "ran"
    ckpt = poisoned(tmp_path / "c.ckpt", marker)
    with pytest.raises(ValueError, match="not a readable xr0/Lightning checkpoint"):
        load_checkpoint(ckpt)
    with pytest.raises(ValueError, match="not a readable"):
        read_state(ckpt)  # init_from and `xr0 export` read through it
    with pytest.raises(ValueError, match="not a readable"):
        load_policy(ckpt)  # `xr0 serve`, `xr0 deploy`, `xr0 sim eval`
    assert not marker.exists()


def test_resume_last_probe_skips_a_pickle_payload_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    ckpts = tmp_path / "checkpoints"
    good = ckpts / "step0000002.ckpt"
    good.parent.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.zeros(3)}, "global_step": 2}, good)
    poisoned(ckpts / "last.ckpt", marker)
    assert not checkpoint_is_readable(ckpts / "last.ckpt")
    with pytest.warns(UserWarning, match="last.ckpt is corrupt or truncated"):
        assert find_resume_checkpoint(ckpts) == good
    assert not marker.exists()


def test_fit_resume_from_a_given_checkpoint_refuses_a_pickle_payload(tmp_path):
    """`xr0 fit --resume PATH` hands the file to Lightning with weights_only=True: the run stops, nothing ran."""
    from xr0.run import fit

    marker = tmp_path / "ran"
    ckpt = poisoned(tmp_path / "elsewhere" / "c.ckpt", marker)
    overrides = ["stage.init_from=null", f"run.out_dir={tmp_path / 'run'}", "trainer.max_steps=1",
                 "run.tensorboard=false", "data.num_samples=4", "trainer.enable_progress_bar=false"]
    with pytest.raises(Exception, match="(?i)weights.only"):
        fit(str(RECIPE), overrides, resume=str(ckpt))
    assert not marker.exists()
