"""What `xr0 sim eval` writes besides the table: a chunk plot per sheet episode (every action dimension named by the
embodiment, in robot units, the committed prefix shaded, against the expert's action on the tick each step ran),
and files named by slugs while titles keep the proper name."""
import re

import numpy as np
import pytest
from xr0_deploy.executor import Request
from xr0_deploy.protocol import RTCSpec
from xr0_metaworld.env import MetaWorldEnv
from xr0_metaworld.evaluate import EvalConfig, chunk_against_expert, chunk_plot, evaluate, rollout_policy
from xr0_metaworld.tasks import expert

pytestmark = pytest.mark.filterwarnings("ignore:Constant\\(s\\) may be too high")  # the scripted expert's own

A = np.array([0.3, -0.1, 0.05, 0.7])  # one command per dimension, so a swapped axis shows


class ConstantChunk:
    def infer(self, obs, prefix=None, rtc=None):
        return np.tile(A, (8, 1))


def test_the_chunk_is_aligned_with_the_ticks_its_steps_ran_by_hand():
    rec = lambda k, c, i: {"tick": k, "chunk_id": c, "index_in_chunk": i}
    trace = [rec(0, None, None), rec(1, None, None), rec(2, 0, 2), rec(3, 0, 3), rec(4, 1, 2), rec(5, 1, 3)]
    first, second = np.zeros((6, 4)), np.arange(24.0).reshape(6, 4)
    asked = {0: (Request(0, 0, None, None, 0), first), 1: (Request(1, 2, np.ones((2, 4)), None, 2), second)}
    truth = np.arange(28.0).reshape(7, 4) + 100  # the expert's action on ticks 0..6
    r = chunk_against_expert(trace, asked, truth)
    assert r["tick"] == 2 and r["prefix"] == 2  # step j ran on tick 2 + j; 2 committed steps
    np.testing.assert_array_equal(r["pred"], second)
    np.testing.assert_array_equal(r["valid"], [True] * 5 + [False])  # tick 7: the episode had ended
    np.testing.assert_array_equal(r["true"][:5], truth[2:7])
    assert np.isnan(r["true"][5]).all()
    rtc = {0: asked[0], 1: (Request(1, 2, np.ones((4, 4)), RTCSpec(frozen_steps=2), 2), second)}
    assert chunk_against_expert(trace, rtc, truth)["prefix"] == 2  # RTC commits only what runs before arrival
    assert chunk_against_expert(trace[:4], asked, truth)["tick"] == 0  # one chunk only: that one
    assert chunk_against_expert(trace[:2], asked, truth) is None


def test_a_rollouts_chunk_plot_shows_every_dimension_against_the_expert_in_robot_units():
    cfg = EvalConfig(mode="async", latency=2, exec_steps=4, max_steps=12)
    got = []
    with MetaWorldEnv("reach-v3", seed=3, image_size=28, max_steps=12) as env:
        rollout_policy(env, ConstantChunk(), cfg, np.random.default_rng(0), chunks=got)
    r = got[0]
    # the replay: held for d = 2 ticks, then A on every tick; the expert asked on each tick's observation
    want = []
    with MetaWorldEnv("reach-v3", seed=3, image_size=28, max_steps=12) as env:
        env.reset()
        for k in range(12):
            want.append(np.clip(expert("reach-v3").get_action(env.expert_obs()), -1, 1))
            env.step(np.zeros(4) if k < 2 else A)
    # the first chunk runs from tick 2 (the arm waited for it); the second is asked at tick 6 with the first one's
    # steps 4, 5 committed (Δt_c = 2), so its step j runs on tick 6 + j, and the episode ends after tick 11
    assert r["tick"] == 6 and r["prefix"] == 2
    np.testing.assert_array_equal(r["valid"], [True] * 6 + [False] * 2)
    np.testing.assert_allclose(r["true"][:6], np.asarray(want)[6:12])
    fig = chunk_plot(r, ["dx", "dy", "dz", "grip"], "xr0 tiny (stage 3, Λ) reach-v3 async d=2")
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["dx", "dy", "dz", "grip"]  # the gripper too
    for j, ax in enumerate(panels):
        expert_line, predicted = ax.lines
        np.testing.assert_allclose(predicted.get_ydata(), A[j])  # the commands as sent: robot units
        np.testing.assert_allclose(expert_line.get_ydata(), np.asarray(want)[6:12, j])
        assert ax.patches[0].get_x() == -0.5 and ax.patches[0].get_width() == 2  # the committed prefix shaded
    assert "Λ" in fig._suptitle.get_text()


def test_eval_files_are_slugs_and_each_sheet_episode_has_its_chunk_plot(tmp_path):
    cfg = EvalConfig(mode="async", latency=2, exec_steps=4, max_steps=12, sheets=1, image_size=28)
    evaluate("tiny", ["reach-v3"], 2, 0, cfg, out=tmp_path, policy=ConstantChunk(), label="xr0 tiny (stage 3, Λ)",
             progress=False)
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["chunks/xr0_tiny_stage_3_lambda_async_d2_reach-v3_ep0.png",
                     "sheets/xr0_tiny_stage_3_lambda_async_d2_reach-v3_ep0.png",
                     "xr0_tiny_stage_3_lambda_async_d2.json"]
    assert all(re.fullmatch(r"[A-Za-z0-9._/-]+", f) for f in files)


def test_the_demos_tensorboard_tags_are_slugs_and_carry_the_chunk_plots(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from xr0_metaworld.demo import log_rows

    cfg = EvalConfig(mode="async", latency=2, exec_steps=4, max_steps=12, sheets=1, image_size=28)
    row = evaluate("tiny", ["reach-v3"], 1, 0, cfg, out=tmp_path / "eval", policy=ConstantChunk(),
                   label="xr0 tiny (stage 3, Λ)", progress=False)
    log_rows([row], "| table |", tmp_path / "tb", tmp_path / "eval" / "chunks")
    tags = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0}).Reload().Tags()
    assert tags["scalars"] == ["eval/success/xr0_tiny_stage_3_lambda_async_d2",
                               "eval/throughput_per_min/xr0_tiny_stage_3_lambda_async_d2"]
    assert tags["images"] == ["eval/chunk/xr0_tiny_stage_3_lambda_async_d2_reach-v3_ep0"]
