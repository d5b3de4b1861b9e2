"""One Meta-World task as an environment xr0 can drive: seeded random layouts, observable goal, fast upright frames.

Why not `gym.make("Meta-World/MT1", ...)`: MT1 cycles through 50 fixed layouts, while collection and evaluation
want a fresh random layout per episode, reproducible from a seed; we build the task class directly instead.
The goal position is part of the state (Meta-World's goal-observable convention): in reach and push the goal
is an almost invisible site, and a tiny policy on small frames could not learn it from pixels alone.
"""
from __future__ import annotations

import os
from typing import Self

os.environ.setdefault("MUJOCO_GL", "egl")  # headless on the CPU through Mesa; must precede the mujoco import

import numpy as np

from xr0_metaworld.tasks import check_tasks, instruction

CAMERA = "corner2"


def state_of(obs: np.ndarray) -> np.ndarray:
    """Meta-World's (39,) observation → the embodiment's (10,) state: hand xyz, gripper opening, object, goal."""
    return np.concatenate([obs[0:4], obs[4:7], obs[36:39]]).astype(np.float32)


class MetaWorldEnv:
    """A Meta-World task with a random layout per reset (from `seed`), the goal in the observation, and fast
    rendering (shadows, reflections and skybox off), frames flipped upright. Use as a context manager, or
    call close(): a renderer left to the garbage collector prints EGL errors at exit."""

    def __init__(self, task: str, seed: int = 0, image_size: int = 56, camera: str = CAMERA, max_steps: int = 150):
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        self.task = check_tasks([task])[0]
        self.instruction = instruction(task)
        self.image_size, self.camera, self.max_steps = image_size, camera, max_steps
        env = ALL_V3_ENVIRONMENTS[task](render_mode="rgb_array", camera_name=camera, width=image_size, height=image_size)
        # the same switches Meta-World's goal-observable wrappers flip, but with seeded per-reset randomisation
        env._partially_observable = False
        if "sawyer_observation_space" in vars(env):  # a cached bound that zeroes the goal; recomputed on access
            del env.sawyer_observation_space
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        env._set_task_called = True
        env.max_path_length = max(max_steps, 1)
        env.seed(seed)
        self.env = env
        self._viewer_ready = False
        self.obs: np.ndarray | None = None
        self.steps = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def reset(self) -> np.ndarray:
        """New random layout; returns the (10,) state."""
        self.obs, _ = self.env.reset()
        self.steps = 0
        return state_of(self.obs)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, bool]:
        """One 80 Hz control step with a (4,) action in [-1, 1]; returns (state, success)."""
        a = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
        self.obs, _, _, _, info = self.env.step(a)
        self.steps += 1
        return state_of(self.obs), bool(info["success"])

    @property
    def state(self) -> np.ndarray:
        return state_of(self.obs)

    def render(self) -> np.ndarray:
        """(H, W, 3) uint8, upright."""
        frame = self.env.render()
        if not self._viewer_ready:  # the viewer exists after the first render; turn the costly effects off
            import mujoco

            scn = self.env.mujoco_renderer._get_viewer("rgb_array").scn
            for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION, mujoco.mjtRndFlag.mjRND_SKYBOX):
                scn.flags[flag] = 0
            self._viewer_ready = True
            frame = self.env.render()
        return np.ascontiguousarray(frame[::-1])  # MuJoCo's offscreen buffer is bottom-up

    def expert_obs(self) -> np.ndarray:
        """The raw (39,) observation the scripted experts read."""
        return self.obs

    def move_goal(self, rng: np.random.Generator) -> np.ndarray:
        """Perturbation: put the goal somewhere else in the task's goal space; returns the new goal."""
        env = self.env
        space = env.goal_space
        goal = rng.uniform(space.low, space.high).astype(np.float64)
        env._target_pos = goal
        env._set_pos_site("goal", goal)
        if self.obs is not None:
            self.obs = self.obs.copy()
            self.obs[36:39] = goal
        return goal

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None
