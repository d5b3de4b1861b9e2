"""Samples/s of the xr0 training data pipeline (a benchmark, not a test).

Writes episodes of 2 × 224² JPEG cameras + 14-D state + 30-step action chunks (the bimanual_30hz embodiment)
into shards once, then times `webdataset` DataModule batches (decode, shuffle, relative actions,
normalisation, padding, collate) with N DataLoader workers. Batches hold uint8 images, as the loader hands
them to a GPU run (the float conversion happens on the device); --cpu-float adds the CPU conversion. A
one-process breakdown (tar read, JPEG decode, transform) follows.

    .venv/bin/python benchmarks/data_throughput.py --samples 2000 --workers 2
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def make_episodes(n_samples: int, steps: int = 100, size: int = 224, seed: int = 0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for e in range(max(1, n_samples // steps)):
        # smooth images with some noise: JPEG sizes close to camera frames (~15-25 kB at q95), not flat colour
        base = np.stack([(xx + 3 * e) % 256, (yy * 2) % 256, (xx + yy) % 256], -1).astype(np.int16)
        frames = [np.clip(base + rng.integers(-8, 8, base.shape), 0, 255).astype(np.uint8) for _ in range(4)]
        yield {"images": {cam: np.stack([frames[(t + k) % 4] for t in range(steps)])
                          for k, cam in enumerate(("head", "left_wrist"))},
               "state": rng.normal(size=(steps, 14)).astype(np.float32),
               "actions": rng.normal(size=(steps, 14)).astype(np.float32), "instruction": f"fold towel {e}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--shuffle-buffer", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs (the first batch of each is excluded)")
    ap.add_argument("--cpu-float", action="store_true",
                    help="also convert images to float in the main process (as on CPU; a GPU run does it on the device)")
    ap.add_argument("--dir", default=None, help="shard folder (default: a temporary one)")
    args = ap.parse_args()

    from xr0.data import write_episodes
    from xr0.data.module import WebDatasetData

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.dir or tmp)
        t0 = time.perf_counter()
        card = write_episodes(make_episodes(args.samples), out, "bimanual_30hz", "bench", chunk=30,
                              cameras=["head", "left_wrist"], maxcount=max(1, args.samples // 8))
        print(f"wrote {args.samples} samples in {time.perf_counter() - t0:.1f} s "
              f"({sum(f.stat().st_size for f in out.glob('*.tar')) / 1e6:.0f} MB)")
        dm = WebDatasetData(card=str(card), batch_size=args.batch_size, num_workers=args.workers, image_size=224,
                            chunk=30, shuffle_buffer=args.shuffle_buffer)
        rates = []
        for epoch in range(args.epochs):
            n, start = 0, None
            for b in dm.train_dataloader():
                if args.cpu_float:
                    dm.account(b)  # what a CPU run pays: uint8 → float images in the main process
                else:  # a GPU run converts images on the device (on_after_batch_transfer): count only
                    images = b.pop("images")
                    dm.account(b)
                    assert images.dtype == torch.uint8
                if start is None:  # exclude worker start-up and the first fill of the shuffle buffer
                    start = time.perf_counter()
                    continue
                n += b["actions"].shape[0]
            rate = n / (time.perf_counter() - start)
            rates.append(rate)
            print(f"epoch {epoch}: {n} samples after the first batch, {rate:.0f} samples/s "
                  f"({args.workers} workers, batch {args.batch_size}, 2×224² JPEG + state + 30-step chunk, "
                  f"{'float' if args.cpu_float else 'uint8'} images); "
                  f"skipped {dm.skipped}")
        print(f"throughput: {np.median(rates):.0f} samples/s (median of {len(rates)} epochs)")
        breakdown(dm, n=min(300, args.samples))


def breakdown(dm, n: int) -> None:
    """One process, no workers: CPU ms per sample spent reading the tar, decoding the JPEGs, and the rest of
    the transform — the per-sample budget is (cores / target rate), e.g. 2 cores / 1,500 per s = 1.33 ms."""
    from itertools import islice

    from xr0.data.reader import Counts, RobotTransform, decode_image
    from xr0.data.tools import _raw_samples

    card = dm.cards[0]
    t0 = time.perf_counter()
    raw = list(islice(iter(_raw_samples(card)), n))
    t_read = time.perf_counter() - t0
    cams = card.cameras
    t0 = time.perf_counter()
    for s in raw:
        for cam in cams:
            decode_image(s[card.key(cam)], (224, 224))
    t_jpeg = time.perf_counter() - t0
    tf = RobotTransform(card, dm.card_stats[card.name], dm.chunk, 224, dm.views, Counts())
    t0 = time.perf_counter()
    for s in raw:
        tf(s)
    t_tf = time.perf_counter() - t0
    from xr0.data.reader import finish_images

    x = torch.zeros((32, len(cams), 224, 224, 3), dtype=torch.uint8)
    t0 = time.perf_counter()
    for _ in range(10):
        finish_images({"images": x})
    t_float = (time.perf_counter() - t0) / 10 / 32 * len(raw)
    ms = lambda t: 1000 * t / len(raw)
    print(f"uint8 → float images on CPU (main process, --cpu-float): {ms(t_float):.2f} ms per sample")
    print(f"per sample, one process: tar read {ms(t_read):.2f} ms, JPEG decode ({len(cams)} cams) {ms(t_jpeg):.2f} ms, "
          f"whole transform {ms(t_tf):.2f} ms (incl. the decode) → {1000 / (ms(t_read) + ms(t_tf)):.0f} samples/s per core")


if __name__ == "__main__":
    main()
