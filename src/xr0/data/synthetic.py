"""`synthetic`: learnable generated batches with no files (stage tests, tiny recipes, CPU smoke runs).

Robot samples: the action chunk is a fixed smooth function of the state and the instruction, so an overfit
test sees the loss fall. With `embodiment:` the action/state dims sit at that robot's canonical slots and
chunk/views default to its chunk length and camera count.
Which kind a batch is: a flat dict (robot only, the contract in xr0/types.py) when vl_ratio is 0, else
{'robot': {...}, 'vl': {...} or None} — the same shapes the `webdataset` builder gives for a robot + VL mixture;
the VL sub-batch also carries `kind: ['vl', ...]`. vl_ratio is VL:robot ("1:6", or VL samples per robot sample):
each batch of batch_size robot samples gets the VL samples that keep the running total at that ratio
(xr0.data.mix.vl_count: with batch 2 at 1:6, one VL sample every third batch). Their answers are read off the
image's sample (the sign of the first state dim), so they are learnable too.
"""
from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from xr0.registry import DATASETS
from xr0.types import ACTION_DIM

INSTRUCTIONS = ["pick up the block", "open the drawer", "push the button", "reach the goal"]


class _Robot(Dataset):
    def __init__(self, n: int, chunk: int, views: int, size: int, slots: list[int], state_slots: list[int],
                 seed: int, embodiment: str):
        g = torch.Generator().manual_seed(seed)
        dims = len(slots)
        raw_state = torch.randn(n, len(state_slots), generator=g)
        self.state = torch.zeros(n, ACTION_DIM)
        self.state[:, state_slots] = raw_state
        self.instr = torch.randint(len(INSTRUCTIONS), (n,), generator=g)
        w = torch.randn(len(INSTRUCTIONS), len(state_slots), dims, generator=g) / len(state_slots) ** 0.5
        phase = torch.linspace(0, 1, chunk)[None, :, None]  # (1,T,1)
        drive = torch.einsum("nd,nde->ne", raw_state, w[self.instr])  # (N,dims)
        self.actions = torch.zeros(n, chunk, ACTION_DIM)
        self.actions[..., slots] = torch.tanh(drive[:, None, :] * (1 + phase))  # (N,T,dims)
        self.images = torch.rand(n, views, 3, size, size, generator=g)
        self.action_mask = torch.zeros(ACTION_DIM, dtype=torch.bool)
        self.action_mask[slots] = True
        self.embodiment = embodiment

    def __len__(self) -> int:
        return self.state.shape[0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        t = self.actions.shape[1]
        return {"images": self.images[i], "image_mask": torch.ones(self.images.shape[1], dtype=torch.bool),
                "instruction": INSTRUCTIONS[int(self.instr[i])], "state": self.state[i], "actions": self.actions[i],
                "action_mask": self.action_mask, "chunk_mask": torch.ones(t, dtype=torch.bool),
                "embodiment": self.embodiment, "index": i}


def _collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for k in samples[0]:
        vals = [s[k] for s in samples]
        out[k] = torch.stack(vals) if torch.is_tensor(vals[0]) else vals
    return out


@DATASETS.register("synthetic")
class SyntheticData(L.LightningDataModule):
    """Generated robot (+ optional vision-language) batches with a learnable action function; no files."""

    def __init__(self, batch_size: int = 8, num_samples: int = 64, chunk: int | None = None, views: int | None = None,
                 image_size: int = 56, action_dims: int | None = None, vl_ratio: float | str = 0.0, seed: int = 0,
                 embodiment: str | None = None, holdout: int = 0):
        """holdout: the last `holdout` of the `num_samples` samples are never trained on (`heldout_batch()`): the
        same action function on unseen states, for held-out evaluation."""
        super().__init__()
        if not 0 <= holdout < num_samples:
            raise ValueError(f"data.holdout must be in 0..{num_samples - 1} (data.num_samples - 1), got {holdout}")
        emb = None
        if embodiment is not None:  # the embodiment's dims, slots, cameras and chunk, unless given here
            from xr0 import embodiments

            emb = embodiments.get(embodiment)
            if action_dims is not None and action_dims != emb.action_dim:
                raise ValueError(f"data.action_dims={action_dims} but embodiment '{embodiment}' has {emb.action_dim} "
                                 f"action dims; drop data.action_dims")
        dims = emb.action_dim if emb else (action_dims or 7)
        if not 1 <= dims <= ACTION_DIM:
            raise ValueError(f"data.action_dims must be in 1..{ACTION_DIM}, got {dims}")
        slots = list(emb.slots("action")) if emb else list(range(dims))
        state_slots = list(emb.slots("state")) if emb and emb.state_dim else slots
        from xr0.data.mix import parse_vl_ratio

        self.batch_size, self.vl_ratio, self.holdout = batch_size, parse_vl_ratio(vl_ratio), holdout
        self._batches = 0  # robot batches collated so far (the VL schedule's position)
        self.embodiment = emb.name if emb else "synthetic"
        self.robot = _Robot(num_samples, chunk or (emb.chunk if emb else 10), views or (len(emb.cameras) if emb else 1),
                            image_size, slots, state_slots, seed, self.embodiment)
        zeros, ones = [0.0] * ACTION_DIM, [1.0] * ACTION_DIM
        self.stats = {"state": {"mean": zeros, "std": ones}, "actions": {"mean": zeros, "std": ones},
                      "action_mask": self.robot.action_mask.tolist()}
        if emb is None:  # a made-up robot of the generated dims, so checkpoints trained here still serve
            from xr0.embodiments import Embodiment

            v, t = self.robot.images.shape[1], self.robot.actions.shape[1]
            emb = Embodiment(name="synthetic", action_names=tuple(f"a{i}" for i in range(dims)),
                             state_names=tuple(f"s{i}" for i in range(len(state_slots))),
                             cameras=tuple(f"cam{i}" for i in range(v)), control_hz=30.0, chunk=t,
                             action_low=(-10.0,) * dims, action_high=(10.0,) * dims, action_slots=tuple(slots),
                             state_slots=tuple(state_slots))
        self.emb, self.image_size, self.input_spec = emb, image_size, {}

    def configure(self, input_spec: dict[str, Any]) -> None:
        """The backbone's input spec, handed over by `xr0 fit` (see WebDatasetData.configure)."""
        self.input_spec = dict(input_spec or {})

    def processor(self):
        """The Processor checkpoints carry: this data's robot, identity statistics, images at image_size."""
        from xr0.processor import ImageSpec, Processor

        spec = self.input_spec
        image = ImageSpec(size=self.image_size, resample=spec.get("resample", "bicubic"),
                          factor=spec.get("factor", 1),  # no backbone yet (tests, tools): no size rule
                         **{k: spec[k] for k in ("min_pixels", "max_pixels") if k in spec})
        t = self.robot.actions.shape[1]
        cams = tuple(self.emb.cameras)[: self.robot.images.shape[1]]
        return Processor.from_stats(self.emb, self.stats, t, image, cameras=cams, backbone=spec)

    def _collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        from xr0.data.mix import vl_count

        robot = _collate(samples)
        if not self.vl_ratio:
            return robot
        n = min(vl_count(self._batches, self.batch_size, self.vl_ratio), len(samples))
        self._batches += 1
        if n == 0:
            return {"robot": robot, "vl": None}
        vl = {"images": robot["images"][:n], "image_mask": robot["image_mask"][:n],
              "prompt": ["Is the first joint reading positive?"] * n,
              "answer": ["yes" if float(s) > 0 else "no" for s in robot["state"][:n, 0]], "kind": ["vl"] * n}
        return {"robot": robot, "vl": vl}

    def heldout_batch(self) -> dict[str, Any]:
        """The held-out samples as one robot batch (empty unless `holdout` > 0)."""
        n = len(self.robot)
        return _collate([self.robot[i] for i in range(n - self.holdout, n)])

    def train_dataloader(self) -> DataLoader:
        train = Subset(self.robot, range(len(self.robot) - self.holdout)) if self.holdout else self.robot
        return DataLoader(train, batch_size=self.batch_size, shuffle=True, collate_fn=self._collate,
                          drop_last=len(train) >= self.batch_size)
