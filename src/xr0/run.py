"""`xr0 fit`: recipe → validated tree → data + stage + Trainer → checkpoints beside the resolved recipe.

A run folder belongs to one run: `fit` holds an exclusive lock on `<out_dir>/.xr0.lock` for the run's life
(the OS drops it when the process exits, however it dies), so a second `fit` into a folder in use stops at
once. A fresh run into a folder that already holds checkpoints gets a new sibling folder instead.
"""
from __future__ import annotations

import fcntl
import itertools
import os
import time
from pathlib import Path
from typing import IO, Any

from xr0 import config
from xr0.config import RunConfig

__all__ = ["RunConfig", "RunFolderBusy", "fit"]


def run_config(tree: dict[str, Any]) -> RunConfig:
    return RunConfig(**(tree.get("run") or {}))


LOCK_FILE = ".xr0.lock"
RUN_DIR_ENV = "XR0_RUN_DIR"  # rank 0 tells the ranks Lightning launches which folder it chose


class RunFolderBusy(RuntimeError):
    """Another process holds the run folder's lock."""


def is_rank_zero() -> bool:
    """Rank 0 before any process group exists, from the launcher's environment (torchrun, SLURM, Lightning's
    own launcher). Only rank 0 chooses, locks and writes the run folder."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID"))


def lock_run_dir(out: Path, wait_for_pid_s: float = 2.0) -> IO[str]:
    """Take the run folder's exclusive lock (held while the returned file stays open) or raise RunFolderBusy
    naming the holder's pid."""
    out.mkdir(parents=True, exist_ok=True)
    f = open(out / LOCK_FILE, "a+")  # noqa: SIM115 - the lock is held as long as this file stays open
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder, deadline = "", time.monotonic() + wait_for_pid_s
        while not holder and time.monotonic() < deadline:  # the holder writes its pid just after locking
            f.seek(0)
            holder = f.read().strip()
            if not holder:
                time.sleep(0.05)
        f.close()
        raise RunFolderBusy(f"run folder {out} is in use by another xr0 run (pid {holder or 'unknown'}); wait for "
                            f"it to finish, or give this run its own run.out_dir") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def _fresh_sibling(out: Path) -> Path:
    """`<out>-<time>-<pid>[-n]`, created here (mkdir fails if it exists): two runs never share one."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in itertools.count():
        cand = out.with_name(f"{out.name}-{stamp}-{os.getpid()}" + (f"-{n}" if n else ""))
        try:
            cand.mkdir(parents=True)
            return cand
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def _continues(out: Path, resume: str | None) -> bool:
    """Whether a run continues the one in `out` (`--resume last`, or one of its checkpoints)."""
    if resume is None:
        return False
    return resume == "last" or Path(resume).resolve().parent == (out / "checkpoints").resolve()


def _run_dir(run: RunConfig, resume: str | None) -> Path:
    from xr0.fault import _candidates

    out = Path(run.out_dir)
    if not is_rank_zero():
        return Path(os.environ.get(RUN_DIR_ENV, out))
    if (out / "checkpoints").is_dir() and _candidates(out / "checkpoints") and not _continues(out, resume):
        # never overwrite a user's checkpoints: a fresh run into a used directory gets its own folder
        new = _fresh_sibling(out)
        print(f"[xr0] {run.out_dir} already holds checkpoints of another run; writing this run to {new}")
        return new
    return out


def attach_processor(module: Any, datamodule: Any) -> None:
    """Hand the backbone's input spec to the data (so it resizes as the backbone expects) and put the data's
    processor on the stage, which saves it in every checkpoint (xr0.processor)."""
    backbone = getattr(getattr(module, "policy", module), "backbone", None)  # stage 1 holds it, stages 2/3 the policy
    spec = backbone.input_spec() if backbone is not None else {}  # the Backbone contract (xr0.backbones.protocol)
    if hasattr(datamodule, "configure"):
        datamodule.configure(spec)
    if hasattr(datamodule, "processor"):
        module.xr0_processor = datamodule.processor()


def build_trainer(tree: dict[str, Any], module: Any, out: Path, callbacks: list | None = None, **extra: Any):
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import TensorBoardLogger
    from lightning.pytorch.plugins.io import CheckpointIO

    from xr0.fault import AtomicCheckpointIO, NonFiniteGuard, RollingCheckpoint
    from xr0.progress import quiet
    from xr0.strategies import make_strategy

    quiet(module)  # before the Trainer: its constructor prints the tip
    run = run_config(tree)
    kwargs = dict(tree.get("trainer") or {})
    callbacks = list(callbacks or [])
    kwargs.update(extra)
    if "strategy" in kwargs:
        kwargs["strategy"] = make_strategy(kwargs["strategy"], module, run.activation_checkpointing,
                                           kwargs.get("accelerator"))
    plugins = kwargs.pop("plugins", None)
    plugins = [] if plugins is None else list(plugins) if isinstance(plugins, list | tuple) else [plugins]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())  # checkpoints are written beside their name, then renamed
    callbacks += [
        RollingCheckpoint(run.keep_last_k, dirpath=out / "checkpoints", filename="step{step:07d}",
                          auto_insert_metric_name=False, every_n_train_steps=run.checkpoint_every_n_steps,
                          save_last=True),
        NonFiniteGuard(run.max_nonfinite_steps),
    ]
    if kwargs.get("enable_progress_bar", True):  # a bar over steps (Lightning's counts epochs of a stream)
        from xr0.progress import StepProgress

        callbacks.append(StepProgress())
    logger = TensorBoardLogger(str(out), name="tb", default_hp_metric=False) if run.tensorboard else False
    if logger:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    return L.Trainer(default_root_dir=str(out), callbacks=callbacks, logger=logger, plugins=plugins, **kwargs)


def fit(recipe: str, overrides: list[str] | None = None, resume: str | None = None,
        callbacks: list | None = None) -> Path:
    """Train the stage a recipe names (extra Lightning callbacks optional). Returns the run directory."""
    import lightning as L

    from xr0.fault import checkpoint_step, clean_stale, find_resume_checkpoint, recover_last
    from xr0.plugins import load_plugins
    from xr0.strategies import global_batch

    load_plugins()  # a recipe may name plugin parts; idempotent when the CLI already loaded them
    tree = config.validate(config.load_recipe(recipe, overrides))
    run = run_config(tree)
    rank0 = is_rank_zero()
    out = _run_dir(run, resume)
    lock = lock_run_dir(out) if rank0 else None
    before = os.environ.get(RUN_DIR_ENV)
    try:
        ckpts = out / "checkpoints"
        if rank0:
            os.environ[RUN_DIR_ENV] = str(out)  # Lightning's launcher copies the environment to the other ranks
            removed = clean_stale(ckpts)
            if removed:
                print(f"[xr0] removed {len(removed)} unfinished checkpoint write(s) a killed run left in {ckpts}")
        ckpt_path = resume
        if resume == "last":
            ckpt_path = str(recover_last(ckpts) if rank0 else find_resume_checkpoint(ckpts))
            print(f"[xr0] resuming from {ckpt_path} (step {checkpoint_step(Path(ckpt_path))})")
        if rank0:
            config.save_resolved(tree, out / "recipe.yaml")
        L.seed_everything(run.seed, workers=True, verbose=False)

        datamodule = config.build(tree["data"], "data")
        module = config.build(tree["stage"], "stage")
        module.xr0_recipe = tree  # stages store it (and stats, embodiment, processor) in every checkpoint
        module.xr0_stats = getattr(datamodule, "stats", None)
        attach_processor(module, datamodule)

        trainer = build_trainer(tree, module, out, callbacks)
        if trainer.is_global_zero:
            print(f"[xr0] {global_batch(getattr(datamodule, 'batch_size', None), trainer)}")
        from xr0.progress import summary

        t0 = time.perf_counter()
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        if trainer.is_global_zero:
            print(summary(trainer, time.perf_counter() - t0, out / "checkpoints" / "last.ckpt")
                  + f"; TensorBoard: tensorboard --logdir {out / 'tb'}")
    finally:
        if lock is not None:
            lock.close()  # releases the flock
            if before is None:
                os.environ.pop(RUN_DIR_ENV, None)
            else:
                os.environ[RUN_DIR_ENV] = before
    return out
