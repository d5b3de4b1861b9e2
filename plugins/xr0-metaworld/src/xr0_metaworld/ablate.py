"""`xr0 ablate RECIPE`: post-training variants × delays × execution modes × seeds from one stage-2 checkpoint.

Every cell (a trained variant/seed, or an evaluated variant/seed/mode/delay) is a file under --out; a cell whose
file exists is never recomputed, so an interrupted ablation resumes where it stopped. Execution modes:
sync (idle while inferring), naive (async, no prefix: the new chunk starts at index d, unaware of what ran),
rtc (inference-time RTC guidance toward the old chunk), async (prefix-conditioned: Δt_c = max(d, 1) committed
actions sent as the prefix the model was trained with).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

VARIANTS = ("sync", "training_rtc", "lambda", "lambda_no_offset", "lambda_no_reweight")
MODES = {"sync": ("sync", 0), "naive": ("async", 0), "rtc": ("rtc", None), "async": ("async", None)}


def train_cell(recipe: str, variant: str, seed: int, out: Path, stage2: str, overrides: list[str]) -> Path:
    """Stage 3 of one variant and seed (skipped when its checkpoint exists); returns the checkpoint."""
    from xr0.run import fit

    run = out / "train" / f"{variant}_s{seed}"
    ckpt = run / "checkpoints" / "last.ckpt"
    if (run / "done").is_file() and ckpt.is_file():
        return ckpt
    if run.exists():  # a half-trained cell: start it again from scratch (fit never overwrites a used folder)
        import shutil

        shutil.rmtree(run)
    fit(recipe, [f"_variant={variant}", f"stage.init_from={stage2}", f"run.out_dir={run}", f"run.seed={seed}"]
        + overrides)
    (run / "done").write_text("ok\n")
    return ckpt


def eval_cell(ckpt: Path, variant: str, seed: int, mode: str, delay: int, out: Path, tasks: list[str],
              episodes: int, exec_steps: int, max_steps: int, perturb_at: int | None) -> dict[str, Any]:
    from xr0_metaworld.evaluate import EvalConfig, evaluate

    path = out / "cells" / f"{variant}_s{seed}_{mode}_d{delay}.json"
    if path.is_file():
        return json.loads(path.read_text())
    ex_mode, prefix = MODES[mode]
    cfg = EvalConfig(mode=ex_mode, latency=delay, exec_steps=exec_steps, prefix=prefix, max_steps=max_steps,
                     perturb_at=perturb_at, sheets=0)
    row = evaluate(str(ckpt), tasks, episodes, 1000 + seed, cfg, out=None, label=variant, progress=False)
    row.update(variant=variant, seed=seed, exec_mode=mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row))
    return row


def aggregate(rows: list[dict[str, Any]], metric: str = "success") -> dict[tuple[str, str, int], tuple[float, float, int]]:
    """(variant, mode, delay) → (mean, std over seeds, seeds)."""
    groups: dict[tuple[str, str, int], list[float]] = {}
    for r in rows:
        groups.setdefault((r["variant"], r["exec_mode"], r["latency"]), []).append(r[metric])
    return {k: (float(np.mean(v)), float(np.std(v)), len(v)) for k, v in groups.items()}


def table(rows: list[dict[str, Any]], delays: list[int], metric: str = "success", scale: float = 100.0) -> str:
    """Markdown: one line per (variant, mode), one column per delay, mean ± std over seeds."""
    agg = aggregate(rows, metric)
    keys = sorted({(v, m) for v, m, _ in agg}, key=lambda k: (VARIANTS.index(k[0]) if k[0] in VARIANTS else 99,
                                                           list(MODES).index(k[1])))
    lines = ["| variant | mode | " + " | ".join(f"d={d}" for d in delays) + " |", "|---|---|" + "---|" * len(delays)]
    for v, m in keys:
        cells = []
        for d in delays:
            if (v, m, d) in agg:
                mu, sd, _ = agg[(v, m, d)]
                cells.append(f"{scale * mu:.0f} ± {scale * sd:.0f}" if scale != 1 else f"{mu:.1f} ± {sd:.1f}")
            else:
                cells.append("–")
        lines.append(f"| {v} | {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], delays: list[int], path: Path) -> Path:
    """Success vs delay, one panel per execution mode, one line per variant (mean ± std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = aggregate(rows)
    modes = [m for m in MODES if any(k[1] == m for k in agg)]
    fig, axes = plt.subplots(1, len(modes), figsize=(3.6 * len(modes), 3.2), sharey=True, squeeze=False)
    for ax, m in zip(axes[0], modes):
        for v in VARIANTS:
            pts = [(d, *agg[(v, m, d)][:2]) for d in delays if (v, m, d) in agg]
            if pts:
                d, mu, sd = map(np.asarray, zip(*pts))
                ax.errorbar(d, 100 * mu, yerr=100 * sd, marker="o", capsize=3, label=v)
        ax.set_title(m)
        ax.set_xlabel("latency d (ticks)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("success (%)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_ablation(recipe: str, stage2: str, out: str | Path, variants: list[str], delays: list[int], modes: list[str],
                 seeds: list[int], tasks: list[str], episodes: int, exec_steps: int = 4, max_steps: int = 150,
                 perturb_at: int | None = None, overrides: list[str] | None = None, data: str | None = None) -> str:
    """Train missing variants, evaluate missing cells, write results.md, success_vs_delay.png and TensorBoard."""
    from tqdm import tqdm

    out = Path(out)
    for v in variants:
        if v not in VARIANTS:
            raise ValueError(f"unknown variant '{v}'; choose from {', '.join(VARIANTS)}")
    for m in modes:
        if m not in MODES:
            raise ValueError(f"unknown mode '{m}'; choose from {', '.join(MODES)}")
    shared = out / "stage2.ckpt"  # a private copy: a later `xr0 demo` clears runs/demo, the ablation must resume
    if not shared.is_file():
        if not Path(stage2).is_file():
            raise FileNotFoundError(f"stage-2 checkpoint {stage2} not found: run `xr0 demo` (it writes "
                                    f"runs/demo/stage2/checkpoints/last.ckpt) or pass --stage2")
        import shutil

        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(stage2, shared)
    stage2 = str(shared)
    if data is not None:  # the same for the data: a private copy, referred to by every variant's recipe
        import shutil

        if not (out / "data").is_dir():
            if not (Path(data) / "metaworld.yaml").is_file():
                raise FileNotFoundError(f"{data}/metaworld.yaml not found: run `xr0 demo` or `xr0 sim collect --out {data}`")
            shutil.copytree(data, out / "data")
        overrides = [f"_data={out / 'data'}"] + list(overrides or [])
    ckpts = {(v, s): train_cell(recipe, v, s, out, stage2, list(overrides or [])) for v in variants for s in seeds}
    cells = [(v, s, m, d) for v in variants for s in seeds for m in modes for d in delays]
    rows = [eval_cell(ckpts[(v, s)], v, s, m, d, out, tasks, episodes, exec_steps, max_steps, perturb_at)
            for v, s, m, d in tqdm(cells, desc="ablation cells", unit="cell")]
    md = ("## success (%), mean ± std over seeds " + ", ".join(map(str, seeds)) + "\n\n" + table(rows, delays)
          + "\n\n## successes per simulated minute (idle ticks included)\n\n"
          + table(rows, delays, "throughput_per_min", 1.0)
          + "\n\n## chunk-boundary jerk ×1000 (‖Δ²a‖ of the executed Δxyz at chunk switches)\n\n"
          + table(rows, delays, "boundary_jerk", 1000.0) + "\n")
    (out / "results.md").write_text(md)
    plot(rows, delays, out / "success_vs_delay.png")
    _tensorboard(rows, out / "tb")
    return md


def _tensorboard(rows: list[dict[str, Any]], logdir: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    agg = aggregate(rows)
    with SummaryWriter(str(logdir)) as w:
        for (v, m, d), (mu, _, _) in agg.items():
            w.add_scalar(f"success/{v}/{m}", mu, d)  # x axis: the delay
