"""Reaction time after a perturbation (`xr0 sim eval --perturb-at TICK`), defined so that ignoring it never counts.

At tick K the goal (or the object) moves from p to p'. On every later tick t the task's scripted expert is asked twice,
on the policy's own observation: e_new = what it commands there (the target now at p'), e_old = what it would command
had nothing moved (the target still at p; `MetaWorldEnv.counterfactual_obs`). A tick is *informative* when the two
differ in direction by more than MIN_ANGLE (both non-zero): before that, the move does not yet change what the arm
should do (push and pick-place go to the puck first, whatever the goal). On an informative tick the commanded motion
c_t (the executed Δxyz) *turns toward the new target* when it points more along e_new than along e_old:
cos(c_t, e_new) > cos(c_t, e_old), with |c_t| > MIN_MOTION (a held, idle tick never does).

reaction time = t₀ − t_inf, in control ticks (12.5 ms at 80 Hz): t_inf is the first informative tick at or after K,
t₀ the first informative tick that starts a run of K_RUN informative ticks which all turn toward the new target
(uninformative ticks between them neither count nor break the run; a success on the new target closes a run early).
No such run before the episode ends: no reaction (NaN; counted in `reacted`).

Why this definition: for reach, e_new and e_old point from the hand to the new and the old goal, so this is the plain
geometric "motion turned toward the new goal"; a policy that keeps heading for the old target has cos(c, e_old) ≈ 1
and never counts, however near p' lies to its path (a positive component toward p' alone would count it). The
expert knows the task's phases, so multi-phase tasks are judged only where the move matters. K_RUN = 3 consecutive
ticks keep one noisy action from counting as a reaction; the expert's own row (reacting on its next tick) is the
floor, and sync execution pays its idle ticks in full because a held tick is not a reaction.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

K_RUN = 3
MIN_ANGLE_DEG = 20.0
MIN_MOTION = 1e-3


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def informative(e_new: np.ndarray, e_old: np.ndarray) -> bool:
    """Whether the move changes the expert's commanded direction by more than MIN_ANGLE_DEG."""
    if np.linalg.norm(e_new) < MIN_MOTION or np.linalg.norm(e_old) < MIN_MOTION:
        return False
    return _cos(e_new, e_old) < math.cos(math.radians(MIN_ANGLE_DEG))


def turns_toward_new(cmd: np.ndarray, e_new: np.ndarray, e_old: np.ndarray) -> bool:
    """The command points more along the new target's direction than along the old one's (and moves at all)."""
    if np.linalg.norm(cmd) <= MIN_MOTION:
        return False
    return _cos(cmd, e_new) > _cos(cmd, e_old)


class ReactionProbe:
    """Collects, tick by tick after the perturbation, whether each tick was informative and turned toward the new
    target; `result` turns that into the episode's reaction time and success after the perturbation."""

    def __init__(self, tick: int, k_run: int = K_RUN):
        self.tick, self.k_run = tick, k_run
        self.flags: list[tuple[int, bool]] = []  # (tick, turned toward the new target), informative ticks only
        self.perturbed = False

    def record(self, t: int, cmd: np.ndarray, e_new: np.ndarray, e_old: np.ndarray) -> None:
        cmd, e_new, e_old = (np.asarray(x, np.float64)[:3] for x in (cmd, e_new, e_old))
        if informative(e_new, e_old):
            self.flags.append((t, turns_toward_new(cmd, e_new, e_old)))

    def reaction(self, succeeded: bool) -> float:
        """Ticks from the first informative tick to the start of the first run of k_run turning ticks (NaN: none)."""
        if not self.flags:
            return float("nan")
        t_inf, start, run = self.flags[0][0], None, 0
        for t, ok in self.flags:
            if ok:
                start = t if run == 0 else start
                run += 1
                if run >= self.k_run:
                    return float(start - t_inf)
            else:
                run = 0
        return float(start - t_inf) if succeeded and run > 0 else float("nan")

    def result(self, success_at: int | None) -> dict[str, Any]:
        """Per-episode fields: perturbed (the episode reached the tick), reaction (ticks), post_success."""
        if not self.perturbed:  # succeeded before the perturbation: nothing to react to
            return {"perturbed": False, "reaction": float("nan"), "post_success": None}
        ok = success_at is not None and success_at > self.tick
        return {"perturbed": True, "reaction": self.reaction(ok), "post_success": ok}
