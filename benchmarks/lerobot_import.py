"""Frames/s of `xr0 data from-lerobot --card` (a benchmark, not a test).

Writes 10 episodes × 100 frames of two textured 256×256 cameras in the layouts of the two LIBERO cards
(openpi's v2.0 with PNG frames inline, LeRobot's v3.0 with AV1 mp4; the folders the tests write, see
tests/data/lerobot_layouts.py), then times the whole import: decode, JPEG encode, shards, statistics pass.

    SVT_LOG=0 OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lerobot_import.py
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "data"))
import lerobot_layouts as L

from xr0.data.lerobot_import import from_lerobot


def main(episodes: int = 10, frames: int = 100) -> None:
    rng = np.random.default_rng(0)
    base = np.asarray(Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).resize((256, 256), Image.BICUBIC))
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["XR0_DATA"] = str(Path(tmp) / "data")
        for card, layout, how in (("libero_openpi", L.libero_openpi(hw=(256, 256)), "inline PNG"),
                                  ("libero_lerobot", L.libero_lerobot(hw=(256, 256)), "AV1 mp4")):
            eps = L.make_episodes(layout, [frames] * episodes, ["put the bowl on the plate"])
            for e in eps:  # textured frames: a flat colour would flatter PNG, JPEG and AV1
                for k, f in e.frames.items():
                    noise = rng.integers(0, 8, f.shape)
                    e.frames[k] = np.clip(base[None].astype(int) + f.astype(int) // 4 + noise, 0, 255).astype(np.uint8)
            src = L.write(Path(tmp) / card, layout, eps)
            t = time.perf_counter()
            from_lerobot(src, card=card, progress=False)
            dt = time.perf_counter() - t
            n = episodes * frames
            print(f"{card} ({layout.version}, {how}): {n} frames x 2 cameras in {dt:.1f} s = {n / dt:.0f} frames/s")


if __name__ == "__main__":
    main()
