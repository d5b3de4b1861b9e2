"""`xr0 fit`: recipe → validated tree → data + stage + Trainer → checkpoints beside the resolved recipe."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xr0 import config


@dataclass
class RunConfig:
    """The `run:` section: where a run writes and how it checkpoints."""

    out_dir: str = "runs/${stage.name}"
    seed: int = 0
    checkpoint_every_n_steps: int = 500
    keep_last_k: int = 3
    tensorboard: bool = True


def run_config(tree: dict[str, Any]) -> RunConfig:
    return RunConfig(**(tree.get("run") or {}))


def fit(recipe: str, overrides: list[str] | None = None, resume: str | None = None) -> Path:
    """Train the stage a recipe names. Returns the run directory."""
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    tree = config.validate(config.load_recipe(recipe, overrides))
    run = run_config(tree)
    out = Path(run.out_dir)
    if resume is None and (out / "checkpoints").exists() and any((out / "checkpoints").glob("*.ckpt")):
        # never overwrite a user's checkpoints: a fresh run into a used directory gets its own folder
        out = out.with_name(f"{out.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        print(f"[xr0] {run.out_dir} already holds checkpoints; writing this run to {out}")
    out.mkdir(parents=True, exist_ok=True)
    config.save_resolved(tree, out / "recipe.yaml")
    L.seed_everything(run.seed, workers=True, verbose=False)

    datamodule = config.build(tree["data"], "data")
    module = config.build(tree["stage"], "stage")
    module.xr0_recipe = tree  # stages store it (and stats, embodiment) in every checkpoint
    if hasattr(datamodule, "stats"):
        module.xr0_stats = getattr(datamodule, "stats")

    trainer_kwargs = dict(tree.get("trainer") or {})
    callbacks = [
        ModelCheckpoint(dirpath=out / "checkpoints", filename="step{step:07d}", auto_insert_metric_name=False,
                        every_n_train_steps=run.checkpoint_every_n_steps, save_last=True,
                        save_top_k=run.keep_last_k, monitor="step", mode="max"),
        LearningRateMonitor(logging_interval="step"),
    ]
    logger = TensorBoardLogger(str(out), name="tb", default_hp_metric=False) if run.tensorboard else False
    trainer = L.Trainer(default_root_dir=str(out), callbacks=callbacks, logger=logger, **trainer_kwargs)
    ckpt_path = resume
    if resume == "last":
        ckpt_path = str(out / "checkpoints" / "last.ckpt")
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    print(f"[xr0] done: checkpoints in {out / 'checkpoints'}, TensorBoard: tensorboard --logdir {out / 'tb'}")
    return out


__all__ = ["RunConfig", "fit", "run_config", "dataclasses"]
