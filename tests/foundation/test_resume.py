"""Kill a real `xr0 fit` process with SIGKILL, resume it with `--resume last`, and check it continues."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

RECIPE = Path(__file__).parents[2] / "recipes" / "tiny" / "stage2.yaml"


def _cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "xr0.cli", "fit", str(RECIPE), "stage.init_from=null", f"run.out_dir={out}",
            "trainer.max_steps=40", "run.checkpoint_every_n_steps=4", "run.keep_last_k=2", "run.tensorboard=false",
            "data.num_samples=256", *extra]


def test_sigkill_then_resume_last_continues_from_the_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(_cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ckpts = out / "checkpoints"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if len(list(ckpts.glob("step*.ckpt"))) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the run finished before it could be killed; make it longer"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    killed_at = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    step0 = killed_at["global_step"]
    assert 0 < step0 < 40
    assert killed_at["optimizer_states"][0]["state"], "optimizer state is in the checkpoint"

    res = subprocess.run(_cmd(out, "--resume", "last"), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming from" in res.stdout
    final = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    assert final["global_step"] == 40
    # the learning-rate schedule continued rather than restarting its warmup
    assert final["lr_schedulers"][0]["last_epoch"] == 40
    assert len(list(ckpts.glob("step*.ckpt"))) == 2  # keep_last_k
    assert (out / "recipe.yaml").is_file()
    assert not list(out.parent.glob("run-*")), "a resumed run writes into its own directory"
