"""Normalisation statistics: per-timestep mean/std and q01/q99 of actions, per-dim of the state.

Everything is in the canonical padded 32-dim layout and, for actions, AFTER the embodiment's relative
conversion — i.e. exactly the numbers the model is trained on before normalisation. The file format is
what xr0.processor.Processor.from_stats reads: {"actions": {"mean": (T, 32), "std": (T, 32), "q01",
"q99", "count": (T,)}, "state": {"mean": (32,), "std": (32,), ...}, "action_mask": (32,)}.
Quantiles come from a per-timestep reservoir sample (exact up to `reservoir` samples, approximate beyond).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from xr0.types import ACTION_DIM


class _Moments:
    """Streaming count, mean and variance (float64 sums) plus a reservoir sample for quantiles."""

    def __init__(self, shape: tuple[int, ...], reservoir: int, rng: np.random.Generator):
        self.n = 0
        self.s = np.zeros(shape)
        self.ss = np.zeros(shape)
        self.res = np.zeros((reservoir,) + shape, dtype=np.float32)
        self.rng = rng

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        if self.n < len(self.res):
            self.res[self.n] = x
        else:  # reservoir sampling keeps a uniform sample of everything seen
            j = self.rng.integers(0, self.n + 1)
            if j < len(self.res):
                self.res[j] = x
        self.n += 1
        self.s += x
        self.ss += x * x

    def summary(self) -> dict[str, Any]:
        if self.n == 0:
            z = np.zeros_like(self.s)
            return {"mean": z, "std": np.ones_like(self.s), "q01": z, "q99": z, "count": 0}
        mean = self.s / self.n
        std = np.sqrt(np.maximum(self.ss / self.n - mean ** 2, 0.0))
        kept = self.res[: min(self.n, len(self.res))]
        q01, q99 = np.quantile(kept, [0.01, 0.99], axis=0)
        return {"mean": mean, "std": std, "q01": q01, "q99": q99, "count": self.n}


class StatsAccumulator:
    """Feed canonical samples one at a time (`add`), then `result()`. Memory: reservoir × T × 32 floats."""

    def __init__(self, chunk: int, action_mask: np.ndarray, reservoir: int = 4096, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.chunk = chunk
        self.action_mask = np.asarray(action_mask, bool)
        self.state = _Moments((ACTION_DIM,), reservoir, rng)
        self.steps = [_Moments((ACTION_DIM,), reservoir, rng) for _ in range(chunk)]

    def add(self, state: np.ndarray, actions: np.ndarray, valid: np.ndarray) -> None:
        """state (32,), actions (T, 32) relative + canonical, valid (T,) bool (False past the episode end)."""
        self.state.add(state)
        for k in np.flatnonzero(valid[: self.chunk]):
            self.steps[k].add(actions[k])

    def result(self) -> dict[str, Any]:
        steps = [m.summary() for m in self.steps]
        actions = {k: np.stack([s[k] for s in steps]) for k in ("mean", "std", "q01", "q99")}
        actions["count"] = np.array([s["count"] for s in steps])
        return {"actions": actions, "state": self.state.summary(), "action_mask": self.action_mask}


def _to_jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _to_jsonable(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.integer, np.floating, np.bool_)):
        return x.item()
    return x


def save_stats(stats: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_to_jsonable(stats)))
    return path


def load_stats(path: str | Path) -> dict[str, Any]:
    """Read a stats file (local or fsspec URL) into numpy arrays."""
    import fsspec

    with fsspec.open(str(path), "r") as f:
        raw = json.load(f)
    out: dict[str, Any] = {"action_mask": np.asarray(raw["action_mask"], bool)}
    for part in ("actions", "state"):
        out[part] = {k: np.asarray(v, dtype=np.float32 if k != "count" else np.int64) for k, v in raw[part].items()}
    return out


def for_checkpoint(stats: dict[str, Any]) -> dict[str, Any]:
    """The stats as plain lists (actions, state, action_mask), as checkpoints carry them."""
    return _to_jsonable({k: stats[k] for k in ("actions", "state", "action_mask")})

