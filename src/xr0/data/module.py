"""`webdataset`: the DATASETS builder that streams data cards into training batches.

    data: {name: webdataset, card: libero_v1, batch_size: 32, chunk: 10}
    data: {name: webdataset, cards: [droid_v1, bridge_v1, vqa_v1], weights: [3, 3, 1], batch_size: 64}
    data: {name: webdataset, cards: [droid_v1, bridge_v1, vqa_v1], vl_ratio: "1:6", batch_size: 64}

One card on one rank: a finite epoch over its shards (each worker reads different shards). Several cards, or
several ranks: each source repeats forever on this rank's and worker's shards (RandomMix draws samples by
weight) and an epoch is `samples_per_epoch` samples (default: the cards' num_samples summed) split evenly,
so every rank yields the same number of batches — uneven shards would otherwise leave one DDP rank waiting
in an all-reduce for a batch that never comes. With a `kind: vl` card in the mix, batches come as
{'robot': ..., 'vl': ...} (stage 1). `vl_ratio` ("1:6", the paper's co-training ratio) fixes the VL:robot ratio by
construction (xr0.data.mix): robot cards mix among themselves by their weights, VL cards among theirs, and the two
kinds interleave deterministically at that ratio. Counters of skipped samples and of samples per kind and source are in
`.counters` (updated as batches reach the main process); `.metrics()` gives them as `data/...` scalars, which
the module also writes to the trainer's loggers every `log_every_n_steps`.
"""
from __future__ import annotations

import math
import os
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, IterableDataset

from xr0.data.cards import CardError, DataCard, load_card, shard_list
from xr0.data.mix import interleave, parse_vl_ratio
from xr0.data.reader import Batcher, Counts, DataError, RobotTransform, VLTransform, card_stream, finish_images
from xr0.data.stats import for_checkpoint, load_stats
from xr0.registry import DATASETS


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # what webdataset's split_by_node reads too
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _forever(ds, card: DataCard, counts: Counts):
    while True:  # re-iterating a WebDataset reopens (and reshuffles) this worker's shards
        yield from _once(ds, card, counts)


def _once(ds, card: DataCard, counts: Counts):
    """One pass over this worker's shards of a card; a pass that yields nothing is an error, not an empty epoch
    (an empty epoch makes Lightning loop forever without a step)."""
    got = False
    for s in ds:
        got = True
        yield s
    if not got:
        failed = counts.c.get(f"shards_failed:{card.name}", 0)
        skipped = {k[8:]: v for k, v in counts.c.items() if k.startswith("skipped/")}
        raise DataError(f"data card '{card.name}': this rank/worker read no usable sample from its shards "
                        f"({card.urls}; {failed} shard(s) failed to read, samples skipped by reason: {skipped or 'none'}); "
                        f"check them with `xr0 data inspect {card.name}`")


class _Stream(IterableDataset):
    def __init__(self, dm: WebDatasetData, samples_per_epoch: int | None):
        self.dm, self.samples_per_epoch = dm, samples_per_epoch

    def __iter__(self):
        import torch

        dm = self.dm
        counts = Counts()
        info = torch.utils.data.get_worker_info()
        rank, world = _world()
        streams = []
        for i, card in enumerate(dm.cards):
            if card.kind == "vl":
                tf = VLTransform(card, dm.image_spec(), dm.views, counts)
            else:
                tf = RobotTransform(card, dm.processor(card.name), counts)
            streams.append(card_stream(card, tf, counts, dm.shuffle_buffer, dm.shard_shuffle,
                                       dm.seed + 1000 * rank + 100 * i + (info.id if info else 0)))
        if len(streams) == 1 and world == 1:
            mixed, max_batches = _once(streams[0], dm.cards[0], counts), None
        else:
            forever = [_forever(s, c, counts) for s, c in zip(streams, dm.cards)]
            if dm.vl_ratio is not None and dm.with_vl:  # each kind by its weights, the kinds at the fixed ratio
                kinds = {k: [(s, w) for s, w, c in zip(forever, dm.weights, dm.cards) if c.kind == k]
                         for k in ("robot", "vl")}
                robot, vl = (_mix(kinds[k]) for k in ("robot", "vl"))
                mixed = interleave(robot, vl, dm.vl_ratio)
            else:
                mixed = _mix(list(zip(forever, dm.weights)))
            workers = max(1, info.num_workers if info else 1)
            max_batches = max(1, math.ceil(self.samples_per_epoch / dm.batch_size / world / workers))
        yield from Batcher(dm.batch_size, dm.with_vl, counts, max_batches)(mixed)


def _mix(sources: list[tuple[Any, float]]):
    """Samples drawn from the sources by weight (one source: itself)."""
    import webdataset as wds

    if len(sources) == 1:
        return sources[0][0]
    return iter(wds.RandomMix([s for s, _ in sources], [w for _, w in sources]))


def stats_problems(card: DataCard) -> list[str]:
    """A robot card's statistics file must be readable and finite (NaN statistics make every batch NaN)."""
    import numpy as np

    if not card.stats_path or not os.path.exists(card.stats_path):
        return []  # load_card already names a missing file
    try:
        st = load_stats(card.stats_path)
    except (OSError, ValueError, KeyError) as exc:
        return [f"{card.stats_path} cannot be read ({type(exc).__name__}: {exc}); rerun `xr0 data stats {card.name}`"]
    bad = [f"{part}.{k}" for part in ("actions", "state") for k in ("mean", "std")
           if not np.all(np.isfinite(st[part][k])) or (k == "std" and np.any(st[part][k] < 0))]
    return [f"{card.stats_path}: {', '.join(bad)} hold NaN, inf or negative values; rerun `xr0 data stats "
            f"{card.name}` (samples with NaN or inf are skipped there)"] if bad else []


@DATASETS.register("webdataset")
class WebDatasetData(L.LightningDataModule):
    """Streaming WebDataset shards named by data cards: shuffle, split by rank/worker, normalise, mix by weight."""

    def __init__(self, card: str | None = None, cards: list[str] | None = None, weights: list[float] | None = None,
                 batch_size: int = 32, num_workers: int = 2, shuffle_buffer: int = 1000, shard_shuffle: int = 100,
                 image_size: int | list[int] | None = 224, image_resize: str = "letterbox",
                 image_resample: str | None = None, state_norm: str = "meanstd", views: int | None = None,
                 chunk: int | None = None, seed: int = 0, samples_per_epoch: int | None = None,
                 embodiment: str | None = None, vl_ratio: float | str | None = None):
        """image_size: every camera's (H, W) for the model (an int: square), or null: each frame's own smart resize
        (the released Qwen-VL preprocessing); image_resize: letterbox (aspect kept) | stretch; image_resample:
        bilinear | bicubic | nearest, null: the backbone's; state_norm: meanstd | none (raw state, as the release);
        vl_ratio: VL:robot samples, "1:6" (the paper) or VL per robot sample, held by construction (xr0.data.mix);
        null: every card drawn by its weight."""
        super().__init__()
        problems = WebDatasetData.__xr0_validate__({"card": card, "cards": cards, "weights": weights,
                                                         "chunk": chunk, "embodiment": embodiment,
                                                         "image_resize": image_resize, "image_resample": image_resample,
                                                         "state_norm": state_norm, "vl_ratio": vl_ratio})
        if problems:
            raise CardError("data (webdataset):\n  - " + "\n  - ".join(problems))
        refs = [card] if card is not None else list(cards)
        self.cards: list[DataCard] = [load_card(r) for r in refs]
        self.weights = [float(w) for w in (weights or [1.0] * len(self.cards))]
        robot = [c for c in self.cards if c.kind == "robot"]
        self.with_vl = any(c.kind == "vl" for c in self.cards)
        self.vl_ratio = parse_vl_ratio(vl_ratio)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.shuffle_buffer, self.shard_shuffle, self.seed = shuffle_buffer, shard_shuffle, seed
        self.image_size, self.image_resize, self.image_resample = image_size, image_resize, image_resample
        self.state_norm, self.input_spec = state_norm, {}
        self._processors: dict[str, Any] = {}
        from xr0 import embodiments

        self.chunk = chunk or (min(c.chunk for c in robot) if robot else 1)
        self.views = views or max([len(c.cameras or embodiments.get(c.embodiment).cameras) for c in robot] + [1])
        self.card_stats = {c.name: load_stats(c.stats_path) for c in robot}
        # the checkpoint carries one embodiment's statistics (deploy serves one robot): the first robot card's
        self.embodiment = robot[0].embodiment if robot else None
        self.stats = for_checkpoint(self.card_stats[robot[0].name]) if robot else None
        if self.stats is not None:
            self.stats["actions"] = {k: v[: self.chunk] for k, v in self.stats["actions"].items()}
        self.samples_per_epoch = samples_per_epoch or sum(c.num_samples or 1000 for c in self.cards)
        self.counters: dict[str, int] = {}
        self._per_worker: dict[int, dict[str, int]] = {}
        _, world = _world()
        if len(self.cards) > 1 or world > 1:  # a repeating source with no shards in some worker would never yield
            need = world * max(1, num_workers)
            for c in self.cards:
                if c.is_local and len(shard_list(c.urls)) < need:
                    raise CardError(f"data card '{c.name}' has {len(shard_list(c.urls))} shard(s); streaming it over "
                                    f"{world} rank(s) × {max(1, num_workers)} worker(s) needs at least {need} per card "
                                    f"(rewrite it with a smaller maxcount, or lower data.num_workers)")

    # ------------------------------------------------------------ the processor (xr0.processor)
    def configure(self, input_spec: dict[str, Any]) -> None:
        """The backbone's input spec (patch·merge factor, pixel budget, resample): `xr0 fit` hands it over before
        any sample is read, so the processors resize the way the backbone expects."""
        self.input_spec = dict(input_spec or {})
        self._processors.clear()

    def image_spec(self):
        from xr0.processor import ImageSpec

        spec = self.input_spec
        size = self.image_size
        return ImageSpec(size=None if size is None else (tuple(size) if isinstance(size, (list, tuple)) else size),
                         resize=self.image_resize, resample=self.image_resample or spec.get("resample", "bicubic"),
                         factor=spec.get("factor", 1),  # no backbone yet (tests, tools): no size rule
                         **{k: spec[k] for k in ("min_pixels", "max_pixels") if k in spec})

    def processor(self, card_name: str | None = None):
        """The Processor of a robot card (default: the first one, which checkpoints carry)."""
        from xr0 import embodiments
        from xr0.processor import Processor

        card = next(c for c in self.cards if c.kind == "robot" and (card_name is None or c.name == card_name))
        if card.name not in self._processors:
            emb = embodiments.get(card.embodiment)
            cams = tuple(card.cameras or emb.cameras)[: self.views]
            cams += tuple(f"_absent{i}" for i in range(self.views - len(cams)))  # pads a mixture to one view count
            self._processors[card.name] = Processor.from_stats(
                emb, self.card_stats[card.name], self.chunk, self.image_spec(), cameras=cams,
                state_norm=self.state_norm, backbone=self.input_spec)
        return self._processors[card.name]

    @staticmethod
    def __xr0_validate__(kwargs: dict[str, Any]) -> list[str]:
        """Recipe-time checks: the cards exist and are valid, their embodiments are registered."""
        from xr0.processor import RESAMPLE, RESIZE, STATE_NORM

        problems = []
        for key, allowed in (("image_resize", RESIZE), ("image_resample", (None, *RESAMPLE)),
                             ("state_norm", STATE_NORM)):
            if key in kwargs and kwargs[key] not in allowed:
                problems.append(f"{key}: {kwargs[key]!r} is not one of {[a for a in allowed if a is not None]}")
        card, cards, weights = kwargs.get("card"), kwargs.get("cards"), kwargs.get("weights")
        if (card is None) == (cards is None):
            return problems + ["give exactly one of card: (one data card) or cards: [...] (a mixture, with weights:)"]
        if cards is not None and (not isinstance(cards, list) or not cards):
            return problems + ["cards: must be a non-empty list of data card names or paths"]
        if weights is not None and (cards is None or len(weights) != len(cards) or any(w <= 0 for w in weights)):
            return problems + [f"weights: need one positive weight per entry of cards ({len(cards or [])}), got {weights}"]
        loaded = []
        for key, ref in ([("card", card)] if card is not None else [(f"cards[{i}]", r) for i, r in enumerate(cards)]):
            try:
                loaded.append(load_card(ref))
            except CardError as exc:
                problems.append(f"{key}: {exc}")
        robot = [c for c in loaded if c.kind == "robot"]
        if loaded and not robot:
            problems.append("cards: a mixture needs at least one robot card (kind: robot)")
        try:
            ratio = parse_vl_ratio(kwargs.get("vl_ratio"))
        except ValueError as exc:
            problems.append(str(exc))
            ratio = None
        if ratio and loaded and not any(c.kind == "vl" for c in loaded):
            problems.append(f"vl_ratio: {kwargs['vl_ratio']!r} asks for vision-language samples but no card in the "
                            f"mixture is `kind: vl`; add one to cards: (e.g. the <name>_vl card `xr0 sim collect` "
                            f"writes, or one from `xr0 data write-vl`)")
        chunk, emb = kwargs.get("chunk"), kwargs.get("embodiment")
        for c in robot:
            problems += [f"card '{c.name}' stats: {p}" for p in stats_problems(c)]
            if chunk is not None and chunk > c.chunk:
                problems.append(f"chunk: {chunk} > the {c.chunk} future actions stored per sample in card '{c.name}'")
        if emb is not None and robot and robot[0].embodiment != emb:
            problems.append(f"embodiment: '{emb}' but card '{robot[0].name}' holds '{robot[0].embodiment}' data")
        return problems

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        batch = self.account(batch)
        trainer = self.trainer
        if trainer is not None and trainer.loggers and trainer.global_step % max(1, trainer.log_every_n_steps) == 0:
            for logger in trainer.loggers:  # a datamodule cannot self.log(); loggers take scalars directly
                logger.log_metrics(self.metrics(), step=trainer.global_step)
        return batch

    def metrics(self) -> dict[str, float]:
        """`data/skipped` (samples so far), `data/skipped/<reason>`, `data/shards_failed`, `data/samples/<kind>`, and
        `data/ratio/<source>`."""
        out = {"data/skipped": float(self.skipped), "data/shards_failed": float(self.counters.get("shards_failed", 0))}
        out.update({f"data/{k}": float(v) for k, v in self.counters.items() if k.startswith("skipped/")})
        out.update({f"data/samples/{k}": float(self.counters.get(k, 0)) for k in ("robot", "vl")})
        out.update({f"data/ratio/{k}": v for k, v in self.observed_ratio().items()})
        return out

    def account(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Finish a batch from the loader: pop the worker counters it carries into `.counters` (totals over
        workers) and turn its uint8 images into the contract's float (B, V, 3, H, W) in [0, 1]. Lightning calls it
        (on_after_batch_transfer); call it yourself when iterating train_dataloader() by hand."""
        finish_images(batch)
        snap = batch.pop("_counts", None)
        snap_worker = snap.get("worker") if snap else None
        if snap is not None:  # counters are cumulative per worker; a restarted worker (new epoch) starts at 0
            last = self._per_worker.get(snap.pop("worker"), {})
            for k, v in snap.items():
                delta = v - last.get(k, 0) if v >= last.get(k, 0) else v
                self.counters[k] = self.counters.get(k, 0) + delta
            self._per_worker[snap_worker] = snap
        return batch

    @property
    def skipped(self) -> int:
        return self.counters.get("skipped", 0)

    def observed_ratio(self) -> dict[str, float]:
        """Fraction of samples seen per source so far (compare with the weights)."""
        src = {k[7:]: v for k, v in self.counters.items() if k.startswith("source:")}
        n = sum(src.values()) or 1
        return {k: v / n for k, v in src.items()}

    def dataset(self) -> _Stream:
        return _Stream(self, self.samples_per_epoch)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset(), batch_size=None, num_workers=self.num_workers,
                          persistent_workers=False, pin_memory=False)
