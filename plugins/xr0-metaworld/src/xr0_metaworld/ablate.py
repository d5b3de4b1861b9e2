"""`xr0 ablate RECIPE`: post-training points × execution modes × delays × seeds on Meta-World, with factor effects.

What runs (every piece a cell: a file under --out; a finished cell is never recomputed, so an interrupted ablation
resumes where it stopped, and a rerun with more seeds, delays, modes or points only adds cells):
1. stage 1 on the data (or a given checkpoint), once;
2. stage 2 once per RoPE layout the chosen points use (`stage.head.rope_offset`): a point trained with offset 10
   starts from a stage 2 trained with offset 10, one with offset 0 from one trained without (docs/method.md §2.2);
3. stage 3 per point and seed, from the stage 2 of its layout;
4. evaluation per point, seed, execution mode and delay (xr0_metaworld.evaluate: the deploy executor on a simulated
   clock), plus the scripted expert and the zero action as reference rows. Evaluation settings (tasks, episodes,
   perturbation …) name their own folder of cells, so one set of trainings serves several evaluations.

Execution modes: sync (idle while inferring), naive (async, no prefix: the new chunk starts at index d, unaware of
what ran), rtc (inference-time RTC guidance toward the old chunk), async (prefix-conditioned: Δt_c = max(d, 1)
committed actions sent as the prefix the model was trained with).

The report: per-cell tables (mean ± std over seeds), each factor's effect (difference of means over matched cells
with a paired bootstrap 95% interval over seeds × episodes, xr0.effects), a power statement, a plot, TensorBoard.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from xr0.effects import bootstrap_effect, markdown, power_statement, spread_cell
from xr0_metaworld.points import AXES, ORDER, Point, differs_only_in, point_recipe

MODES = {"sync": ("sync", 0), "naive": ("async", 0), "rtc": ("rtc", None), "async": ("async", None)}
REFERENCES = ("expert", "zero")
METRICS = {  # name: (row key, per-episode key, scale, digits, title)
    "success": ("success", "success", 100.0, 0, "success (%)"),
    "throughput": ("throughput_per_min", None, 1.0, 1, "successes per simulated minute (idle ticks included)"),
    "jerk": ("boundary_jerk", "boundary_jerk", 1000.0, 0, "chunk-boundary jerk ×1000 (‖Δ²a‖ of the executed Δxyz)"),
    "reaction": ("reaction_ticks", "reaction", 1.0, 1, "reaction time after the move (ticks at 80 Hz)"),
    "reacted": ("reacted", None, 100.0, 0, "episodes that reacted (%)"),
    "post_success": ("post_success", "post_success", 100.0, 0, "success after the move (%)"),
}
TRAINING_KEYS = ("recipe", "data", "stage1", "steps", "chunk", "overrides", "every_stage", "stage1_recipe",
                 "stage2_recipe")


# ---------------------------------------------------------------- cells
def _settings_check(out: Path, settings: dict[str, Any]) -> None:
    """The training settings of an ablation folder are fixed at its first run: a rerun with others is refused."""
    path = out / "ablate.json"
    if path.is_file():
        old = json.loads(path.read_text())
        for k in TRAINING_KEYS:
            if old.get(k) != settings.get(k):
                raise ValueError(f"{out} holds an ablation trained with {k} = {old.get(k)!r}, not {settings.get(k)!r}; "
                                 f"rerun with the same training options or use another --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=1))


def train_cell(recipe: str, run: Path, overrides: list[str]) -> Path:
    """One training (skipped when finished with the same overrides); returns its last checkpoint. Its `done.json`
    carries an id the evaluation cells of this checkpoint record, so a retrained checkpoint is evaluated again."""
    import uuid

    from xr0.run import fit

    ckpt, done = run / "checkpoints" / "last.ckpt", run / "done.json"
    if done.is_file() and ckpt.is_file():
        if json.loads(done.read_text()).get("overrides") != overrides:
            raise ValueError(f"{run} was trained with other overrides; use another --out")
        return ckpt
    if run.exists():  # a half-trained cell (killed): start it again (fit never writes into a used folder)
        shutil.rmtree(run)
    got = fit(recipe, overrides + [f"run.out_dir={run}", "trainer.enable_progress_bar=true"])
    if Path(got) != run:
        raise RuntimeError(f"stage trained into {got}, expected {run}")
    done.write_text(json.dumps({"overrides": overrides, "id": uuid.uuid4().hex}))
    return ckpt


def _trained_id(ckpt: Path) -> str:
    done = Path(ckpt).parent.parent / "done.json"
    return json.loads(done.read_text()).get("id", "") if done.is_file() else ""


def recipe_offset(ckpt: str) -> int:
    """The RoPE offset a checkpoint's head was trained with: its recipe's, else its head builder's default."""
    import inspect

    from xr0.checkpoint import read_state
    from xr0.registry import HEADS

    _, meta = read_state(ckpt)
    head = ((meta.get("xr0_recipe") or {}).get("stage") or {}).get("head") or {}
    if "rope_offset" in head:
        return int(head["rope_offset"])
    param = inspect.signature(HEADS.get(head.get("name", "dit"))).parameters.get("rope_offset")
    if param is None or param.default is inspect.Parameter.empty:
        raise ValueError(f"{ckpt}: its head has no rope_offset; it cannot start an ablation point")
    return int(param.default)


def _private_copy(src: str, dst: Path, what: str) -> str:
    """A copy under --out: a later `xr0 demo` clears runs/demo, and the ablation must still resume."""
    if not dst.exists():
        if not Path(src).exists():
            raise FileNotFoundError(f"{what} {src} not found")
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if Path(src).is_dir() else shutil.copyfile)(src, dst)
    return str(dst)


def eval_tag(tasks: list[str], episodes: int, exec_steps: int, max_steps: int, perturb_at: int | None,
             perturb: str) -> str:
    """The folder name of one evaluation setting's cells."""
    tag = f"{'+'.join(tasks)}_e{episodes}_te{exec_steps}_max{max_steps}"
    return tag + (f"_{perturb}@{perturb_at}" if perturb_at is not None else "")


def _compact(row: dict[str, Any]) -> dict[str, Any]:
    eps = row.pop("per_episode")
    keys = ("success", "boundary_jerk", "reaction", "post_success", "perturbed", "steps", "held", "task")
    row["episodes_detail"] = [{k: e.get(k) for k in keys if k in e} for e in eps]
    return row


def eval_cells(ckpt: Path, group: list[tuple[Path, str, int]], tasks: list[str], episodes: int, seed: int,
               exec_steps: int, max_steps: int, perturb_at: int | None, perturb: str) -> list[dict[str, Any]]:
    """The cells (path, mode, delay) of one trained checkpoint; the model is loaded once, only if a cell is missing."""
    from xr0_metaworld.evaluate import EvalConfig, evaluate, load_checkpoint_policy

    rows, policy, trained = [], None, _trained_id(ckpt)
    for path, mode, delay in group:
        if path.is_file() and json.loads(path.read_text()).get("trained") != trained:
            path.unlink()  # evaluated on an earlier training of this cell
        if not path.is_file():
            if policy is None:
                policy, size, obs = load_checkpoint_policy(str(ckpt), 5)
            ex_mode, prefix = MODES[mode]
            cfg = EvalConfig(mode=ex_mode, latency=delay, exec_steps=exec_steps, prefix=prefix, max_steps=max_steps,
                             perturb_at=perturb_at, perturb=perturb, sheets=0, image_size=size, obs=obs)
            row = _compact(evaluate(str(ckpt), tasks, episodes, 1000 + seed, cfg, policy=policy, progress=False,
                                    keep_episodes=True))
            row["trained"] = trained
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(row, default=float))
        rows.append(json.loads(path.read_text()))
    return rows


def reference_cell(kind: str, path: Path, tasks: list[str], episodes: int, seed: int, max_steps: int,
                   perturb_at: int | None, perturb: str, obs: str) -> dict[str, Any]:
    from xr0_metaworld.evaluate import EvalConfig, evaluate

    if not path.is_file():
        cfg = EvalConfig(max_steps=max_steps, perturb_at=perturb_at, perturb=perturb, sheets=0, obs=obs)
        row = _compact(evaluate(kind, tasks, episodes, 1000 + seed, cfg, progress=False, keep_episodes=True))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(row, default=float))
    return json.loads(path.read_text())


# ---------------------------------------------------------------- report
def _episode_values(row: dict[str, Any], key: str) -> np.ndarray:
    vals = [e.get(key) for e in row["episodes_detail"]]
    return np.asarray([np.nan if v is None else float(v) for v in vals], np.float64)


def metric_table(cells: dict[tuple, dict[str, Any]], refs: dict[str, list[dict[str, Any]]], names: list[str],
                 modes: list[str], delays: list[int], seeds: list[int], metric: str) -> str:
    """Rows (point, execution mode), one column per delay, mean ± std over seeds; reference rows at the bottom."""
    key, _, scale, digits, _ = METRICS[metric]
    rows = []
    for n in names:
        for m in modes:
            rows.append([n, m] + [spread_cell([cells[(n, s, m, d)].get(key) for s in seeds if (n, s, m, d) in cells],
                                              scale, digits) for d in delays])
    for kind, rs in refs.items():
        text = spread_cell([r.get(key) for r in rs], scale, digits)
        rows.append([f"{'scripted expert' if kind == 'expert' else 'zero action'}", "closed loop, no latency"]
                    + [text] * len(delays))
    return markdown(["point", "exec mode"] + [f"d={d}" for d in delays], rows)


def _levels(values: list[str], axis: str) -> list[str]:
    order = ORDER.get(axis)
    if order:
        return sorted(set(values), key=lambda v: order.index(v) if v in order else 99)
    return sorted(set(values), key=lambda v: (not v.startswith("causal"), int(v) if v.isdigit() else v))


def contrasts(points: dict[str, Point], modes: list[str], delays: list[int]) -> list[tuple[str, str, str, list]]:
    """(factor, "b − a", exec mode, matched cell pairs): each training axis per execution mode (points that differ in
    that axis only, at the same mode and delay), then each execution mode against another (same point and delay)."""
    out = []
    for axis in AXES:
        levels = _levels([p.level(axis) for p in points.values()], axis)
        for i, a in enumerate(levels):
            for b in levels[i + 1:]:
                matched = [(na, nb) for na, pa in points.items() for nb, pb in points.items()
                           if pa.level(axis) == a and pb.level(axis) == b and differs_only_in(pa, pb, axis)]
                for m in modes if matched else []:
                    out.append((axis, f"{b} − {a}", m, [((na, m, d), (nb, m, d)) for na, nb in matched for d in delays]))
    for i, ma in enumerate(modes):
        for mb in modes[i + 1:]:
            out.append(("exec mode", f"{mb} − {ma}", "–", [((n, ma, d), (n, mb, d)) for n in points for d in delays]))
    return out


def effect_rows(points: dict[str, Point], cells: dict[tuple, dict[str, Any]], modes: list[str], delays: list[int],
                seeds: list[int], metrics: list[str], reps: int) -> list[list[str]]:
    """One row per contrast: its matched cell pairs and, per metric, Δ [95% interval]."""
    def cell(key: tuple, metric: str) -> list[np.ndarray]:  # one array of per-episode values per seed
        n, m, d = key
        return [_episode_values(cells[(n, s, m, d)], METRICS[metric][1]) for s in seeds if (n, s, m, d) in cells]

    rows = []
    for factor, levels, mode, pairs in contrasts(points, modes, delays):
        pairs = [(a, b) for a, b in pairs if cell(a, "success") and cell(b, "success")]
        texts = []
        for k in metrics:
            store = {key: cell(key, k) for pair in pairs for key in pair}
            eff = bootstrap_effect(store, pairs, reps=reps)
            texts.append(eff.text(METRICS[k][2], max(METRICS[k][3], 1)) if eff.pairs else "–")
        rows.append([factor, levels, mode, str(len(pairs))] + texts)
    return rows


def plot(cells: dict[tuple, dict[str, Any]], names: list[str], modes: list[str], delays: list[int], seeds: list[int],
         metrics: list[str], path: Path) -> Path:
    """One row of panels per metric, one panel per execution mode, one line per point (mean ± std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(metrics), len(modes), figsize=(3.6 * len(modes), 2.9 * len(metrics)), sharey="row",
                             squeeze=False)
    for r, k in enumerate(metrics):
        key, _, scale, _, title = METRICS[k]
        for c, m in enumerate(modes):
            ax = axes[r][c]
            for n in names:
                pts = [(d, [cells[(n, s, m, d)].get(key) for s in seeds if (n, s, m, d) in cells]) for d in delays]
                pts = [(d, np.asarray([v for v in vs if v is not None and np.isfinite(v)])) for d, vs in pts]
                pts = [(d, v) for d, v in pts if len(v)]
                if pts:
                    ax.errorbar([d for d, _ in pts], [scale * v.mean() for _, v in pts],
                                yerr=[scale * v.std() for _, v in pts], marker="o", capsize=3, label=n)
            ax.set_title(f"{m}" if r == 0 else "", fontsize=9)
            ax.set_xticks(delays)
            ax.set_xlabel("latency d (ticks)" if r == len(metrics) - 1 else "")
            ax.grid(alpha=0.3)
        axes[r][0].set_ylabel(title.split(" (")[0], fontsize=8)
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(points: dict[str, Point], cells: dict[tuple, dict[str, Any]], refs: dict[str, list[dict[str, Any]]],
           modes: list[str], delays: list[int], seeds: list[int], tasks: list[str], episodes: int,
           perturb_at: int | None, perturb: str, reps: int = 2000) -> str:
    names = list(points)
    shown = ["success", "throughput", "jerk"] + (["reaction", "reacted", "post_success"] if perturb_at is not None else [])
    effects = ["success", "jerk"] + (["reaction", "post_success"] if perturb_at is not None else [])
    md = ["Points: " + "; ".join(f"{n} = {p.key()}" for n, p in points.items()) + f". Tasks {', '.join(tasks)}, "
          f"{episodes} episodes per task and cell; seeds {', '.join(map(str, seeds))}"
          + (f"; the {perturb} moves at tick {perturb_at}" if perturb_at is not None else "") + "."]
    for k in shown:
        md += ["", f"### {METRICS[k][4]}, mean ± std over seeds", "",
               metric_table(cells, refs, names, modes, delays, seeds, k)]
    head = ["factor", "levels", "exec mode", "pairs"] + [f"Δ {METRICS[k][4]}" for k in effects]
    md += ["", ("### factor effects: difference of means over matched cells (pooled over delays), paired bootstrap "
           "95% interval over seeds × episodes"), "",
           markdown(head, effect_rows(points, cells, modes, delays, seeds, effects, reps))]
    mean_success = np.nanmean([r["success"] for r in cells.values()]) if cells else float("nan")
    md += ["", power_statement(len(seeds) * episodes * len(tasks), float(mean_success), pairs=len(delays))]
    return "\n".join(md) + "\n"


def _tensorboard(cells: dict[tuple, dict[str, Any]], logdir: Path, metrics: list[str]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    from xr0.names import slug

    groups: dict[tuple, list[float]] = {}
    for (n, _, m, d), row in cells.items():
        for k in metrics:
            v = row.get(METRICS[k][0])
            if v is not None and np.isfinite(v):
                groups.setdefault((k, n, m, d), []).append(float(v))
    with SummaryWriter(str(logdir)) as w:
        for (k, n, m, d), vs in sorted(groups.items()):
            w.add_scalar(f"{k}/{slug(n)}/{m}", float(np.mean(vs)), d)  # x axis: the delay


# ---------------------------------------------------------------- the whole run
def run_ablation(recipe: str, out: str | Path, data: str, points: dict[str, Point], delays: list[int],
                 modes: list[str], seeds: list[int], tasks: list[str], episodes: int, exec_steps: int = 4,
                 max_steps: int = 150, perturb_at: int | None = None, perturb: str = "goal",
                 steps: tuple[int, int, int] = (60, 400, 200), chunk: int = 12, stage1: str | None = None,
                 stage2: list[str] | None = None, overrides: list[str] | None = None,
                 stage1_recipe: str | None = None, stage2_recipe: str | None = None,
                 prefix_sampler: str = "{name: prefix}", reps: int = 2000,
                 every_stage: list[str] | None = None) -> str:
    """Train what is missing, evaluate what is missing, write results.md, ablation.png and TensorBoard."""
    from tqdm import tqdm

    from xr0.config import load_recipe, validate
    from xr0.data.cards import load_card
    from xr0_metaworld.env import EMBODIMENT_OF

    out = Path(out)
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f"unknown mode '{bad[0]}'; choose from {', '.join(MODES)}")
    modes = [m for m in MODES if m in modes]  # effects read "later − earlier" in this order
    if any(d < 0 for d in delays) or max(delays) + exec_steps > chunk:
        raise ValueError(f"delays must be >= 0 and T_e + max delay <= chunk ({exec_steps} + {max(delays)} > {chunk})")
    folder = Path(recipe).resolve().parent
    stage1_recipe = stage1_recipe or str(folder / "stage1.yaml")
    stage2_recipe = stage2_recipe or str(folder / "stage2.yaml")
    if not (Path(data) / "metaworld.yaml").is_file() and not (out / "data" / "metaworld.yaml").is_file():
        raise FileNotFoundError(f"{data}/metaworld.yaml not found: run `xr0 sim collect --out {data}` (or `xr0 demo`)")
    settings = {"recipe": str(Path(recipe).resolve()), "data": str(Path(data).resolve()), "stage1": stage1,
                "steps": list(steps), "chunk": chunk, "overrides": list(overrides or []),
                "every_stage": list(every_stage or []),
                "stage1_recipe": stage1_recipe, "stage2_recipe": stage2_recipe}
    _settings_check(out, settings)
    data_dir = _private_copy(data, out / "data", "data folder")
    emb = load_card(str(Path(data_dir) / "metaworld.yaml")).embodiment
    obs = {e: m for m, e in EMBODIMENT_OF.items()}.get(emb)
    if obs is None:
        raise ValueError(f"{data_dir}/metaworld.yaml holds '{emb}' data, not Meta-World's ({', '.join(EMBODIMENT_OF.values())})")
    common = [f"_data={data_dir}", f"_chunk={chunk}", f"embodiment={emb}"] + list(every_stage or [])
    stage3 = {n: common + p.overrides(prefix_sampler) + list(overrides or []) for n, p in points.items()}
    recipes = {n: point_recipe(recipe, p, out / "recipes" / f"{p.key()}.yaml") for n, p in points.items()}
    for n, ov in stage3.items():  # every point must load and validate before hours of training start
        try:
            validate(load_recipe(recipes[n], ov + ["stage.init_from=null", f"trainer.max_steps={steps[2]}"]))
        except ValueError as exc:
            raise ValueError(f"point '{n}' ({points[n].key()}) does not validate with {recipe}: {exc}") from None

    offsets = sorted({p.rope_offset for p in points.values()})
    given = {recipe_offset(c): c for c in (stage2 or [])}
    trainings = (0 if stage1 or set(offsets) <= set(given) else 1) + len(set(offsets) - set(given)) \
        + len(points) * len(seeds)
    tag = eval_tag(tasks, episodes, exec_steps, max_steps, perturb_at, perturb)
    cell_dir = out / "cells" / tag
    todo = [(n, s, m, d) for n in points for s in seeds for m in modes for d in delays]
    bar = tqdm(total=trainings + len(todo) + len(REFERENCES) * len(seeds), desc="ablation", unit="cell")

    layouts: dict[int, str] = {}
    s1 = None
    for off in offsets:
        if off in given:
            layouts[off] = _private_copy(given[off], out / "stage2" / f"o{off}.ckpt", "stage-2 checkpoint")
            continue
        if s1 is None:
            s1 = (_private_copy(stage1, out / "stage1.ckpt", "stage-1 checkpoint") if stage1 else
                  str(train_cell(stage1_recipe, out / "train" / "stage1",
                                 common + [f"trainer.max_steps={steps[0]}"])))
            bar.update(0 if stage1 else 1)
        layouts[off] = str(train_cell(stage2_recipe, out / "train" / f"stage2_o{off}", common + [
            f"trainer.max_steps={steps[1]}", f"stage.init_from={s1}", f"stage.head.rope_offset={off}"]))
        bar.update(1)
    ckpts = {}
    for n, p in points.items():
        for s in seeds:
            ckpts[(n, s)] = train_cell(recipes[n], out / "train" / f"{p.key()}_s{s}", stage3[n] + [
                f"trainer.max_steps={steps[2]}", f"stage.init_from={layouts[p.rope_offset]}", f"run.seed={s}"])
            bar.update(1)
    cells: dict[tuple, dict[str, Any]] = {}
    for (n, s), ckpt in ckpts.items():
        group = [(cell_dir / f"{points[n].key()}_s{s}_{m}_d{d}.json", m, d) for m in modes for d in delays]
        bar.set_postfix_str(f"{n} seed {s}")
        rows = eval_cells(ckpt, group, tasks, episodes, s, exec_steps, max_steps, perturb_at, perturb)
        for (_, m, d), row in zip(group, rows):
            cells[(n, s, m, d)] = row
        bar.update(len(group))
    refs = {k: [] for k in REFERENCES}
    for k in REFERENCES:
        for s in seeds:
            refs[k].append(reference_cell(k, cell_dir / f"{k}_s{s}.json", tasks, episodes, s, max_steps, perturb_at,
                                          perturb, obs))
            bar.update(1)
    bar.close()

    md = (f"## ablation on Meta-World ({obs} observations), {tag}\n\n"
          + report(points, cells, refs, modes, delays, seeds, tasks, episodes, perturb_at, perturb, reps))
    (cell_dir / "results.md").write_text(md)
    (out / "results.md").write_text(md)
    metrics = ["success", "jerk"] + (["reaction", "post_success"] if perturb_at is not None else [])
    plot(cells, list(points), modes, delays, seeds, metrics, out / "ablation.png")
    _tensorboard(cells, out / "tb" / tag, metrics)
    return md
