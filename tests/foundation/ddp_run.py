"""Run by test_ddp.py: a tiny stage trained by 2 DDP processes over gloo (Lightning re-launches this
script for rank 1). Each rank writes the sample indices it read and a checksum of its final parameters."""
import json
import sys
from pathlib import Path

import lightning as L
import torch

from xr0.run import fit


class Record(L.Callback):
    def __init__(self, out: Path):
        self.out, self.seen = out, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen += [int(i) for i in batch["index"]]

    def on_train_end(self, trainer, pl_module):
        params = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
        rec = {"rank": trainer.global_rank, "world": trainer.world_size, "seen": self.seen,
               "param_sum": float(params.double().sum()), "param_abs": float(params.double().abs().sum()),
               "step": trainer.global_step}
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(rec))


if __name__ == "__main__":
    out = Path(sys.argv[1])
    recipe = Path(__file__).parents[2] / "recipes" / "tiny" / "stage2.yaml"
    fit(str(recipe), ["stage.init_from=null", f"run.out_dir={out / 'run'}", "trainer.max_steps=4",
                      "trainer.strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu",
                      "run.tensorboard=false", "data.num_samples=32", "data.batch_size=2"],
        callbacks=[Record(out)])
