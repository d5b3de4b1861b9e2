"""One Meta-World task as an environment xr0 can drive: seeded random layouts, observable goal, fast upright frames.

Why not `gym.make("Meta-World/MT1", ...)`: MT1 cycles through 50 fixed layouts, while collection and evaluation
want a fresh random layout per episode, reproducible from a seed; we build the task class directly instead.

Two observation modes. `state` (embodiment `metaworld_sawyer`): the state carries the object and goal positions
(Meta-World's goal-observable convention) — in reach and push the goal is an almost invisible site, and a tiny policy
on small frames could not learn it from pixels alone. `image` (embodiment `metaworld_sawyer_image`): the state is the
hand and gripper only, so the goal and the object are seen in the frames or not at all; the goal marker is drawn as
a yellow ball of 5 cm radius (reach's success radius), about 5 pixels of a 56² frame. The Λ mask's argument (report
§2.2.2) is that later actions must read the observation: only this mode makes the observation the images.

Perturbations (`perturb`): the goal or the object is moved mid-episode, for the reactivity measurements.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Self

os.environ.setdefault("MUJOCO_GL", "egl")  # headless on the CPU through Mesa; must precede the mujoco import

import numpy as np

from xr0_metaworld.tasks import check_tasks, instruction

CAMERA = "corner2"
OBS_MODES = ("state", "image")
EMBODIMENT_OF = {"state": "metaworld_sawyer", "image": "metaworld_sawyer_image"}
PERTURB_KINDS = ("goal", "object")
MIN_SHIFT = {"goal": 0.08, "object": 0.06}  # metres: a smaller move would hardly change what the arm should do
GOAL_MARKER = {"size": 0.05, "rgba": (1.0, 0.85, 0.0, 1.0)}  # image mode: a yellow ball of reach's 5 cm success radius


def state_of(obs: np.ndarray, mode: str = "state") -> np.ndarray:
    """Meta-World's (39,) observation → the embodiment's state: (10,) hand xyz, gripper opening, object, goal in
    `state` mode; (4,) hand xyz and gripper opening in `image` mode."""
    if mode == "image":
        return np.asarray(obs[0:4], np.float32)
    return np.concatenate([obs[0:4], obs[4:7], obs[36:39]]).astype(np.float32)


@dataclass(frozen=True)
class Perturbation:
    """What moved at the perturbation tick: the goal or the object, from `old` to `new` (xyz, metres)."""

    kind: str
    old: np.ndarray
    new: np.ndarray


class MetaWorldEnv:
    """A Meta-World task with a random layout per reset (from `seed`), the goal in the observation, and fast
    rendering (shadows, reflections and skybox off), frames flipped upright. Use as a context manager, or
    call close(): a renderer left to the garbage collector prints EGL errors at exit."""

    def __init__(self, task: str, seed: int = 0, image_size: int = 56, camera: str = CAMERA, max_steps: int = 150,
                 obs: str = "state"):
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        if obs not in OBS_MODES:
            raise ValueError(f"observation mode {obs!r}: use one of {list(OBS_MODES)}")
        self.task = check_tasks([task])[0]
        self.obs_mode = obs
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
        if obs == "image":
            import mujoco

            sid = mujoco.mj_name2id(env.model, mujoco.mjtObj.mjOBJ_SITE, "goal")
            env.model.site_size[sid] = GOAL_MARKER["size"]
            env.model.site_rgba[sid] = GOAL_MARKER["rgba"]
        self.env = env
        self._viewer_ready = False
        self.obs: np.ndarray | None = None
        self.steps = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def reset(self) -> np.ndarray:
        """New random layout; returns the state."""
        self.obs, _ = self.env.reset()
        self.steps = 0
        return self.state

    def step(self, action: np.ndarray) -> tuple[np.ndarray, bool]:
        """One 80 Hz control step with a (4,) action in [-1, 1]; returns (state, success)."""
        a = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
        self.obs, _, _, _, info = self.env.step(a)
        self.steps += 1
        return self.state, bool(info["success"])

    @property
    def state(self) -> np.ndarray:
        """The embodiment's state in this observation mode."""
        return state_of(self.obs, self.obs_mode)

    @property
    def full_state(self) -> np.ndarray:
        """(10,) hand, gripper, object and goal whatever the mode (what the VL answers are computed from)."""
        return state_of(self.obs, "state")

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
        return self.perturb("goal", rng).new

    def perturb(self, kind: str, rng: np.random.Generator) -> Perturbation:
        """Move the goal (anywhere in the task's goal space; tasks whose goal sits on the table keep its height) or
        the object (anywhere in the task's object space, at rest), at least MIN_SHIFT[kind] away when the space
        allows it (the farthest of 100 draws otherwise)."""
        if kind not in PERTURB_KINDS:
            raise ValueError(f"perturbation {kind!r}: use one of {list(PERTURB_KINDS)}")
        env = self.env
        if kind == "goal":
            old = np.asarray(env._target_pos, np.float64).copy()
            space = env.goal_space
            low, high = np.asarray(space.low, np.float64), np.asarray(space.high, np.float64)
            if high[2] - low[2] < 0.02:  # a table-top goal (push): its height is the object's, set at reset
                low[2] = high[2] = old[2]
        else:
            old = np.asarray(self.obs[4:7], np.float64).copy()
            space = env._random_reset_space
            low, high = np.asarray(space.low[:3], np.float64), np.asarray(space.high[:3], np.float64)
            low[2] = high[2] = old[2]
        draws = rng.uniform(low, high, size=(100, 3))
        dist = np.linalg.norm(draws - old, axis=1)
        far = np.flatnonzero(dist >= MIN_SHIFT[kind])
        new = draws[far[0]] if len(far) else draws[int(np.argmax(dist))]
        self.obs = self.obs.copy()
        if kind == "goal":
            env._target_pos = new
            env._set_pos_site("goal", new)
            self.obs[36:39] = new
        else:
            env._set_obj_xyz(new)
            self.obs[4:7] = env._get_pos_objects()
        return Perturbation(kind, old, np.asarray(self.obs[36:39] if kind == "goal" else self.obs[4:7]).copy())

    def counterfactual_obs(self, p: Perturbation) -> np.ndarray:
        """The (39,) observation as it would read had `p` not happened: the goal back in place, or the object shifted
        back by the perturbation's displacement (wherever it has been pushed since). What the scripted expert is
        asked, next to the real observation, to decide whether a command turned toward the new target."""
        cf = self.obs.copy()
        if p.kind == "goal":
            cf[36:39] = p.old
        else:
            cf[4:7] = self.obs[4:7] + (p.old - p.new)
        return cf

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None
