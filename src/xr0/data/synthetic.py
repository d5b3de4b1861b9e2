"""`synthetic`: learnable generated batches with no files (stage tests, tiny recipes, CPU smoke runs).

Robot samples: the action chunk is a fixed smooth function of the state and the instruction, so an overfit
test sees the loss fall. With vl_ratio > 0 each batch also carries a vision-language sub-batch
(`{'robot': {...}, 'vl': {...}}`) whose answers are read off the sample (the sign of the first state dim).
"""
from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from xr0.registry import DATASETS
from xr0.types import ACTION_DIM

INSTRUCTIONS = ["pick up the block", "open the drawer", "push the button", "reach the goal"]


class _Robot(Dataset):
    def __init__(self, n: int, chunk: int, views: int, size: int, dims: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.state = torch.zeros(n, ACTION_DIM)
        self.state[:, :dims] = torch.randn(n, dims, generator=g)
        self.instr = torch.randint(len(INSTRUCTIONS), (n,), generator=g)
        w = torch.randn(len(INSTRUCTIONS), dims, dims, generator=g) / dims ** 0.5
        phase = torch.linspace(0, 1, chunk)[None, :, None]  # (1,T,1)
        drive = torch.einsum("nd,nde->ne", self.state[:, :dims], w[self.instr])  # (N,dims)
        self.actions = torch.zeros(n, chunk, ACTION_DIM)
        self.actions[..., :dims] = torch.tanh(drive[:, None, :] * (1 + phase))  # (N,T,dims)
        self.images = torch.rand(n, views, 3, size, size, generator=g)
        self.action_mask = torch.zeros(ACTION_DIM, dtype=torch.bool)
        self.action_mask[:dims] = True

    def __len__(self) -> int:
        return self.state.shape[0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        t = self.actions.shape[1]
        return {"images": self.images[i], "image_mask": torch.ones(self.images.shape[1], dtype=torch.bool),
                "instruction": INSTRUCTIONS[int(self.instr[i])], "state": self.state[i], "actions": self.actions[i],
                "action_mask": self.action_mask, "chunk_mask": torch.ones(t, dtype=torch.bool),
                "embodiment": "synthetic", "index": i}


def _collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for k in samples[0]:
        vals = [s[k] for s in samples]
        out[k] = torch.stack(vals) if torch.is_tensor(vals[0]) else vals
    return out


@DATASETS.register("synthetic")
class SyntheticData(L.LightningDataModule):
    """Generated robot (+ optional vision-language) batches with a learnable action function; no files."""

    def __init__(self, batch_size: int = 8, num_samples: int = 64, chunk: int = 10, views: int = 1,
                 image_size: int = 56, action_dims: int = 7, vl_ratio: float = 0.0, seed: int = 0,
                 embodiment: str | None = None):
        super().__init__()
        if not 1 <= action_dims <= ACTION_DIM:
            raise ValueError(f"data.action_dims must be in 1..{ACTION_DIM}, got {action_dims}")
        self.batch_size, self.vl_ratio = batch_size, vl_ratio
        self.embodiment = embodiment or "synthetic"
        self.robot = _Robot(num_samples, chunk, views, image_size, action_dims, seed)
        zeros, ones = [0.0] * ACTION_DIM, [1.0] * ACTION_DIM
        self.stats = {"state": {"mean": zeros, "std": ones}, "actions": {"mean": zeros, "std": ones},
                      "action_mask": self.robot.action_mask.tolist()}

    def _collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        robot = _collate(samples)
        if self.vl_ratio <= 0:
            return robot
        n = max(1, round(len(samples) * self.vl_ratio))
        vl = {"images": robot["images"][:n], "image_mask": robot["image_mask"][:n],
              "prompt": ["Is the first joint reading positive?"] * n,
              "answer": ["yes" if float(s) > 0 else "no" for s in robot["state"][:n, 0]], "kind": ["vl"] * n}
        return {"robot": robot, "vl": vl}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.robot, batch_size=self.batch_size, shuffle=True, collate_fn=self._collate,
                          drop_last=len(self.robot) >= self.batch_size)
