"""Inside Trainer.fit the data module pops the worker counters off each batch and logs data/* metrics."""
import csv
import os
import shutil
import sys
import warnings
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).parent))
from helpers import episodes

from xr0.data import load_card, write_episodes
from xr0.data.cards import shard_list
from xr0.data.module import WebDatasetData


class _Probe(L.LightningModule):
    """Regresses actions from state; records the keys of every batch it is given."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(32, 32)
        self.batch_keys: list[set[str]] = []

    def training_step(self, batch, _):
        self.batch_keys.append(set(batch))
        return (self.lin(batch["state"])[:, None] - batch["actions"]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_fit_logs_a_corrupt_shard(tmp_path):
    card = write_episodes(episodes(n_eps=2, steps=8, size=8), tmp_path / "d", "libero_franka", "m", maxcount=4,
                          progress=False)
    shards = shard_list(load_card(card).urls)
    (Path(shards[1])).write_bytes(os.urandom(2000))  # one of the 4 shards is garbage
    dm = WebDatasetData(card=str(card), batch_size=2, num_workers=0, image_size=8, shuffle_buffer=0)
    probe = _Probe()
    trainer = L.Trainer(max_epochs=1, logger=L.pytorch.loggers.CSVLogger(tmp_path / "logs", name="t"),
                        log_every_n_steps=1, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(probe, datamodule=dm)
    assert len(probe.batch_keys) == 6  # 12 intact samples in batches of 2: the epoch ran to its end
    assert all("_counts" not in k for k in probe.batch_keys)  # the stage never sees the counters
    assert dm.counters["shards_failed"] == 1 and dm.metrics()["data/shards_failed"] == 1.0
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = [float(r["data/shards_failed"]) for r in rows if r.get("data/shards_failed")]
    assert logged and logged[-1] == 1
    assert max(float(r["data/samples/robot"]) for r in rows if r.get("data/samples/robot")) >= 10
    shutil.rmtree(tmp_path / "d")
