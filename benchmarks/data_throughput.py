"""Samples/s of the xr0 training data pipeline (a benchmark, not a test).

Writes episodes of 2 × 224² JPEG cameras + 14-D state + 30-step action chunks (the bimanual_30hz embodiment)
into shards once, then times `webdataset` DataModule batches (decode, shuffle, relative actions,
normalisation, padding, collate) with N DataLoader workers.

    .venv/bin/python benchmarks/data_throughput.py --samples 2000 --workers 2
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


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
                dm.account(b)
                if start is None:  # exclude worker start-up and the first fill of the shuffle buffer
                    start = time.perf_counter()
                    continue
                n += b["actions"].shape[0]
            rate = n / (time.perf_counter() - start)
            rates.append(rate)
            print(f"epoch {epoch}: {n} samples after the first batch, {rate:.0f} samples/s "
                  f"({args.workers} workers, batch {args.batch_size}, 2×224² JPEG + state + 30-step chunk); "
                  f"skipped {dm.skipped}")
        print(f"throughput: {np.median(rates):.0f} samples/s (median of {len(rates)} epochs)")


if __name__ == "__main__":
    main()
