"""Kill a real `xr0 fit` process with SIGKILL (between saves, and in the middle of one), resume it with
`--resume last`, and check it continues from a complete checkpoint."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from xr0.fault import checkpoint_is_readable

RECIPE = Path(__file__).parents[2] / "recipes" / "tiny" / "stage2.yaml"


def _cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "xr0.cli", "fit", str(RECIPE), "stage.init_from=null", f"run.out_dir={out}",
            "trainer.max_steps=40", "run.checkpoint_every_n_steps=4", "run.keep_last_k=2", "run.tensorboard=false",
            "data.num_samples=256", *extra]


def _steps(ckpts: Path) -> dict[str, int]:
    """global_step of every complete checkpoint in the folder, by file name."""
    return {p.name: torch.load(p, map_location="cpu", weights_only=True)["global_step"]
            for p in sorted(ckpts.glob("*.ckpt")) if checkpoint_is_readable(p)}


def test_sigkill_then_resume_last_continues_from_the_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    # far longer than the test: the run is killed at a checkpoint the test saw, never in a race with its own end
    proc = subprocess.Popen(_cmd(out, "trainer.max_steps=100000"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    ckpts = out / "checkpoints"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None and len(list(ckpts.glob("step*.ckpt"))) < 2:
            time.sleep(0.2)
        assert proc.poll() is None, f"the run exited ({proc.returncode}) before it could be killed"
        assert len(list(ckpts.glob("step*.ckpt"))) >= 2, "no second checkpoint within 240 s"
        os.killpg(proc.pid, signal.SIGSTOP)  # frozen: what is on disk now is what the kill leaves
        observed = _steps(ckpts)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert _steps(ckpts) == observed  # the kill lost nothing that was complete
    # the kill may fall between a step save and the last.ckpt save: the resume takes the most steps either way
    step0 = max(observed.values())
    assert step0 >= 8 and step0 % 4 == 0
    killed_at = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    assert killed_at["global_step"] in (step0, step0 - 4)
    assert killed_at["optimizer_states"][0]["state"], "optimizer state is in the checkpoint"

    final_step = step0 + 8  # two more checkpoints
    res = subprocess.run(_cmd(out, f"trainer.max_steps={final_step}", "--resume", "last"), capture_output=True,
                         text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resuming from {ckpts / 'last.ckpt'} (step {step0})" in res.stdout
    final = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    assert final["global_step"] == final_step
    # the learning-rate schedule continued rather than restarting its warmup
    assert final["lr_schedulers"][0]["last_epoch"] == final_step
    assert sorted(_steps(ckpts).values()) == [step0 + 4, final_step, final_step]  # keep_last_k=2, and last.ckpt
    assert (out / "recipe.yaml").is_file()
    assert not list(out.parent.glob("run-*")), "a resumed run writes into its own directory"


def _other_filesystem_tmpdir(run_parent: Path) -> Path | None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == run_parent.stat().st_dev:
        return None
    return shm


def test_sigkill_during_a_save_with_tmpdir_on_another_filesystem_leaves_no_partial_checkpoint(tmp_path):
    # Lightning's fsspec save writes its temporary file in TMPDIR and moves it: across filesystems that move is
    # a copy into the run folder, and a kill during it used to leave a half-written step*.ckpt there
    shm = _other_filesystem_tmpdir(tmp_path)
    if shm is None:
        pytest.skip("no second filesystem: /dev/shm is missing or on the run folder's device "
                    "(test_fault.py checks the in-folder temporary + replace directly)")
    tmpdir = Path(tempfile.mkdtemp(dir=shm))
    out, marker = tmp_path / "run", tmp_path / "blocked.json"
    helper = Path(__file__).with_name("blocked_save.py")
    # saves 1 and 2 are step 2 and last.ckpt; the 3rd (step 4) stops half-way and waits to be killed
    cmd = [sys.executable, str(helper), str(marker), str(out), "3", "--", *_cmd(out)[3:],
           "run.checkpoint_every_n_steps=2", "run.keep_last_k=3"]
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True, env=env)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None and not marker.exists():
            time.sleep(0.1)
        assert marker.exists(), f"the save never reached the hook: {proc.stderr.read().decode()[-2000:]}"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(tmpdir, ignore_errors=True)
    blocked = Path(json.loads(marker.read_text())["file"])
    assert blocked.parent == out / "checkpoints", "the half-written bytes sit beside their destination"
    ckpts = sorted(p.name for p in (out / "checkpoints").glob("*.ckpt"))
    assert ckpts == ["last.ckpt", "step0000002.ckpt"], ckpts  # no step0000004.ckpt: its write never finished
    for name in ckpts:
        assert checkpoint_is_readable(out / "checkpoints" / name), f"{name} is a partial write"
    assert blocked.exists() and blocked.name.startswith(".step0000004.ckpt.tmp-")

    # the next start removes the orphan and continues from the last complete checkpoint
    res = subprocess.run(_cmd(out, "trainer.max_steps=4", "run.checkpoint_every_n_steps=2", "--resume", "last"),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "removed 1 unfinished checkpoint write" in res.stdout
    assert not blocked.exists() and not [p for p in (out / "checkpoints").iterdir() if ".tmp-" in p.name]
    assert torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 4
