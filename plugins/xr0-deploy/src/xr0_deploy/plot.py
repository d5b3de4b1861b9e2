"""`xr0 deploy plot TRACE`: a picture of an executor trace, since asynchronous timing is easier seen than read.

One panel per action dimension (named as the embodiment names it, in robot units): the executed action over
ticks, coloured by the chunk it came from; inference windows (request → answer) shaded; held ticks marked at
the bottom, one marker per hold reason; jumps at chunk boundaries larger than `jump_factor` × the median step
change inside chunks circled in red.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

HOLD_MARKERS = {"wait_inference": "|", "inference_failed": "x", "chunk_rejected": "X", "stale_chunk": "v",
                "watchdog_hold": "s"}


def boundary_jumps(trace: list[dict[str, Any]], jump_factor: float = 3.0) -> list[tuple[int, int, float]]:
    """(tick, dim, |Δ|) where the executed action changes chunk and jumps more than jump_factor × the median
    within-chunk step change of that dim."""
    acts = [(r["tick"], r["chunk_id"], np.asarray(r["action"], float)) for r in trace if r.get("action") is not None]
    inside = [np.abs(b[2] - a[2]) for a, b in zip(acts, acts[1:]) if a[1] == b[1] and b[0] == a[0] + 1]
    if not acts:
        return []
    typical = np.median(np.stack(inside), axis=0) if inside else np.zeros_like(acts[0][2])
    out = []
    for a, b in zip(acts, acts[1:]):
        if a[1] != b[1]:
            d = np.abs(b[2] - a[2])
            for j in np.flatnonzero(d > jump_factor * np.maximum(typical, 1e-9)):
                out.append((b[0], int(j), float(d[j])))
    return out


def plot_trace(trace: list[dict[str, Any]], out: str | Path, meta: dict[str, Any] | None = None,
               jump_factor: float = 3.0) -> Path:
    """Draw `trace` (Executor.trace, or read_trace(path)) into a PNG at `out`; returns the path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    meta = meta or {}
    acted = [r for r in trace if r.get("action") is not None]
    dims = len(acted[0]["action"]) if acted else len(meta.get("action_names") or [1])
    names = list(meta.get("action_names") or [f"action {j}" for j in range(dims)])[:dims]
    fig, axes = plt.subplots(dims, 1, figsize=(11, 1.5 * dims + 1.2), sharex=True, squeeze=False)
    axes = axes[:, 0]
    colours = plt.get_cmap("tab10")
    started = {r["inference_started"]: r["tick"] for r in trace if r.get("inference_started") is not None}
    windows = [(started[r["inference_finished"]], r["tick"]) for r in trace
               if r.get("inference_finished") is not None and r["inference_finished"] in started]
    jumps = boundary_jumps(trace, jump_factor)
    low, high = meta.get("action_low"), meta.get("action_high")
    for j, ax in enumerate(axes):
        for a, b in windows:
            ax.axvspan(a, b, color="0.9", lw=0)
        if acted:  # everything executed, underneath: a jump between chunks shows as a grey step
            ax.plot([r["tick"] for r in acted], [r["action"][j] for r in acted], "-", color="0.7", lw=0.6, zorder=0)
        by_chunk: dict[int, list[tuple[int, float]]] = {}
        for r in acted:
            by_chunk.setdefault(r["chunk_id"], []).append((r["tick"], r["action"][j]))
        for cid, pts in by_chunk.items():
            t, y = zip(*pts)
            ax.plot(t, y, ".-", ms=3, lw=1, color=colours(cid % 10))
        if low is not None and high is not None:
            for lim in (low[j], high[j]):
                ax.axhline(lim, color="0.6", lw=0.6, ls="--")
        for tick, dim, _ in jumps:
            if dim == j:
                y = next(r["action"][j] for r in acted if r["tick"] == tick)
                ax.plot([tick], [y], "o", mfc="none", mec="red", ms=9)
        ax.set_ylabel(names[j], rotation=0, ha="right", va="center", fontsize=8)
    held = {}
    for r in trace:
        if r.get("held"):
            held.setdefault(r.get("hold_reason", "held"), []).append(r["tick"])
    ax = axes[-1]
    y0 = ax.get_ylim()[0]
    for reason, ticks in sorted(held.items()):
        ax.plot(ticks, [y0] * len(ticks), HOLD_MARKERS.get(reason, "."), color="k", ms=6, ls="none",
                label=f"held: {reason} ({len(ticks)})")
    ax.plot([], [], "o", mfc="none", mec="red", label=f"chunk-boundary jump > {jump_factor:g}× typical ({len(jumps)})")
    ax.fill_between([], [], color="0.9", label="inference in flight")
    ax.legend(loc="upper left", bbox_to_anchor=(0, -0.35), ncol=3, fontsize=7, frameon=False)
    ax.set_xlabel("control tick")
    title = " ".join(f"{k}={meta[k]}" for k in ("embodiment", "mode", "latency_steps", "hz", "policy") if k in meta)
    fig.suptitle(f"executed actions (robot units), colour = chunk; {title}", fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
