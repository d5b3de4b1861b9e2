"""Comparisons an ablation can stand behind: differences of means with bootstrap confidence intervals, the power of
a design, and the markdown tables `xr0 ablate` and `xr0 eval offline` print (plain numpy, no scipy).

A *cell* is one condition measured several times: a list of 1-D arrays, one per seed (or per checkpoint), each
holding one value per episode (NaN: not measured in that episode, e.g. no reaction). A factor's effect compares
*matched pairs* of cells that differ in that factor only: effect = mean over pairs of (mean(cell b) − mean(cell a)),
a cell's mean being over all its episodes. The 95% interval is a percentile bootstrap that resamples episodes within
each seed (seeds are kept, so the interval is conditional on the trained seeds: it holds the evaluation noise, not
the spread of a new training run), paired across cells when episode i is the same trial everywhere (the same
layout, the same recorded episode), with a fixed generator seed so a table reads the same every time.
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

Cell = Sequence[np.ndarray]  # one array of per-episode values per seed


@dataclass(frozen=True)
class Effect:
    """Difference of means (b − a) over matched pairs, its bootstrap interval, and how much data it rests on."""

    estimate: float
    lo: float
    hi: float
    pairs: int
    n_a: int  # episodes with a value, level a (all pairs)
    n_b: int

    def text(self, scale: float = 1.0, digits: int = 1) -> str:
        if not math.isfinite(self.estimate):
            return "–"
        f = lambda x: f"{scale * x:+.{digits}f}"
        return f"{f(self.estimate)} [{f(self.lo)}, {f(self.hi)}]"


def _arrays(cell: Cell) -> list[np.ndarray]:
    return [np.asarray(a, np.float64).ravel() for a in cell]


def cell_mean(cell: Cell) -> float:
    """Mean over every finite episode value of the cell (NaN when there is none)."""
    v = np.concatenate(_arrays(cell)) if len(cell) else np.zeros(0)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else float("nan")


def bootstrap_effect(cells: dict[Hashable, Cell], pairs: Sequence[tuple[Hashable, Hashable]], reps: int = 2000,
                     level: float = 0.95, seed: int = 0, paired: bool = True) -> Effect:
    """Difference of means over matched pairs (a, b) of cells, with a percentile-bootstrap interval.

    Each replicate resamples, with replacement, the episodes of every seed of every cell and recomputes the estimate.
    paired: episode i of seed s is the same trial in every cell (the same layout, the same recorded episode), so one
    draw of episode indices per seed (and length) serves every cell: a difference then carries only what changed
    between the cells, not which layouts happened to be drawn. Otherwise each cell draws its own. NaN values (not
    measured in that episode) are left out of every mean; pairs where a cell has no finite value are left out, and
    with none left the effect is NaN."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    arrays = {k: _arrays(cells[k]) for pair in pairs for k in pair}
    used = [(a, b) for a, b in pairs if np.isfinite(cell_mean(cells[a])) and np.isfinite(cell_mean(cells[b]))]
    if not used:
        return Effect(float("nan"), float("nan"), float("nan"), 0, 0, 0)
    rng = np.random.default_rng(seed)
    draws: dict[Hashable, np.ndarray] = {}
    boot = {}
    for key in dict.fromkeys(k for pair in used for k in pair):  # each cell once, in a fixed order
        total, count = np.zeros(reps), np.zeros(reps)
        for s, arr in enumerate(arrays[key]):
            slot = (s, len(arr)) if paired else (key, s)
            if slot not in draws:
                draws[slot] = rng.integers(0, len(arr), size=(reps, len(arr))) if len(arr) else np.zeros((reps, 0), int)
            x = arr[draws[slot]]  # (reps, n)
            total += np.nansum(x, axis=1)
            count += np.isfinite(x).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            boot[key] = total / count  # (reps,) the cell's mean over all its episodes, NaN when none was drawn
    estimate = float(np.mean([cell_mean(cells[b]) - cell_mean(cells[a]) for a, b in used]))
    dist = np.mean([boot[b] - boot[a] for a, b in used], axis=0)  # (reps,)
    lo, hi = np.nanpercentile(dist, [50 * (1 - level), 50 * (1 + level)])
    count_of = lambda keys: int(sum(np.isfinite(x).sum() for k in keys for x in arrays[k]))
    return Effect(estimate, float(lo), float(hi), len(used), count_of(a for a, _ in used), count_of(b for _, b in used))


# ---------------------------------------------------------------- power
def _z(alpha: float, power: float) -> float:
    nd = NormalDist()
    return nd.inv_cdf(1 - alpha / 2) + nd.inv_cdf(power)


def detectable_difference(n_per_arm: int, p: float = 0.5, alpha: float = 0.05, power: float = 0.8,
                          pairs: int = 1) -> float:
    """Smallest difference of two success rates a two-sided test at level `alpha` detects with probability `power`,
    when each arm has `n_per_arm` independent episodes at success rate about `p`, averaged over `pairs` independent
    matched pairs: (z_{1−α/2} + z_power)·√(2p(1−p) / (n·pairs)). Episodes of one trained seed are not independent of
    each other's training noise, so this is a lower bound on what a seed-level comparison resolves."""
    if n_per_arm < 1 or pairs < 1:
        raise ValueError(f"need at least one episode and one pair, got n={n_per_arm}, pairs={pairs}")
    p = min(max(p, 0.0), 1.0)
    return _z(alpha, power) * math.sqrt(2 * p * (1 - p) / (n_per_arm * pairs))


def episodes_needed(delta: float, p: float = 0.5, alpha: float = 0.05, power: float = 0.8) -> int:
    """Episodes per arm for `detectable_difference` to reach `delta`."""
    if delta <= 0:
        raise ValueError(f"delta must be > 0, got {delta}")
    return math.ceil(_z(alpha, power) ** 2 * 2 * p * (1 - p) / delta**2)


def power_statement(n_per_cell: int, p: float, pairs: int = 1, target: float = 0.10) -> str:
    """One paragraph: what a design of `n_per_cell` episodes per cell can tell apart (α = 0.05, 80% power)."""
    p_eff = min(max(p, 0.05), 0.95) if math.isfinite(p) else 0.5
    one = detectable_difference(n_per_cell, p_eff)
    worst = detectable_difference(n_per_cell, 0.5)
    text = (f"Power (two-sided α = 0.05, 80% power, independent episodes): with {n_per_cell} episodes per cell, two "
            f"cells' success rates must differ by ≥ {100 * one:.0f} points at the observed mean success "
            f"{100 * p_eff:.0f}% (≥ {100 * worst:.0f} at 50%) to be detected")
    if pairs > 1:
        text += (f"; a factor effect pooling {pairs} matched cell pairs resolves ≥ "
                 f"{100 * detectable_difference(n_per_cell, p_eff, pairs=pairs):.0f} points")
    need = episodes_needed(target, 0.5)
    return text + (f". A {100 * target:.0f}-point difference between two cells needs {need} episodes per cell "
                   f"(seeds × episodes × tasks) at 50% success. Seed-to-seed training variance comes on top.")


# ---------------------------------------------------------------- tables
def spread_cell(values: Sequence[float], scale: float = 1.0, digits: int = 0) -> str:
    """`mean ± std` of per-seed (or per-checkpoint) values; `–` when there is none."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], np.float64)
    if not len(v):
        return "–"
    return f"{scale * v.mean():.{digits}f} ± {scale * v.std():.{digits}f}"


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
