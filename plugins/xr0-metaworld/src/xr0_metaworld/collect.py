"""Scripted-expert episodes → WebDataset shards, statistics and a data card; and VL samples derived from them.

Layouts are random per episode but reproducible: task i of a run with seed S uses the environment seed
S·1000 + i, and the exploration noise comes from a generator seeded the same way. `obs="image"` records the
hand-and-gripper state of `metaworld_sawyer_image` (goal and object only in the frames; the VL answers still come
from the full simulator state). `perturb_at` moves the goal (or object) mid-episode and the expert follows it: data
with discontinuities for `xr0 eval offline`.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from xr0_metaworld.embodiment import STATE_NAMES
from xr0_metaworld.env import EMBODIMENT_OF, MetaWorldEnv
from xr0_metaworld.tasks import PERTURBABLE, check_tasks, expert


def expert_episode(env: MetaWorldEnv, policy: Any, rng: np.random.Generator, noise: float = 0.0,
                   tail: int = 8, render: bool = True, perturb_at: int | None = None,
                   perturb: str = "goal") -> dict[str, Any]:
    """One episode of the scripted expert. Labels are the expert's clean actions; the executed action gets
    Gaussian noise (std `noise`) so the data shows how to recover from small errors. Recording goes on for
    `tail` steps after success so the policy also learns to stay at the goal."""
    env.reset()
    frames, states, full, actions = [], [], [], []
    success_at, left = None, None
    for k in range(env.max_steps):
        if perturb_at is not None and k == perturb_at and success_at is None:
            env.perturb(perturb, rng)
        if render:
            frames.append(env.render())
        states.append(env.state)
        full.append(env.full_state)
        a = np.clip(policy.get_action(env.expert_obs()), -1.0, 1.0).astype(np.float32)
        actions.append(a)
        executed = np.clip(a + rng.normal(0.0, noise, size=4), -1.0, 1.0) if noise > 0 else a
        _, ok = env.step(executed)
        if ok and success_at is None:
            success_at, left = env.steps, tail
        if left is not None:
            left -= 1
            if left < 0:
                break
    ep = {"state": np.stack(states), "actions": np.stack(actions), "instruction": env.instruction,
          "success_at": success_at, "task": env.task, "full_state": np.stack(full)}
    if render:
        ep["images"] = {env.camera: np.stack(frames)}
    return ep


def episodes(tasks: list[str], n: int, seed: int, image_size: int, noise: float, progress: bool = True,
             keep: list | None = None, obs: str = "state", perturb_at: int | None = None,
             perturb: str = "goal") -> Iterator[dict[str, Any]]:
    """n episodes per task, tasks interleaved (so shards mix them); `keep` collects light summaries."""
    import warnings

    from tqdm import tqdm

    check_tasks(tasks)
    if perturb_at is not None and set(tasks) - PERTURBABLE:
        raise ValueError(f"--perturb-at: perturbations are defined for {', '.join(sorted(PERTURBABLE))}")
    envs = [MetaWorldEnv(t, seed=seed * 1000 + i, image_size=image_size, obs=obs) for i, t in enumerate(tasks)]
    rngs = [np.random.default_rng(seed * 1000 + i) for i in range(len(tasks))]
    experts = [expert(t) for t in tasks]
    bar = tqdm(total=n * len(tasks), desc="expert episodes", unit="ep", disable=not progress)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Constant\\(s\\) may be too high")  # experts' own gains
            for _ in range(n):
                for env, pol, rng in zip(envs, experts, rngs):
                    ep = expert_episode(env, pol, rng, noise, perturb_at=perturb_at, perturb=perturb)
                    if keep is not None:
                        keep.append({"task": ep["task"], "success_at": ep["success_at"], "steps": len(ep["actions"]),
                                     "frames": ep["images"][env.camera][:: max(1, len(ep["actions"]) // 4)][:4],
                                     "state": ep.pop("full_state")})
                    bar.update(1)
                    yield ep
    finally:
        bar.close()
        for env in envs:
            env.close()


def _side(d: float, neg: str, pos: str, tol: float = 0.02) -> str:
    return neg if d < -tol else pos if d > tol else "level with"


def vl_samples(kept: list[dict[str, Any]], per_episode: int = 4, seed: int = 0) -> Iterator[dict[str, Any]]:
    """Questions about the scene answered from simulator state (table frame: x to the robot's right, y away
    from its base, z up). Short, categorical answers a tiny VLM can learn, plus rounded coordinates."""
    rng = np.random.default_rng(seed)
    ix = {n: i for i, n in enumerate(STATE_NAMES)}
    for ep in kept:
        steps = len(ep["state"])
        frames = ep["frames"]
        for j, frame in enumerate(frames[:per_episode]):
            t = min(j * max(1, steps // 4), steps - 1)
            s = ep["state"][t]
            hand = s[[ix["hand_x"], ix["hand_y"], ix["hand_z"]]]
            goal = s[[ix["goal_x"], ix["goal_y"], ix["goal_z"]]]
            obj = s[[ix["obj_x"], ix["obj_y"], ix["obj_z"]]]
            qa = [
                ("Is the gripper left or right of the goal?", _side(hand[0] - goal[0], "left", "right")),
                ("Is the gripper above or below the goal?", _side(hand[2] - goal[2], "below", "above")),
                ("Is the gripper nearer to the robot than the goal or farther?", _side(hand[1] - goal[1], "nearer", "farther")),
                ("Is the gripper open or closed?", "open" if s[ix["gripper_open"]] > 0.5 else "closed"),
                ("Where is the gripper? Answer x y z in metres.", " ".join(f"{v:.2f}" for v in hand)),
                ("Where is the object? Answer x y z in metres.", " ".join(f"{v:.2f}" for v in obj)),
                ("How far is the gripper from the goal, in centimetres?", f"{100 * np.linalg.norm(hand - goal):.0f}"),
            ]
            q, a = qa[int(rng.integers(len(qa)))]
            yield {"image": frame, "prompt": q, "answer": a}


def collect(tasks: list[str], episodes_per_task: int, out: str | Path, seed: int = 0, image_size: int = 56,
            noise: float = 0.1, name: str = "metaworld", maxcount: int = 1000, vl: bool = True,
            progress: bool = True, obs: str = "state", perturb_at: int | None = None,
            perturb: str = "goal") -> dict[str, Any]:
    """Collect, write robot shards + card (and a `<name>_vl` card), return paths and expert figures."""
    from xr0.data import write_episodes, write_vl_samples

    if obs not in EMBODIMENT_OF:
        raise ValueError(f"observation mode {obs!r}: use one of {list(EMBODIMENT_OF)}")
    kept: list[dict[str, Any]] = []
    extra = (f" --obs {obs}" if obs != "state" else "") + (f" --perturb-at {perturb_at} --perturb {perturb}"
                                                          if perturb_at is not None else "")
    card = write_episodes(episodes(tasks, episodes_per_task, seed, image_size, noise, progress, kept, obs, perturb_at,
                                   perturb), out,
                          EMBODIMENT_OF[obs], name, maxcount=maxcount,
                          license="MIT (Meta-World assets); generated data CC0-1.0",
                          source=f"xr0 sim collect --tasks {' '.join(tasks)} --episodes {episodes_per_task} "
                                 f"--seed {seed}{extra}",
                          description=f"Meta-World scripted experts: {', '.join(tasks)}; {episodes_per_task} episodes "
                                      f"per task, random layouts (seed {seed}), action noise {noise}, {obs} "
                                      f"observations" + (f", the {perturb} moved at tick {perturb_at}"
                                                          if perturb_at is not None else ""),
                          progress=False)
    result: dict[str, Any] = {"card": card, "episodes": len(kept),
                              "samples": sum(k["steps"] for k in kept),
                              "expert_success": float(np.mean([k["success_at"] is not None for k in kept]))}
    if vl:
        result["vl_card"] = write_vl_samples(vl_samples(kept, seed=seed), out, f"{name}_vl", maxcount=maxcount,
                                             license="CC0-1.0", source="questions answered from Meta-World state",
                                             progress=False)
    return result
