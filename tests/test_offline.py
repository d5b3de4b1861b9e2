"""`xr0 eval offline` from a lab's side: recorded episodes of a registered robot → two checkpoints compared through
the real CLI, the serving path's numbers, discontinuities found where the recording jumps."""
from __future__ import annotations

import json

import numpy as np
import pytest

from xr0.cli import main
from xr0.offline import discontinuities, parse_selection

CHUNK = 6
JUMP_AT = 7  # episode 1's goal-like state dims jump here


def episodes(n_eps: int = 3, steps: int = 14) -> list[dict]:
    """calvin episodes (7-D delta actions in [-1, 1], 8-D state, two cameras at a native 30×40): smooth motion, and
    in episode 1 two state dims that stay constant except one jump at JUMP_AT (a goal that moved)."""
    rng = np.random.default_rng(4)
    eps = []
    for e in range(n_eps):
        t = np.arange(steps)[:, None]
        pos = 0.3 * np.sin(0.3 * t + e) + 0.01 * rng.normal(size=(steps, 6))
        goal = np.full((steps, 2), 0.2 + 0.1 * e)
        if e == 1:
            goal[JUMP_AT:] += 0.5
        state = np.column_stack([pos, goal]).astype(np.float32)
        actions = np.clip(np.column_stack([np.diff(pos, axis=0, append=pos[-1:]) * 5, np.sign(np.sin(0.2 * t))]),
                          -1, 1).astype(np.float32)
        frames = lambda k: [np.full((30, 40, 3), (30 * e + 11 * i + k) % 255, np.uint8) for i in range(steps)]  # noqa
        eps.append({"state": state, "actions": actions, "instruction": "open the drawer",
                    "images": {"static": frames(0), "gripper": frames(50)}})
    return eps


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    from xr0.data.writer import write_episodes
    from xr0.run import fit

    root = tmp_path_factory.mktemp("offline")
    card = write_episodes(episodes(), root / "shards", "calvin", "calvin_heldout", chunk=CHUNK, progress=False,
                          image_format="png")  # lossless: the test feeds the same frames by hand
    data = f"data={{name: webdataset, card: {card}, chunk: {CHUNK}, batch_size: 2, num_workers: 0, image_size: 28}}"
    ckpts = []
    for steps, seed in ((12, 0), (16, 1)):  # a high learning rate: chunks that depend on the observation
        out = fit("recipes/tiny/stage2.yaml", ["stage.init_from=null", f"trainer.max_steps={steps}", f"_chunk={CHUNK}",
                                                "stage.optim.lr=1e-2", f"run.seed={seed}", "embodiment=calvin", data,
                                                f"run.out_dir={root / f'run{seed}'}"])
        ckpts.append(str(out / "checkpoints" / "last.ckpt"))
    return root, card, ckpts


def test_discontinuities_are_the_jumps_not_the_motion():
    t = np.arange(20)[:, None]
    states = np.column_stack([0.05 * t, np.sin(0.2 * t), np.full((20, 1), 0.3)])  # ramp, wave, a constant goal
    states[12, 2] = states[13:, 2] = 0.8  # the goal moves at step 12
    assert np.flatnonzero(discontinuities(states)).tolist() == [12]
    states[5:, 0] += 1.0  # the ramping dim teleports at step 5
    assert np.flatnonzero(discontinuities(states)).tolist() == [5, 12]
    assert parse_selection("1-3,7") == {1, 2, 3, 7} and parse_selection("all") is None
    with pytest.raises(ValueError, match="ranges like"):
        parse_selection("first")


def test_two_checkpoints_compared_through_the_serving_path(lab, tmp_path, capsys):
    from xr0_deploy.local import load_local

    _, card, (a, b) = lab
    out = tmp_path / "ab"
    assert main(["eval", "offline", a, b, a, "--data", str(card), "--episodes", "0-1", "--exec-steps", "2",
                 "--delays", "0", "2", "--out", str(out)]) == 0
    md = capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    assert res["episodes"] == [0, 1] and res["delays"] == [0, 2]
    labels = list(res["checkpoints"])
    assert labels == ["run0", "run1", "run0#2"]
    # the action error is the served chunk against the recorded actions t … t+T−1, in robot units
    pol = load_local(a, noise_seed=0)
    ep1 = episodes()[1]
    t = 9
    obs = {"state": ep1["state"][t], "prompt": "open the drawer",
           "images": {"static": ep1["images"]["static"][t], "gripper": ep1["images"]["gripper"][t]}}
    recorded = ep1["actions"][t:t + CHUNK]  # 5 steps left in the episode
    want = np.abs(pol.infer(obs)[:len(recorded)] - recorded).mean(axis=1)
    got = np.asarray(res["results"]["run0"]["episodes"][1]["err"][t], np.float64)
    np.testing.assert_allclose(got[:len(want)], want, rtol=1e-5, atol=1e-6)
    before = {"state": ep1["state"][t - 1], "prompt": "open the drawer",
              "images": {"static": ep1["images"]["static"][t - 1], "gripper": ep1["images"]["gripper"][t - 1]}}
    assert np.abs(pol.infer(obs) - pol.infer(before)).max() > 1e-4  # so the check tells neighbouring steps apart
    # the jump at d=2: the chunk served T_e=2 steps earlier runs; the new one gets its actions 2, 3 as the committed
    # prefix; jump = mean |new[2] − old[3]|
    o = t - 2
    old = pol.infer({"state": ep1["state"][o], "prompt": "open the drawer",
                     "images": {"static": ep1["images"]["static"][o], "gripper": ep1["images"]["gripper"][o]}})
    new = pol.infer(obs, old[2:4])
    np.testing.assert_allclose(new[:2], old[2:4], atol=1e-4)  # the committed actions come back as sent
    got = res["results"]["run0"]["episodes"][1]["jump"]["2"][t - 2]  # one value per step from T_e on
    assert got == pytest.approx(np.abs(new[2] - old[3]).mean(), rel=1e-5, abs=1e-7)
    # the goal jump of episode 1 is found and followed; episode 0 has none
    assert [e["discontinuities"] for e in res["results"]["run0"]["episodes"]] == [0, 1]
    assert "response after 1 discontinuities" in md
    # the same checkpoint twice differs by exactly nothing; another one does not
    effects = md[md.index("### differences to run0"):]
    assert "| checkpoint | run0#2 − run0 | +0.0000 [+0.0000, +0.0000] |" in effects
    row = next(line for line in effects.splitlines() if "run1 − run0" in line)
    assert "+0.0000 [+0.0000, +0.0000] | +0.0000 [+0.0000, +0.0000]" not in row
    assert (out / "results.md").read_text().startswith("## offline evaluation on 'calvin_heldout'")


def test_wrong_robot_and_empty_selection_are_one_line_errors(lab, capsys):
    root, card, (a, _) = lab
    assert main(["eval", "offline", a, "--data", str(card), "--episodes", "40-49"]) == 2
    assert "no episode selected" in capsys.readouterr().err
    from xr0.data.writer import write_episodes

    eps = episodes(1)
    for ep in eps:
        ep["images"] = {"agentview": ep["images"]["static"], "wrist": ep["images"]["gripper"]}
    other = write_episodes(eps, root / "libero", "libero_franka", "libero_heldout", chunk=CHUNK, progress=False)
    assert main(["eval", "offline", a, "--data", str(other)]) == 2
    err = capsys.readouterr().err
    assert "trained for embodiment 'calvin'" in err and err.count("\n") == 1
