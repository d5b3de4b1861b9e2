"""`xr0 fit`: recipe → validated tree → data + stage + Trainer → checkpoints beside the resolved recipe."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xr0 import config


@dataclass
class RunConfig:
    """The `run:` section: where a run writes, how it checkpoints, how it survives bad steps."""

    out_dir: str = "runs/${stage.name}"
    seed: int = 0
    checkpoint_every_n_steps: int = 500
    keep_last_k: int = 3
    tensorboard: bool = True
    max_nonfinite_steps: int = 5  # consecutive skipped non-finite steps before the run stops
    activation_checkpointing: bool = False  # with trainer.strategy=fsdp: checkpoint each wrapped block


def run_config(tree: dict[str, Any]) -> RunConfig:
    return RunConfig(**(tree.get("run") or {}))


def _run_dir(run: RunConfig, resume: str | None) -> Path:
    out = Path(run.out_dir)
    if resume is None and any((out / "checkpoints").glob("*.ckpt")):
        # never overwrite a user's checkpoints: a fresh run into a used directory gets its own folder
        out = out.with_name(f"{out.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        print(f"[xr0] {run.out_dir} already holds checkpoints; writing this run to {out}")
    return out


def attach_processor(module: Any, datamodule: Any) -> None:
    """Hand the backbone's input spec to the data (so it resizes as the backbone expects) and put the data's
    processor on the stage, which saves it in every checkpoint (xr0.processor)."""
    backbone = getattr(getattr(module, "policy", module), "backbone", None)
    spec = backbone.input_spec() if hasattr(backbone, "input_spec") else {}
    if hasattr(datamodule, "configure"):
        datamodule.configure(spec)
    if hasattr(datamodule, "processor"):
        module.xr0_processor = datamodule.processor()


def build_trainer(tree: dict[str, Any], module: Any, out: Path, callbacks: list | None = None, **extra: Any):
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import TensorBoardLogger

    from xr0.fault import NonFiniteGuard, RollingCheckpoint
    from xr0.strategies import make_strategy

    run = run_config(tree)
    kwargs = dict(tree.get("trainer") or {})
    callbacks = list(callbacks or [])
    kwargs.update(extra)
    if "strategy" in kwargs:
        kwargs["strategy"] = make_strategy(kwargs["strategy"], module, run.activation_checkpointing)
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
    return L.Trainer(default_root_dir=str(out), callbacks=callbacks, logger=logger, **kwargs)


def fit(recipe: str, overrides: list[str] | None = None, resume: str | None = None,
        callbacks: list | None = None) -> Path:
    """Train the stage a recipe names (extra Lightning callbacks optional). Returns the run directory."""
    import lightning as L

    from xr0.fault import find_resume_checkpoint
    from xr0.strategies import global_batch

    tree = config.validate(config.load_recipe(recipe, overrides))
    run = run_config(tree)
    out = _run_dir(run, resume)
    ckpt_path = resume
    if resume == "last":
        ckpt_path = str(find_resume_checkpoint(out / "checkpoints"))
        print(f"[xr0] resuming from {ckpt_path}")
    out.mkdir(parents=True, exist_ok=True)
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
    from xr0.progress import quiet, summary

    quiet(module)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    if trainer.is_global_zero:
        print(summary(trainer, time.perf_counter() - t0, out / "checkpoints" / "last.ckpt")
              + f"; TensorBoard: tensorboard --logdir {out / 'tb'}")
    return out
