"""30 Hz alignment (docs/method.md §3): every stream is resampled onto one uniform timeline by nearest timestamp."""
from __future__ import annotations

import numpy as np


def timeline(start: float, stop: float, hz: float = 30.0) -> np.ndarray:
    """Uniform timestamps start, start + 1/hz, ... up to and including stop (within half a tick)."""
    if hz <= 0:
        raise ValueError(f"timeline: hz must be positive, got {hz}")
    if stop < start:
        raise ValueError(f"timeline: stop {stop} is before start {start}")
    n = int(np.floor((stop - start) * hz + 0.5)) + 1
    return start + np.arange(n) / hz


def nearest_index(timestamps_src: np.ndarray, timeline_: np.ndarray) -> np.ndarray:
    """For each timeline point, the index of the nearest source timestamp (ties go to the earlier one)."""
    ts = np.asarray(timestamps_src, dtype=np.float64)
    if ts.ndim != 1 or len(ts) == 0:
        raise ValueError(f"resample: timestamps must be a non-empty 1-D array, got shape {ts.shape}")
    if np.any(np.diff(ts) < 0):
        raise ValueError("resample: source timestamps must be sorted (increasing)")
    t = np.asarray(timeline_, dtype=np.float64)
    right = np.clip(np.searchsorted(ts, t, side="left"), 0, len(ts) - 1)
    left = np.clip(right - 1, 0, len(ts) - 1)
    return np.where(np.abs(t - ts[left]) <= np.abs(ts[right] - t), left, right)


def resample(timestamps_src: np.ndarray, values: np.ndarray, timeline: np.ndarray) -> np.ndarray:
    """values (N, ...) stamped at timestamps_src (N,) → (len(timeline), ...) by nearest timestamp."""
    values = np.asarray(values)
    if len(values) != len(timestamps_src):
        raise ValueError(f"resample: {len(values)} values for {len(timestamps_src)} timestamps")
    return values[nearest_index(timestamps_src, timeline)]


def resample_streams(streams: dict[str, tuple[np.ndarray, np.ndarray]], hz: float = 30.0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """{name: (timestamps, values)} → (timeline, {name: values on it}); the timeline covers the span
    where every stream has data (latest first stamp to earliest last stamp)."""
    start = max(float(ts[0]) for ts, _ in streams.values())
    stop = min(float(ts[-1]) for ts, _ in streams.values())
    tl = timeline(start, stop, hz)
    return tl, {k: resample(ts, v, tl) for k, (ts, v) in streams.items()}
