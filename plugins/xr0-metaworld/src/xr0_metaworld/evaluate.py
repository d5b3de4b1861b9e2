"""Closed-loop evaluation on a simulated clock: Meta-World drives xr0-deploy's executor tick by tick.

The RTC-Kinetix protocol: a request made on tick k is answered on tick k + d whatever the real compute
time, and the env keeps stepping the current chunk meanwhile (async, rtc) or idles (sync). d = 0 means the
chunk is used on the tick it was requested. Reference rows: the scripted expert (closed loop, every tick,
no latency — an upper bound) and the zero action (what doing nothing scores). With `perturb_at` the goal (or the
object) moves at that tick and every episode also reports its reaction time and success after the move
(reactivity.py has the definition).
"""
from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xr0_metaworld.embodiment import SAWYER_HZ
from xr0_metaworld.env import EMBODIMENT_OF, PERTURB_KINDS, MetaWorldEnv
from xr0_metaworld.reactivity import ReactionProbe
from xr0_metaworld.tasks import PERTURBABLE, check_tasks, expert

REFERENCES = ("expert", "zero")


@dataclass(frozen=True)
class EvalConfig:
    """How rollouts run: executor mode, latency d (ticks), T_e, Δt_c (default max(d, 1)), flow steps, limits."""

    mode: str = "async"
    latency: int = 2
    exec_steps: int = 4
    prefix: int | None = None
    flow_steps: int = 5
    max_steps: int = 150
    perturb_at: int | None = None  # tick at which the goal (or object) moves (reactivity test)
    perturb: str = "goal"  # what moves: goal | object
    sheets: int = 2
    image_size: int | None = None  # default: the checkpoint's training size
    obs: str | None = None  # state | image; default: the checkpoint's embodiment says (references: state)

    def __post_init__(self) -> None:
        if self.perturb not in PERTURB_KINDS:
            raise ValueError(f"perturb {self.perturb!r}: use one of {list(PERTURB_KINDS)}")
        if self.perturb_at is not None and not 0 <= self.perturb_at < self.max_steps:
            raise ValueError(f"--perturb-at {self.perturb_at}: must be a tick in 0..{self.max_steps - 1}")

    @property
    def prefix_steps(self) -> int:
        return self.prefix if self.prefix is not None else max(self.latency, 1)


def load_checkpoint_policy(path: str, flow_steps: int):
    """A stage-2/3 checkpoint → (deploy LocalPolicy, training image size, observation mode), through the one loader
    `xr0 serve` and `xr0 deploy` use (the checkpoint's processor; FastPolicy where the backbone supports it)."""
    from xr0_deploy.local import load_local

    local = load_local(str(path), steps=flow_steps)
    name = local.processor.embodiment.name
    modes = {emb: mode for mode, emb in EMBODIMENT_OF.items()}
    if name not in modes:
        raise ValueError(f"{path} was trained for embodiment '{name}', not one of {sorted(modes)}")
    size = local.processor.image.size
    return local, int(size[0]) if size else 56, modes[name]


def _jerk(actions: np.ndarray) -> np.ndarray:
    """(N, 3) executed Δxyz commands → (N,) norm of their second difference (0 for the first two ticks)."""
    out = np.zeros(len(actions))
    if len(actions) > 2:
        out[2:] = np.linalg.norm(actions[2:] - 2 * actions[1:-1] + actions[:-2], axis=1)
    return out


def rollout_policy(env: MetaWorldEnv, policy, cfg: EvalConfig, rng: np.random.Generator,
                   frames: list | None = None, chunks: list | None = None) -> dict[str, Any]:
    """One episode through the executor. Returns success, steps, idle ticks and jerk at chunk boundaries.
    chunks: a list that gets one chunk of the episode against the expert's actions (`chunk_against_expert`)."""
    from xr0_deploy.executor import Executor, ExecutorConfig, declared_chunk_len, declared_max_prefix
    from xr0_deploy.protocol import Limits
    from xr0_deploy.safety import Safety

    ex = Executor(ExecutorConfig(mode=cfg.mode, exec_steps=cfg.exec_steps, prefix_steps=cfg.prefix_steps,
                                 record_trace=True),
                  # clip to [-1, 1] rather than reject: Meta-World clips too, and an expert at saturation
                  # (±1) makes small overshoots of a learned policy normal, not a sign of a broken model
                  safety=Safety(Limits(np.full(4, -1.0), np.full(4, 1.0)), reject_margin=2.0))
    chunk_len = declared_chunk_len(policy)
    if chunk_len is not None:  # settings checked before the first tick, as `xr0 deploy` does (scripted rows declare none)
        ex.configure(chunk_len, declared_max_prefix(policy))
    env.reset()
    pending: list[tuple[int, int, np.ndarray]] = []
    executed, boundary, held, success_at = [], [], 0, None
    last_chunk = None
    probe = _Probe(env, cfg, rng)
    asked: dict[int, tuple[Any, np.ndarray]] = {}  # request id → (request, chunk), for the chunk plot
    oracle, truth = (expert(env.task), []) if chunks is not None else (None, None)
    for k in range(cfg.max_steps):
        probe.before(k)
        for item in [p for p in pending if p[0] <= k]:
            pending.remove(item)
            ex.deliver(item[1], item[2])
        step = ex.tick(k)
        if step.request is not None:
            req = step.request
            obs = {"state": env.state, "images": {env.camera: env.render()}, "prompt": env.instruction}
            chunk = policy.infer(obs, req.prefix, req.rtc)
            asked[req.id] = (req, np.asarray(chunk))
            if cfg.latency == 0:  # answered at once: take the chunk into account on this very tick
                ex.deliver(req.id, chunk)
                ex.trace.pop()
                step = ex.tick(k)
            else:
                pending.append((k + cfg.latency, req.id, chunk))
        if frames is not None and k % 6 == 0:
            frames.append(env.render())
        action = np.zeros(4) if step.action is None else np.asarray(step.action)
        held += step.action is None
        cid = step.record["chunk_id"]
        boundary.append(cid is not None and last_chunk is not None and cid != last_chunk)
        last_chunk = cid if cid is not None else last_chunk
        executed.append(action[:3])
        if truth is not None:  # what the expert commands on this very observation: the eval's true action
            truth.append(np.clip(oracle.get_action(env.expert_obs()), -1, 1))
        probe.after(k, action)
        _, ok = env.step(action)
        if ok:
            success_at = k + 1
            break
    if chunks is not None:
        chunks.append(chunk_against_expert(ex.trace, asked, np.asarray(truth)))
    jerk = _jerk(np.asarray(executed))
    b = np.asarray(boundary)
    return {"success": success_at is not None, "steps": len(executed), "success_at": success_at, "held": held,
            "boundary_jerk": float(jerk[b].mean()) if b.any() else float("nan"), "jerk": float(jerk.mean()),
            **probe.result(success_at)}


def chunk_against_expert(trace: list[dict[str, Any]], asked: dict[int, tuple[Any, np.ndarray]],
                         truth: np.ndarray) -> dict[str, Any] | None:
    """The episode's second chunk (the first one with a committed prefix; the first if it had only one) against the
    expert's action on the tick each of its steps ran or would have run: `pred`, `true` (T, A) in robot units,
    `valid` (T,) (False past the episode's end), `prefix` (the committed steps: what ran before it arrived) and
    `tick` (the tick of its step 0). None when no chunk ran."""
    adopted = list(dict.fromkeys(r["chunk_id"] for r in trace if r["chunk_id"] is not None))
    if not adopted:
        return None
    cid = adopted[min(1, len(adopted) - 1)]
    first = next(r for r in trace if r["chunk_id"] == cid)
    start = first["tick"] - first["index_in_chunk"]  # the executor aligns step j of the chunk with tick start + j
    req, pred = asked[cid]
    ticks = start + np.arange(len(pred))
    valid = (ticks >= 0) & (ticks < len(truth))
    true = np.full(pred.shape, np.nan)
    true[valid] = truth[ticks[valid]]
    prefix = 0 if req.prefix is None else req.rtc.frozen_steps if req.rtc is not None else len(req.prefix)
    return {"pred": pred, "true": true, "valid": valid, "prefix": int(prefix), "tick": int(start)}


def chunk_plot(record: dict[str, Any], names: list[str], title: str):
    """`chunk_against_expert`'s record as the training chunk figure (xr0.plots): every dimension, robot units."""
    from xr0.plots import chunk_figure

    fig = chunk_figure(record["pred"], record["true"], names, prefix_len=record["prefix"], units="robot units",
                       valid=record["valid"], true_label="expert")
    fig.suptitle(f"{title}, chunk from tick {record['tick']}", fontsize=9)
    fig.tight_layout()
    return fig


class _Probe:
    """The perturbation and its reaction probe for one rollout (a no-op without `perturb_at`)."""

    def __init__(self, env: MetaWorldEnv, cfg: EvalConfig, rng: np.random.Generator):
        self.env, self.cfg, self.rng = env, cfg, rng
        self.probe = ReactionProbe(cfg.perturb_at) if cfg.perturb_at is not None else None
        self.oracle = expert(env.task) if self.probe else None
        self.moved = None

    def before(self, k: int) -> None:
        if self.probe is not None and k == self.cfg.perturb_at:
            self.moved = self.env.perturb(self.cfg.perturb, self.rng)
            self.probe.perturbed = True

    def after(self, k: int, action: np.ndarray) -> None:
        """Called with the tick's command before the env steps: the expert is asked on the same observation."""
        if self.moved is not None:
            self.probe.record(k, action, self.oracle.get_action(self.env.expert_obs()),
                              self.oracle.get_action(self.env.counterfactual_obs(self.moved)))

    def result(self, success_at: int | None) -> dict[str, Any]:
        return {} if self.probe is None else self.probe.result(success_at)


def rollout_reference(env: MetaWorldEnv, kind: str, cfg: EvalConfig, rng: np.random.Generator,
                      frames: list | None = None) -> dict[str, Any]:
    """The scripted expert (closed loop every tick) or the zero action, with the same perturbation."""
    pol = expert(env.task) if kind == "expert" else None
    env.reset()
    executed, success_at = [], None
    probe = _Probe(env, cfg, rng)
    for k in range(cfg.max_steps):
        probe.before(k)
        if frames is not None and k % 6 == 0:
            frames.append(env.render())
        a = np.clip(pol.get_action(env.expert_obs()), -1, 1) if pol else np.zeros(4)
        executed.append(a[:3])
        probe.after(k, a)
        _, ok = env.step(a)
        if ok:
            success_at = k + 1
            break
    jerk = _jerk(np.asarray(executed))
    return {"success": success_at is not None, "steps": len(executed), "success_at": success_at, "held": 0,
            "boundary_jerk": float("nan"), "jerk": float(jerk.mean()), **probe.result(success_at)}


def contact_sheet(frames: list[np.ndarray], path: Path, title: str, scale: int = 2) -> Path:
    """Frames of one rollout in a row-major grid (8 per row), upscaled, with a title line (proper names kept)."""
    from PIL import Image, ImageDraw

    from xr0.names import draw_title

    h, w = frames[0].shape[:2]
    cols = min(8, len(frames))
    rows = -(-len(frames) // cols)
    sheet = Image.new("RGB", (cols * w * scale, rows * h * scale + 14), "white")
    for i, f in enumerate(frames):
        img = Image.fromarray(f).resize((w * scale, h * scale), Image.NEAREST)
        sheet.paste(img, ((i % cols) * w * scale, 14 + (i // cols) * h * scale))
    draw_title(ImageDraw.Draw(sheet), (2, 0), title)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def evaluate(policy_ref: str, tasks: list[str], episodes: int, seed: int, cfg: EvalConfig,
             out: str | Path | None = None, policy: Any = None, label: str | None = None,
             progress: bool = True, keep_episodes: bool = False) -> dict[str, Any]:
    """Success rate, steps to success, throughput (successes per simulated minute, idle ticks included),
    jerk, and with `perturb_at` reaction time and success after the move; `policy_ref` is a checkpoint path,
    `expert` or `zero` (or pass a loaded `policy`). keep_episodes: the row carries the per-episode results too."""
    import matplotlib.pyplot as plt
    import torch
    from tqdm import tqdm

    from xr0.embodiments import get as get_embodiment
    from xr0.names import slug

    check_tasks(tasks)
    if cfg.perturb_at is not None and set(tasks) - PERTURBABLE:
        raise ValueError(f"--perturb-at: perturbations are defined for {', '.join(sorted(PERTURBABLE))}, not "
                         f"{', '.join(sorted(set(tasks) - PERTURBABLE))}")
    size, obs = cfg.image_size or 56, cfg.obs or "state"
    if policy is None and policy_ref not in REFERENCES:
        policy, trained_size, trained_obs = load_checkpoint_policy(policy_ref, cfg.flow_steps)
        size = cfg.image_size or trained_size
        if cfg.obs not in (None, trained_obs):
            raise ValueError(f"{policy_ref} was trained in observation mode '{trained_obs}', not '{cfg.obs}'")
        obs = trained_obs
    torch.manual_seed(seed)  # the flow noise: same seed, same rollouts
    out_dir = Path(out) if out else None
    label = label or (policy_ref if policy_ref in REFERENCES else Path(policy_ref).name)
    results, t0 = [], time.perf_counter()
    bar = tqdm(total=episodes * len(tasks), desc=f"eval {label}", unit="ep", disable=not progress)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Constant\\(s\\) may be too high")
        warnings.filterwarnings("ignore", message=".*exceeds the prefix.*")
        for i, task in enumerate(tasks):
            with MetaWorldEnv(task, seed=seed * 1000 + i, image_size=size, max_steps=cfg.max_steps, obs=obs) as env:
                for e in range(episodes):
                    rng = np.random.default_rng([seed, i, e])
                    frames = [] if out_dir is not None and e < cfg.sheets else None
                    chunks = [] if frames is not None and policy is not None else None
                    if policy is None:
                        r = rollout_reference(env, policy_ref, cfg, rng, frames)
                    else:
                        r = rollout_policy(env, policy, cfg, rng, frames, chunks)
                    r["task"] = task
                    results.append(r)
                    if frames:
                        name = slug(f"{label}_{cfg.mode}_d{cfg.latency}_{task}_ep{e}")  # files: ASCII, no spaces
                        title = f"{label} {task} {cfg.mode} d={cfg.latency}"  # titles: the proper name
                        contact_sheet(frames, out_dir / "sheets" / f"{name}.png",
                                      f"{title} {'success' if r['success'] else 'fail'} @{r['steps']}")
                    if chunks and chunks[0] is not None:
                        fig = chunk_plot(chunks[0], list(get_embodiment(EMBODIMENT_OF[obs]).action_names), title)
                        (out_dir / "chunks").mkdir(parents=True, exist_ok=True)
                        fig.savefig(out_dir / "chunks" / f"{name}.png", dpi=80)
                        plt.close(fig)
                    bar.update(1)
    bar.close()
    row = summarize(results, label, cfg if policy is not None else None, cfg.perturb_at)
    row["obs"] = obs
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{slug(f'{label}_{cfg.mode}_d{cfg.latency}')}.json").write_text(
            json.dumps({"row": row, "config": asdict(cfg), "episodes": results}, indent=1, default=str))
    if keep_episodes:
        row["per_episode"] = results
    return row


def summarize(results: list[dict[str, Any]], label: str, cfg: EvalConfig | None,
              perturb_at: int | None = None) -> dict[str, Any]:
    """Episodes → one table row (with the reactivity fields when the episodes were perturbed)."""
    succ = [r for r in results if r["success"]]
    ticks = sum(r["steps"] for r in results)
    bj = [r["boundary_jerk"] for r in results if np.isfinite(r["boundary_jerk"])]
    row = {"policy": label, "mode": cfg.mode if cfg else "closed loop", "latency": cfg.latency if cfg else 0,
           "episodes": len(results), "success": len(succ) / max(1, len(results)),
           "steps_to_success": float(np.mean([r["success_at"] for r in succ])) if succ else float("nan"),
           "throughput_per_min": len(succ) / (ticks / SAWYER_HZ / 60.0) if ticks else 0.0,
           "idle_frac": sum(r["held"] for r in results) / max(1, ticks),
           "boundary_jerk": float(np.mean(bj)) if bj else float("nan"),
           "jerk": float(np.mean([r["jerk"] for r in results]))}
    if perturb_at is not None:
        hit = [r for r in results if r.get("perturbed")]
        rt = [r["reaction"] for r in hit if np.isfinite(r["reaction"])]
        row.update(perturb_at=perturb_at, perturbed=len(hit),
                   reaction_ticks=float(np.mean(rt)) if rt else float("nan"),
                   reacted=len(rt) / len(hit) if hit else float("nan"),
                   post_success=float(np.mean([r["post_success"] for r in hit])) if hit else float("nan"))
    return row


def format_rows(rows: list[dict[str, Any]]) -> str:
    """Rows → a markdown table (reactivity columns when any row was perturbed)."""
    react = any("perturb_at" in r for r in rows)
    head = ("| policy | mode | d | episodes | success | steps to success | successes / sim min | idle | "
            "boundary jerk | mean jerk |" + (" reaction (ticks) | reacted | success after move |" if react else ""))
    lines = [head, "|" + "---|" * (13 if react else 10)]
    f = lambda x, p=2: "–" if x is None or np.isnan(x) else f"{x:.{p}f}"  # NaN → dash
    pct = lambda x: "–" if x is None or np.isnan(x) else f"{100 * x:.0f}%"
    for r in rows:
        line = (f"| {r['policy']} | {r['mode']} | {r['latency']} | {r['episodes']} | {100 * r['success']:.0f}% | "
                f"{f(r['steps_to_success'], 1)} | {f(r['throughput_per_min'], 1)} | {100 * r['idle_frac']:.0f}% | "
                f"{f(r['boundary_jerk'], 3)} | {f(r['jerk'], 3)} |")
        if react:
            line += (f" {f(r.get('reaction_ticks'), 1)} | {pct(r.get('reacted'))} | {pct(r.get('post_success'))} |")
        lines.append(line)
    return "\n".join(lines)
