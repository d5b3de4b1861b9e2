"""`xr0 eval offline CKPT [CKPT ...] --data CARD`: compare checkpoints on recorded held-out episodes, no simulator.

Every recorded step goes through the serving path a robot uses (`xr0_deploy.local.load_local`: the checkpoint's own
processor, raw state in robot units, native camera frames, the instruction; FastPolicy where the backbone has it), so
the numbers are what the robot would have been sent. Three measurements, each per checkpoint (definitions in the
README, *Offline A/B*):

- action error: mean |â − a| over the action dims, per chunk step, in robot units (â: the chunk predicted on the
  recorded observation at t; a: the recorded actions t … t+T−1; absolute targets, as served);
- chunk-boundary jump at delay d: the async executor's switch replayed on the recorded observations — the chunk
  predicted T_e steps earlier is the old one; the new one is predicted at t with the committed prefix
  old[T_e … T_e+Δt_c−1], Δt_c = max(d, 1); jump = mean |new[Δt_c] − old[T_e+Δt_c−1]| over the action dims, the
  step from the last committed action to the first generated one. Beside it: the same switch without a prefix
  (new[d] − old[T_e+d−1], naive async) and the recorded actions' own step at that place;
- response after a discontinuity: at each recorded step where the state jumps (a goal moved, an object teleported,
  a re-grasp), the error of the first action of the fresh chunk at t+i (i = 0 … W−1) against the error the chunk
  predicted just before the jump (at t−1) would have made had it run on open loop. A model that reads the
  observation has a fresh error below the stale one.

Each checkpoint after the first gets its difference to the first with a bootstrap 95% interval over episodes, in the
format `xr0 ablate` prints (xr0.effects).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xr0.effects import Effect, bootstrap_effect, markdown, spread_cell

DELAYS = (0, 2, 4, 6)
JUMP_K = 8.0  # a step larger than this many times the dim's median step (and than JUMP_ATOL) is a discontinuity
JUMP_ATOL = 1e-4


@dataclass
class Recorded:
    """One recorded step: raw inputs as the robot sent them, and the actions recorded from it on."""

    t: int
    state: np.ndarray  # (S,) robot units
    frames: dict[str, bytes | None]  # encoded image per camera (None: missing at this step)
    prompt: str
    future: np.ndarray  # (n, A) absolute actions t … t+n−1


@dataclass
class Episode:
    index: int
    steps: list[Recorded] = field(default_factory=list)


def parse_selection(spec: str | None) -> set[int] | None:
    """`40-49,52` → {40, …, 49, 52}; None or `all` → every episode."""
    if spec is None or spec.strip() in ("", "all"):
        return None
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        try:
            lo, _, hi = part.partition("-")
            out.update(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            raise ValueError(f"--episodes {spec!r}: expected episode numbers and ranges like 40-49,52") from None
    return out


def read_episodes(card: Any, select: set[int] | None = None, max_episodes: int | None = None) -> list[Episode]:
    """The card's samples, grouped by episode and ordered by step (webdataset, no shuffle; frames kept encoded)."""
    import webdataset as wds

    from xr0.data.reader import _json, _npy

    episodes: dict[int, Episode] = {}
    for s in wds.WebDataset(card.urls, shardshuffle=False, empty_check=False):
        meta = _json(s[card.key("meta")])
        if "episode" not in meta or "t" not in meta:
            raise ValueError(f"data card '{card.name}': sample {s.get('__key__')} has no episode/t in its meta.json; "
                             f"offline evaluation needs episodes as `xr0 data write` records them")
        e = int(meta["episode"])
        if select is not None and e not in select:
            continue
        if e not in episodes and max_episodes is not None and len(episodes) >= max_episodes:
            continue
        frames = {cam: s.get(card.key(cam)) for cam in card.cameras}
        episodes.setdefault(e, Episode(e)).steps.append(Recorded(
            int(meta["t"]), _npy(s[card.key("state")]).astype(np.float32), frames,
            str(meta.get(card.instruction_field, "")), _npy(s[card.key("actions")]).astype(np.float32)))
    for ep in episodes.values():
        ep.steps.sort(key=lambda r: r.t)
        ts = [r.t for r in ep.steps]
        if ts != list(range(ts[0], ts[0] + len(ts))):
            raise ValueError(f"data card '{card.name}': episode {ep.index} has gaps in its steps; offline evaluation "
                             f"needs whole episodes")
    if not episodes:
        raise ValueError(f"data card '{card.name}': no episode selected" + (f" (selection {sorted(select)[:8]}…)"
                                                                            if select else ""))
    return [episodes[k] for k in sorted(episodes)]


def discontinuities(states: np.ndarray, k: float = JUMP_K, atol: float = JUMP_ATOL) -> np.ndarray:
    """Steps t ≥ 1 of one episode where some state dim moves more than k × its median step (over this episode) and
    more than atol: (n,) bool. A dim that never moves (a goal) has median 0, so any change of it counts."""
    s = np.asarray(states, np.float64)
    out = np.zeros(len(s), bool)
    if len(s) < 2:
        return out
    step = np.abs(np.diff(s, axis=0))  # (n−1, S)
    scale = np.median(step, axis=0)  # (S,)
    out[1:] = np.any((step > k * scale) & (step > atol), axis=1)
    return out


def _decode(frames: dict[str, bytes | None]) -> dict[str, np.ndarray | None]:
    from xr0.data.reader import decode_image  # the reader's own decoding: what training saw

    return {c: None if b is None else decode_image(b) for c, b in frames.items()}


def _err(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean |a − b| over the action dims: (..., A) → (...)."""
    return np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean(axis=-1)


def evaluate_policy(policy: Any, episodes: list[Episode], exec_steps: int, delays: tuple[int, ...], window: int,
                    bar: Any = None) -> dict[str, Any]:
    """One checkpoint (a deploy LocalPolicy) on the episodes → per-episode arrays of every measurement."""
    T = policy.chunk_len
    per_ep: list[dict[str, Any]] = []
    for ep in episodes:
        n = len(ep.steps)
        obs = [{"state": r.state, "images": _decode(r.frames), "prompt": r.prompt} for r in ep.steps]
        base = [policy.infer(o) for o in obs]  # (T, A) each, robot units, absolute
        A = base[0].shape[1]
        err = np.full((n, T), np.nan)
        err_dim = np.zeros((T, A))
        cnt = np.zeros(T)
        for t, r in enumerate(ep.steps):
            m = min(T, len(r.future))
            d = np.abs(base[t][:m] - r.future[:m])  # (m, A)
            err[t, :m] = d.mean(axis=1)
            err_dim[:m] += d
            cnt[:m] += 1
        jump = {d: [] for d in delays}
        naive = {d: [] for d in delays}
        data_step = {d: [] for d in delays}
        for t in range(exec_steps, n):
            old = base[t - exec_steps]  # the chunk the executor was running, requested T_e steps ago
            for d in delays:
                p = max(d, 1)
                new = policy.infer(obs[t], old[exec_steps:exec_steps + p])
                jump[d].append(_err(new[p], old[exec_steps + p - 1]))
                naive[d].append(_err(base[t][d], old[exec_steps + d - 1]))  # executed from index d, no prefix
                fut = ep.steps[t].future
                data_step[d].append(_err(fut[p], fut[p - 1]) if len(fut) > p else np.nan)
        jumps = discontinuities(np.stack([r.state for r in ep.steps]))
        fresh = np.full((int(jumps.sum()), window), np.nan)
        stale = np.full_like(fresh, np.nan)
        for j, t in enumerate(np.flatnonzero(jumps)):
            for i in range(window):
                if t + i < n and 1 + i < T:
                    fresh[j, i] = _err(base[t + i][0], ep.steps[t + i].future[0])
                    stale[j, i] = _err(base[t - 1][1 + i], ep.steps[t + i].future[0])
        calm = np.array([err[t, 0] for t in range(n) if not jumps[max(t - window + 1, 0):t + 1].any()])
        per_ep.append({"episode": ep.index, "steps": n, "err": err, "err_dim_sum": err_dim, "err_dim_count": cnt,
                       "jump": {d: np.asarray(v) for d, v in jump.items()},
                       "naive": {d: np.asarray(v) for d, v in naive.items()},
                       "data_step": {d: np.asarray(v) for d, v in data_step.items()},
                       "fresh": fresh, "stale": stale, "calm": calm, "discontinuities": int(jumps.sum())})
        if bar is not None:
            bar.update(n)
    return {"chunk": T, "episodes": per_ep}


def _mean(x: np.ndarray) -> float:
    x = np.asarray(x, np.float64)
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


def per_episode(result: dict[str, Any], what: str, d: int | None = None, i: int | None = None) -> np.ndarray:
    """One value per episode of a measurement (the unit the bootstrap resamples)."""
    vals = []
    for e in result["episodes"]:
        x = e[what] if d is None else e[what][d]
        if what == "err":
            x = x if i is None else x[:, i]
        elif what in ("fresh", "stale"):
            x = x[:, i if i is not None else 0]
        vals.append(_mean(x))
    return np.asarray(vals)


def tables(labels: list[str], results: list[dict[str, Any]], delays: tuple[int, ...], window: int,
           action_names: tuple[str, ...], reps: int = 2000) -> str:
    """The report: one markdown table per measurement, mean ± std over episodes, then differences with intervals."""
    T = results[0]["chunk"]
    steps = sorted({0, T // 4, T // 2, (3 * T) // 4, T - 1})
    f = lambda x: "–" if not np.isfinite(x) else f"{x:.4f}"
    ms = lambda v: spread_cell(v, digits=4)
    n_eps = len(results[0]["episodes"])
    out = [f"Mean ± std over {n_eps} held-out episodes; robot units (absolute targets, as served).", "",
           "### action error |â − a| per chunk step (mean over action dims)", "",
           markdown(["checkpoint"] + [f"step {i}" for i in steps] + ["all steps"],
                    [[lab] + [ms(per_episode(r, "err", i=i)) for i in steps] + [ms(per_episode(r, "err"))]
                     for lab, r in zip(labels, results)]), "",
           "### action error per action dim (mean over chunk steps)", ""]
    dim_rows = []
    for lab, r in zip(labels, results):
        tot = sum(e["err_dim_sum"] for e in r["episodes"]).sum(axis=0)
        cnt = sum(e["err_dim_count"] for e in r["episodes"]).sum()
        dim_rows.append([lab] + [f(x) for x in tot / max(cnt, 1)])
    out += [markdown(["checkpoint"] + list(action_names), dim_rows), "",
            "### chunk-boundary jump |first generated − last committed action| at delay d", ""]
    rows = []
    for lab, r in zip(labels, results):
        rows.append([lab, "prefix (async)"] + [ms(per_episode(r, "jump", d)) for d in delays])
        rows.append([lab, "no prefix (naive)"] + [ms(per_episode(r, "naive", d)) for d in delays])
    rows.append(["recorded actions", "own step"] + [ms(per_episode(results[0], "data_step", d)) for d in delays])
    out += [markdown(["checkpoint", "switch"] + [f"d={d}" for d in delays], rows), ""]
    n_jumps = sum(e["discontinuities"] for e in results[0]["episodes"])
    out += [f"### response after {n_jumps} discontinuities in the recorded state (first-action error i ticks after)",
            ""]
    if n_jumps:
        rows = []
        for lab, r in zip(labels, results):
            rows.append([lab, "fresh chunk"] + [ms(per_episode(r, "fresh", i=i)) for i in range(window)]
                        + [ms(per_episode(r, "calm"))])
            rows.append([lab, "pre-jump chunk, open loop"] + [ms(per_episode(r, "stale", i=i)) for i in range(window)]
                        + ["–"])
        out.append(markdown(["checkpoint", "chunk"] + [f"i={i}" for i in range(window)] + ["away from jumps"], rows))
    else:
        out.append(f"none found (a state dim moving > {JUMP_K:g}× its median step): nothing to measure")
    if len(results) > 1:
        out += ["", f"### differences to {labels[0]} (95% bootstrap interval over episodes)", "",
                effects_table(labels, results, delays, reps, bool(n_jumps))]
    return "\n".join(out) + "\n"


def effects_table(labels: list[str], results: list[dict[str, Any]], delays: tuple[int, ...], reps: int,
                  with_jumps: bool) -> str:
    """Each checkpoint against the first: the same layout as `xr0 ablate`'s factor effects."""
    metrics = [("action error, all steps", lambda r: per_episode(r, "err"))]
    metrics += [(f"jump d={d} (prefix)", lambda r, d=d: per_episode(r, "jump", d)) for d in delays]
    if with_jumps:
        metrics.append(("response: fresh error i=0", lambda r: per_episode(r, "fresh", i=0)))
    rows = []
    for lab, r in zip(labels[1:], results[1:]):
        row = ["checkpoint", f"{lab} − {labels[0]}"]
        for _, fn in metrics:
            eff: Effect = bootstrap_effect({"a": [fn(results[0])], "b": [fn(r)]}, [("a", "b")], reps=reps)
            row.append(eff.text(digits=4))
        rows.append(row)
    return markdown(["factor", "levels"] + [f"Δ {name}" for name, _ in metrics], rows)


def label_of(path: str, taken: set[str]) -> str:
    """A short name for a checkpoint: its run folder for `<run>/checkpoints/<file>.ckpt`, else the file name."""
    p = Path(path)
    name = p.parent.parent.name if p.parent.name == "checkpoints" and p.parent.parent.name else p.name
    label, i = name, 2
    while label in taken:
        label, i = f"{name}#{i}", i + 1
    taken.add(label)
    return label


def run_offline(checkpoints: list[str], data: str, episodes: str | None = None, max_episodes: int | None = None,
                exec_steps: int | None = None, delays: tuple[int, ...] = DELAYS, window: int = 5,
                noise_seed: int = 0, out: str | Path | None = None, progress: bool = True,
                reps: int = 2000) -> str:
    """Load each checkpoint through the serving path, evaluate it on the card's selected episodes, report."""
    from tqdm import tqdm

    from xr0.data.cards import load_card

    try:
        from xr0_deploy.local import load_local
    except ImportError as exc:
        raise ImportError("xr0 eval offline evaluates through the serving path of the xr0-deploy plugin: "
                          "pip install -e plugins/xr0-deploy") from exc
    card = load_card(data)
    if card.kind != "robot":
        raise ValueError(f"data card '{card.name}' is a {card.kind} card; offline evaluation needs robot episodes")
    eps = read_episodes(card, parse_selection(episodes), max_episodes)
    policies = [load_local(c, noise_seed=noise_seed) for c in checkpoints]  # the one loader serve/deploy/sim use
    for c, pol in zip(checkpoints, policies):
        if pol.processor.embodiment.name != card.embodiment:
            raise ValueError(f"{c} was trained for embodiment '{pol.processor.embodiment.name}', the card "
                             f"'{card.name}' holds '{card.embodiment}' episodes")
    T = min(p.chunk_len for p in policies)
    t_e = exec_steps if exec_steps is not None else min(4, max(1, T // 2))
    if not 1 <= t_e < T:
        raise ValueError(f"--exec-steps {t_e}: must be in 1..{T - 1} for chunks of {T}")
    kept = tuple(d for d in delays if t_e + max(d, 1) <= T - 1)
    if not kept:
        raise ValueError(f"no delay fits: T_e={t_e} + Δt_c=max(d, 1) must leave a generated action in the chunk of "
                         f"{T}; use fewer --exec-steps or smaller --delays")
    if len(kept) < len(delays):
        print(f"[eval offline] delays {sorted(set(delays) - set(kept))} skipped: T_e={t_e} + Δt_c leaves no generated "
              f"action in a chunk of {T}")
    total = sum(len(e.steps) for e in eps) * len(policies)
    bar = tqdm(total=total, desc="eval offline", unit="step", disable=not progress)
    results = [evaluate_policy(p, eps, t_e, kept, window, bar) for p in policies]
    bar.close()
    taken: set[str] = set()
    labels = [label_of(c, taken) for c in checkpoints]
    head = (f"## offline evaluation on '{card.name}' ({len(eps)} episodes, {total // len(policies)} steps; T_e={t_e}, "
            f"noise seed {noise_seed})\n\n" + "\n".join(f"- {lab}: {c}" for lab, c in zip(labels, checkpoints)) + "\n\n")
    md = head + tables(labels, results, kept, window, policies[0].processor.embodiment.action_names, reps)
    if out is not None:
        from xr0.fault import atomic_write

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "results.md", lambda f: f.write(md.encode()))
        blob = json.dumps(
            {"card": card.name, "episodes": [e.index for e in eps], "exec_steps": t_e, "delays": list(kept),
             "checkpoints": dict(zip(labels, checkpoints)), "results": dict(zip(labels, results))},
            default=_jsonable).encode()
        atomic_write(out / "results.json", lambda f: f.write(blob))
    return md


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return np.where(np.isfinite(x), x, None).tolist() if x.dtype.kind == "f" else x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
