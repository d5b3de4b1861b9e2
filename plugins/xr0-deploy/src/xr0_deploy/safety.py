"""Safety between the policy and the arm: chunk validation, clipping to limits, per-tick change bounds."""
from __future__ import annotations

import numpy as np

from xr0_deploy.protocol import Limits


class Safety:
    """Reject broken chunks (non-finite, wrong shape, far out of range); clip the rest to the limits.

    A value beyond the limits by more than `reject_margin` × (high − low) means the policy or the
    normalisation is wrong, so the whole chunk is refused rather than clipped into a plausible motion.
    """

    def __init__(self, limits: Limits | None = None, reject_margin: float = 0.1):
        if reject_margin < 0:
            raise ValueError(f"reject_margin must be >= 0, got {reject_margin}")
        self.limits, self.reject_margin = limits, reject_margin

    def check_chunk(self, chunk: np.ndarray) -> tuple[np.ndarray | None, str, int]:
        """(chunk clipped to limits or None if rejected, reason, number of clipped elements)."""
        chunk = np.asarray(chunk)
        if chunk.ndim != 2 or chunk.shape[0] == 0:
            return None, f"bad_shape: expected (T, A), got {chunk.shape}", 0
        if not np.issubdtype(chunk.dtype, np.number):
            return None, f"bad_dtype: {chunk.dtype}", 0
        if not np.all(np.isfinite(chunk)):
            return None, f"non_finite: {int(np.sum(~np.isfinite(chunk)))} NaN/inf values", 0
        if self.limits is None:
            return chunk.astype(np.float64), "", 0
        lim = self.limits
        if chunk.shape[1] != lim.dim:
            return None, f"bad_shape: chunk has {chunk.shape[1]} action dims, the robot's limits have {lim.dim}", 0
        slack = self.reject_margin * (lim.high - lim.low)
        far = (chunk < lim.low - slack) | (chunk > lim.high + slack)
        if np.any(far):
            t, a = np.argwhere(far)[0]
            return None, (f"out_of_range: {int(far.sum())} values beyond the limits by more than "
                          f"{self.reject_margin:.0%} of the range (first: step {t} dim {a} = {chunk[t, a]:.4g}, "
                          f"limits [{lim.low[a]:.4g}, {lim.high[a]:.4g}])"), 0
        clipped = np.clip(chunk, lim.low, lim.high)
        return clipped, "", int(np.sum(clipped != chunk))

    def bound_step(self, previous: np.ndarray | None, action: np.ndarray) -> tuple[np.ndarray, bool]:
        """Limit the change from the previous target to `max_delta`; returns (action, was_limited)."""
        if self.limits is None or self.limits.max_delta is None or previous is None:
            return action, False
        d = self.limits.max_delta
        out = np.clip(action, previous - d, previous + d)
        return out, bool(np.any(out != action))
