"""Run by test_ddp.py: a tiny stage 2 trained by 2 processes over gloo on CPU, FSDP2 or DDP (Lightning re-launches
this script for rank 1). Each rank writes the step it started and ended at, the samples it read, checksums of the
full parameters (gathered from the shards) and of its own shards. argv: OUT RUN_DIR STRATEGY [RESUME_CKPT]."""
import hashlib
import json
import sys
from pathlib import Path

import lightning as L
import torch

from xr0.run import fit


def _full(p):
    return p.full_tensor() if hasattr(p, "full_tensor") else p  # gathering is collective: every rank does it


def _state(trainer, pl_module):
    """Full parameters (gathered from the shards) and how far the optimiser and schedule have gone."""
    full = torch.cat([_full(p).detach().flatten() for p in pl_module.parameters()]).double()
    opt = trainer.optimizers[0]
    steps = [float(s["step"]) for s in opt.state.values() if "step" in s]
    return {"sum": float(full.sum()), "abs": float(full.abs().sum()), "opt_step": max(steps, default=0.0),
            "sched": trainer.lr_scheduler_configs[0].scheduler.last_epoch}


class Record(L.Callback):
    def __init__(self, out: Path):
        self.out, self.start, self.seen, self.at = out, None, [], {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen += [int(i) for i in batch["index"]]

    def on_train_start(self, trainer, pl_module):
        self.start = trainer.global_step
        self.at[trainer.global_step] = _state(trainer, pl_module)  # after the resume restored everything

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 2:
            self.at[2] = _state(trainer, pl_module)  # what the step-2 checkpoint holds

    def on_train_end(self, trainer, pl_module):
        params = list(pl_module.parameters())
        full = torch.cat([_full(p).detach().flatten() for p in params]).double()
        local = torch.cat([(p.to_local() if hasattr(p, "to_local") else p).detach().flatten() for p in params])
        rec = {"rank": trainer.global_rank, "world": trainer.world_size, "start": self.start, "seen": self.seen, "at": self.at,
               "step": trainer.global_step, "full_sum": float(full.sum()), "full_abs": float(full.abs().sum()),
               "full_sha": hashlib.sha256(full.numpy().tobytes()).hexdigest(),
               "full_numel": full.numel(), "local_numel": local.numel(), "local_sum": float(local.double().sum()),
               "strategy": type(trainer.strategy).__name__,
               "dtensor": all(hasattr(p, "full_tensor") for p in params)}
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(rec))


if __name__ == "__main__":
    out, run_dir, strategy = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    resume = sys.argv[4] if len(sys.argv) > 4 else None
    recipe = Path(__file__).parents[2] / "recipes" / "tiny" / "stage2.yaml"
    # 8 samples / (2 ranks x batch 2) = 2 steps an epoch: the step-2 checkpoint closes epoch 0
    fit(str(recipe), ["stage.init_from=null", f"run.out_dir={run_dir}", "trainer.max_steps=4",
                      f"trainer.strategy={strategy}", "trainer.devices=2", "trainer.accelerator=cpu",
                      "run.tensorboard=false", "data.num_samples=8", "data.batch_size=2",
                      "run.checkpoint_every_n_steps=2", "run.keep_last_k=2"],
        resume=resume, callbacks=[Record(out)])
