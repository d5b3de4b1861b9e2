"""A run folder belongs to one run: two `xr0 fit` into one folder, and two fresh runs into a used one."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from xr0 import run as run_mod
from xr0.run import RunConfig, RunFolderBusy, _run_dir, lock_run_dir

RECIPE = Path(__file__).parents[2] / "recipes" / "tiny" / "stage2.yaml"


def _fit(out: Path, seed: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "xr0.cli", "fit", str(RECIPE), "stage.init_from=null", f"run.out_dir={out}",
            f"run.seed={seed}", "run.tensorboard=false", "data.num_samples=16", *extra]


def test_a_second_fit_into_a_folder_in_use_stops_at_once_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    lock = out / ".xr0.lock"
    # run A trains far longer than the test (it holds the folder until it is killed) and has written no
    # checkpoint yet when B starts: both see a new, empty folder, as when two runs are started together
    # A runs on one thread at the lowest priority: on CI's 2 cores a full-speed A starved B's start past 120 s
    a = subprocess.Popen(_fit(out, 1, "trainer.max_steps=100000", "run.checkpoint_every_n_steps=100000"),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=lambda: os.nice(19))
    try:
        deadline = time.time() + 120
        while time.time() < deadline and a.poll() is None:
            if lock.is_file() and lock.read_text().strip() == str(a.pid):
                break
            time.sleep(0.1)
        assert lock.read_text().strip() == str(a.pid), "run A never took the folder's lock"
        b = subprocess.run(_fit(out, 2, "trainer.max_steps=2"), capture_output=True, text=True, timeout=120)
        assert a.poll() is None, "run A must still hold the folder while B tries"
        assert b.returncode == 2
        err = b.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("xr0: error: run folder"), b.stderr[-2000:]
        assert str(out) in err[0] and f"pid {a.pid}" in err[0]
        assert yaml.safe_load((out / "recipe.yaml").read_text())["run"]["seed"] == 1  # A's, not B's
        os.killpg(a.pid, signal.SIGKILL)
        a.wait(timeout=30)
    finally:
        if a.poll() is None:
            os.killpg(a.pid, signal.SIGKILL)
    held = lock_run_dir(out)  # the OS released A's lock when it was killed
    held.close()


def test_lock_is_exclusive_within_one_machine_and_released_on_close(tmp_path):
    first = lock_run_dir(tmp_path)
    with pytest.raises(RunFolderBusy, match=rf"{tmp_path} is in use by another xr0 run \(pid {os.getpid()}\)"):
        lock_run_dir(tmp_path)  # flock locks are per open file: a second open in one process conflicts too
    first.close()
    lock_run_dir(tmp_path).close()


def test_fresh_runs_into_a_used_folder_in_the_same_second_get_their_own_siblings(tmp_path, monkeypatch):
    used = tmp_path / "run"
    (used / "checkpoints").mkdir(parents=True)
    (used / "checkpoints" / "last.ckpt").write_bytes(b"an earlier run's")
    # the same second and the same pid (two hosts sharing a filesystem): mkdir decides, never both
    monkeypatch.setattr(run_mod.time, "strftime", lambda fmt, *a: "20260101-000000")
    monkeypatch.setattr(run_mod.os, "getpid", lambda: 4242)
    cfg = RunConfig(out_dir=str(used))
    first, second = _run_dir(cfg, None), _run_dir(cfg, None)
    assert first.name == "run-20260101-000000-4242" and second.name == "run-20260101-000000-4242-1"
    assert first.is_dir() and second.is_dir()
    assert _run_dir(cfg, "last") == used  # a resume continues in the run's own folder
    assert _run_dir(cfg, str(used / "checkpoints" / "last.ckpt")) == used
    assert _run_dir(cfg, str(tmp_path / "elsewhere" / "step0000002.ckpt")).name.endswith("-2")  # another run's


def test_two_real_runs_started_together_into_a_used_folder_do_not_collide(tmp_path):
    used = tmp_path / "run"
    (used / "checkpoints").mkdir(parents=True)
    (used / "checkpoints" / "last.ckpt").write_bytes(b"an earlier run's")
    procs = [subprocess.Popen(_fit(used, seed, "trainer.max_steps=2", "run.checkpoint_every_n_steps=2"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-2000:]
    siblings = sorted(p for p in tmp_path.iterdir() if p.name.startswith("run-"))
    assert len(siblings) == 2
    seeds = sorted(yaml.safe_load((s / "recipe.yaml").read_text())["run"]["seed"] for s in siblings)
    assert seeds == [1, 2]
    for s in siblings:
        seed = yaml.safe_load((s / "recipe.yaml").read_text())["run"]["seed"]
        ckpt = torch.load(s / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        assert ckpt["xr0_recipe"]["run"]["seed"] == seed and ckpt["global_step"] == 2  # each folder is one run
    assert (used / "checkpoints" / "last.ckpt").read_bytes() == b"an earlier run's"
