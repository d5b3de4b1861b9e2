"""Embodiment conformance, tasks, and the env wrapper (seeded layouts, observable goal, upright frames)."""
import numpy as np
import pytest
from xr0_metaworld.embodiment import MetaWorldSawyer
from xr0_metaworld.env import MetaWorldEnv
from xr0_metaworld.tasks import check_tasks, expert, instruction

import xr0.embodiments
from xr0.plugins import load_plugins
from xr0.registry import EMBODIMENTS


def test_embodiment_conforms_and_is_found_through_the_entry_point():
    xr0.embodiments.check(MetaWorldSawyer())
    assert "metaworld" in {p.name for p in load_plugins()}
    emb = xr0.embodiments.get("metaworld_sawyer")
    assert emb.action_dim == 4 and emb.state_dim == 10 and emb.cameras == ("corner2",)
    assert EMBODIMENTS.entry("metaworld_sawyer").origin == "xr0-metaworld"


def test_unknown_task_names_the_closest():
    with pytest.raises(ValueError, match="did you mean reach-v3"):
        check_tasks(["reach-v2"])
    assert "goal" in instruction("reach-v3")


def test_env_is_seeded_goal_observable_and_frames_are_upright():
    with MetaWorldEnv("reach-v3", seed=3, image_size=56) as env:
        s1 = env.reset()
        s2 = env.reset()
        frame = env.render()
        goal = env.move_goal(np.random.default_rng(0))
        assert np.allclose(env.state[7:10], goal)
    with MetaWorldEnv("reach-v3", seed=3, image_size=56) as env:
        assert np.allclose(env.reset(), s1)  # same seed, same layouts
    assert not np.allclose(s1[7:10], s2[7:10])  # a new layout per reset
    assert np.linalg.norm(s1[7:10]) > 0.5  # the goal is in the state, not zeroed
    assert frame.shape == (56, 56, 3) and frame.dtype == np.uint8
    # upright: the skybox is off, so the black background is at the top and the floor/table at the bottom
    assert frame[:8].mean() < 20 < frame[-8:].mean()


def test_expert_reaches_and_success_is_reported():
    with MetaWorldEnv("reach-v3", seed=0, max_steps=150) as env:
        env.reset()
        pol = expert("reach-v3")
        ok = False
        for _ in range(150):
            _, ok = env.step(pol.get_action(env.expert_obs()))
            if ok:
                break
        assert ok and env.steps < 150
