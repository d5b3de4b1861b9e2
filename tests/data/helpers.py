"""Small generated episodes for the data tests (deterministic, tiny images so tests stay fast)."""
from __future__ import annotations

import numpy as np


def episodes(n_eps: int = 3, steps: int = 12, size: int = 16, cameras=("agentview", "wrist"), state_dim: int = 8,
             action_dim: int = 7, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for e in range(n_eps):
        out.append({
            "images": {c: rng.integers(0, 255, (steps, size, size, 3), dtype=np.uint8) for c in cameras},
            "state": rng.normal(size=(steps, state_dim)).astype(np.float32),
            "actions": np.cumsum(rng.normal(size=(steps, action_dim)), 0).astype(np.float32),
            "instruction": f"task {e}",
        })
    return out
