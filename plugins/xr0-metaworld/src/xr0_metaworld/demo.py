"""`xr0 demo`: the main job on a CPU in minutes — collect Meta-World expert data, train stages 1 → 2 → 3 on a
tiny VLM, evaluate async execution under simulated latency, print the table against the expert and zero action."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "metaworld_tiny"
MARKER = "xr0-demo.json"  # written by the demo; only a folder carrying it is ever cleared


def prepare_out(out: Path) -> None:
    """Start from an empty folder: clear a previous demo's output, refuse to touch anything else."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise FileExistsError(f"{out} exists and was not written by `xr0 demo`; pass --out to another folder")
        print(f"[demo] clearing the previous demo output in {out}")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(json.dumps({"started": time.strftime("%Y-%m-%d %H:%M:%S")}))


def train_chain(out: Path, data: Path, steps: tuple[int, int, int], variant: str = "lambda",
                extra: list[str] | None = None, stage2: Path | None = None) -> dict[str, Path]:
    """Stages 1 → 2 → 3 (or only 3 from a given stage-2 checkpoint); returns each stage's run folder."""
    from xr0.run import fit

    # a progress bar on every training run: these are the long parts of the demo
    common = [f"_data={data}", f"_out={out}", "trainer.enable_progress_bar=true"] + list(extra or [])
    runs: dict[str, Path] = {}
    if stage2 is None:
        # stage 2 trains in the position layout the variant post-trains in (docs/method.md §2.2): a DiT never
        # trained with the RoPE offset starts post-training with it off-distribution
        offset = variant_rope_offset(str(RECIPES / "stage3.yaml"), variant, common)
        runs["stage1"] = fit(str(RECIPES / "stage1.yaml"), common + [f"trainer.max_steps={steps[0]}"])
        runs["stage2"] = fit(str(RECIPES / "stage2.yaml"), common + [
            f"trainer.max_steps={steps[1]}", f"stage.init_from={runs['stage1'] / 'checkpoints' / 'last.ckpt'}",
            f"stage.head.rope_offset={offset}"])
        stage2 = runs["stage2"] / "checkpoints" / "last.ckpt"
    runs["stage3"] = fit(str(RECIPES / "stage3.yaml"), common + [
        f"trainer.max_steps={steps[2]}", f"stage.init_from={stage2}", f"_variant={variant}"])
    return runs


def variant_rope_offset(recipe: str, variant: str, overrides: list[str]) -> int:
    """The RoPE offset a stage-3 recipe's variant post-trains with."""
    from xr0.config import load_recipe, resolve

    tree = resolve(load_recipe(recipe, overrides + [f"_variant={variant}"]))
    return int(tree["stage"]["head"].get("rope_offset", 0))


def log_rows(rows: list[dict[str, Any]], table: str, logdir: Path, chunks: Path | None = None) -> None:
    """The results table and its numbers in TensorBoard (text + scalars, tags as slugs), beside the training runs;
    with `chunks`, the evaluation's chunk plots (`evaluate`'s chunks/ folder) as images."""
    import numpy as np
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    from xr0.names import slug

    with SummaryWriter(str(logdir)) as w:
        w.add_text("results", table)
        for r in rows:
            tag = slug(f"{r['policy']}_{r['mode']}_d{r['latency']}")
            w.add_scalar(f"eval/success/{tag}", r["success"], 0)
            w.add_scalar(f"eval/throughput_per_min/{tag}", r["throughput_per_min"], 0)
        for png in sorted(chunks.glob("*.png")) if chunks is not None else []:
            w.add_image(f"eval/chunk/{png.stem}", np.asarray(Image.open(png).convert("RGB")), 0, dataformats="HWC")


def run_demo(out: str | Path = "runs/demo", tasks: tuple[str, ...] = ("reach-v3",), episodes: int = 40,
             eval_episodes: int = 20, latency: int = 2, steps: tuple[int, int, int] = (60, 400, 200),
             seed: int = 0) -> list[dict[str, Any]]:
    """Collect → stage 1 → 2 → 3 → evaluate; prints and returns the table rows."""
    from xr0_metaworld.collect import collect
    from xr0_metaworld.evaluate import EvalConfig, evaluate, format_rows

    t0 = time.perf_counter()
    out = Path(out)
    prepare_out(out)
    timings: dict[str, float] = {}

    print(f"[demo] 1/4 collecting {episodes} scripted-expert episodes per task of {', '.join(tasks)}")
    t = time.perf_counter()
    data = collect(list(tasks), episodes, out / "data", seed=seed)
    timings["collect"] = time.perf_counter() - t
    print(f"[demo]     {data['samples']} samples, expert success {100 * data['expert_success']:.0f}% "
          f"({timings['collect']:.0f} s)")

    print("[demo] 2/4 training stage 1 (choice policy + VL) → stage 2 (frozen VLM, DiT) → stage 3 (async Λ)")
    t = time.perf_counter()
    runs = train_chain(out, out / "data", steps)
    timings["train"] = time.perf_counter() - t
    ckpt = runs["stage3"] / "checkpoints" / "last.ckpt"

    print(f"[demo] 3/4 evaluating {eval_episodes} new layouts per task, latency d={latency} ticks (simulated clock)")
    t = time.perf_counter()
    cfg = EvalConfig(mode="async", latency=latency, exec_steps=4, sheets=2)
    ev = out / "eval"
    rows = [evaluate(str(ckpt), list(tasks), eval_episodes, 1000 + seed, cfg, out=ev, label="xr0 tiny (stage 3, Λ)"),
            evaluate(str(ckpt), list(tasks), eval_episodes, 1000 + seed, EvalConfig(mode="sync", latency=latency, sheets=0),
                     out=ev, label="xr0 tiny (stage 3, Λ)"),
            evaluate("expert", list(tasks), eval_episodes, 1000 + seed, cfg, out=ev),
            evaluate("zero", list(tasks), eval_episodes, 1000 + seed, cfg, out=ev)]
    timings["eval"] = time.perf_counter() - t

    table = format_rows(rows)
    log_rows(rows, table, out / "eval" / "tb", ev / "chunks")
    (out / "results.md").write_text(table + "\n")
    total = time.perf_counter() - t0
    print("\n[demo] 4/4 results on Meta-World " + ", ".join(tasks) + f" ({eval_episodes} episodes per task each):\n")
    print(table)
    print(f"\n[demo] wall time {total:.0f} s (collect {timings['collect']:.0f} s, train {timings['train']:.0f} s, "
          f"eval {timings['eval']:.0f} s)")
    print(f"[demo] TensorBoard: tensorboard --logdir {out}   (stage1/tb, stage2/tb, stage3_lambda/tb: losses and "
          f"predicted-vs-true chunk plots; eval/tb: this table and the evaluation's chunk plots)")
    print(f"[demo] contact sheets of rollouts: {ev / 'sheets'}; predicted chunks against the expert's actions: "
          f"{ev / 'chunks'}; table: {out / 'results.md'}; "
          f"per-episode results: {ev}/*.json")
    (out / MARKER).write_text(json.dumps({"finished": time.strftime("%Y-%m-%d %H:%M:%S"), "wall_s": round(total, 1),
                                          "timings_s": {k: round(v, 1) for k, v in timings.items()}}))
    return rows
