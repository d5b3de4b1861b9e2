"""Reactivity: the reaction-time definition on hand-made ticks, then closed loop through the executor with stand-in
policies that do and do not read the moved goal; the image observation mode; moving the object."""
import numpy as np
import pytest
from xr0_metaworld.env import MIN_SHIFT, MetaWorldEnv
from xr0_metaworld.evaluate import EvalConfig, evaluate, format_rows, rollout_policy
from xr0_metaworld.reactivity import ReactionProbe, informative, turns_toward_new

NEW, OLD = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])  # expert directions: 90° apart, informative
TOWARD_NEW, TOWARD_OLD = np.array([0.8, 0.1, 0.0]), np.array([0.1, 0.8, 0.0])


def test_reaction_time_by_hand():
    assert informative(NEW, OLD) and not informative(NEW, NEW + [0, 0.1, 0]) and not informative(NEW, 0 * OLD)
    assert turns_toward_new(TOWARD_NEW, NEW, OLD) and not turns_toward_new(TOWARD_OLD, NEW, OLD)
    assert not turns_toward_new(np.zeros(3), NEW, OLD)  # a held tick is no reaction
    p = ReactionProbe(tick=10)
    p.perturbed = True
    p.record(10, TOWARD_NEW, NEW, NEW)  # uninformative: the move does not matter yet (skipped)
    for t, cmd in zip(range(11, 20), [TOWARD_OLD, TOWARD_OLD, TOWARD_NEW, TOWARD_OLD,  # a run of 1 breaks
                                      TOWARD_NEW, TOWARD_NEW, np.zeros(3), TOWARD_NEW, TOWARD_NEW]):
        p.record(t, cmd, NEW, OLD)
    p.record(20, TOWARD_NEW, NEW, OLD)
    # informative from t_inf = 11; runs: 13 (1 tick), 15-16 (2, a held tick breaks it), 18-20 (3): reaction 18 − 11
    assert p.result(success_at=None) == {"perturbed": True, "reaction": 7.0, "post_success": False}
    q = ReactionProbe(tick=10, k_run=3)
    q.perturbed = True
    q.record(10, TOWARD_OLD, NEW, OLD)
    q.record(11, TOWARD_NEW, NEW, OLD)
    assert q.result(success_at=13)["reaction"] == 1.0  # a success on the new target closes the open run
    assert np.isnan(q.result(success_at=None)["reaction"])
    assert ReactionProbe(tick=10).result(success_at=5)["perturbed"] is False  # done before the move


class GoalSeeker:
    """A state-mode stand-in: chunks of P-control toward the goal in the state it is given (reads the moved goal),
    or toward the goal of its first call (`stale`: ignores every later observation of the goal)."""

    def __init__(self, stale: bool, T: int = 8):
        self.stale, self.T, self.goal = stale, T, None

    def infer(self, obs, prefix=None, rtc=None):
        s = obs["state"]
        if self.goal is None or not self.stale:
            self.goal = s[7:10].copy()
        step = np.clip(10 * (self.goal - s[:3]), -1, 1)
        return np.tile(np.append(step, 0.0), (self.T, 1))


def _reach(policy, mode="async", d=2, K=10, steps=70):
    cfg = EvalConfig(mode=mode, latency=d, exec_steps=4, max_steps=steps, perturb_at=K)
    out = []
    with MetaWorldEnv("reach-v3", seed=2, image_size=28, max_steps=steps) as env:
        for e in range(3):
            out.append(rollout_policy(env, policy(), cfg, np.random.default_rng([2, e])))
    return out


def test_a_policy_reading_the_moved_goal_reacts_and_one_that_ignores_it_never_does():
    fresh = _reach(lambda: GoalSeeker(stale=False))
    stale = _reach(lambda: GoalSeeker(stale=True))
    assert all(r["perturbed"] for r in fresh + stale)
    # the timelines by hand (T_e = 4, the move at K = 10, which the request of that very tick already sees):
    # async d=2: requests at 0, 6, 10 (every T_e after the chunk's origin); the tick-10 chunk arrives at 12 and runs
    #   from index 2 (indices 0-1 are the committed prefix the old chunk ran at 10, 11) → 12 − 10 = 2
    # async d=0: requests at 0, 4, 8, 12, answered at once; index 0 of the tick-12 chunk is the committed prefix
    #   (Δt_c = max(d, 1) = 1), so its first own action runs at 13 → 3
    # sync d=2: request, idle 2, run 4: requests at 0, 6, 12 → the chunk runs from 14 → 4
    # sync d=4: requests at 0, 8 (before the move), 16 → runs from 20 → 10
    assert [r["reaction"] for r in fresh] == [2.0] * 3
    assert [r["reaction"] for r in _reach(lambda: GoalSeeker(stale=False), d=0)] == [3.0] * 3
    assert [r["reaction"] for r in _reach(lambda: GoalSeeker(stale=False), mode="sync", d=2)] == [4.0] * 3
    assert [r["reaction"] for r in _reach(lambda: GoalSeeker(stale=False), mode="sync", d=4)] == [10.0] * 3
    assert all(r["post_success"] for r in fresh)
    assert all(np.isnan(r["reaction"]) and not r["post_success"] for r in stale)

def test_expert_row_reacts_at_once_and_the_table_says_so():
    cfg = EvalConfig(max_steps=90, perturb_at=10)
    rows = [evaluate(kind, ["reach-v3"], 2, 1000, cfg, progress=False) for kind in ("expert", "zero")]
    assert rows[0]["reaction_ticks"] == 0.0 and rows[0]["reacted"] == 1.0 and rows[0]["post_success"] == 1.0
    assert np.isnan(rows[1]["reaction_ticks"]) and rows[1]["reacted"] == 0.0 and rows[1]["post_success"] == 0.0
    md = format_rows(rows)
    assert "| reaction (ticks) | reacted | success after move |" in md and "| 0.0 | 100% | 100% |" in md
    with pytest.raises(ValueError, match="perturbations are defined for"):
        evaluate("expert", ["drawer-open-v3"], 1, 1000, cfg, progress=False)


def test_image_mode_hides_goal_and_object_from_the_state_and_shows_the_goal():
    yellow = lambda f: int(((f[..., 0] > 150) & (f[..., 1] > 120) & (f[..., 2] < 90)).sum())
    with MetaWorldEnv("push-v3", seed=3, image_size=56, obs="image") as img, \
            MetaWorldEnv("push-v3", seed=3, image_size=56) as st:
        s_img, s_st = img.reset(), st.reset()
        assert s_img.shape == (4,) and np.allclose(s_img, s_st[:4]) and img.full_state.shape == (10,)
        assert yellow(img.render()) >= 3 and yellow(st.render()) == 0  # the goal marker, in image mode only
        before = img.expert_obs()[4:7].copy()
        moved = img.perturb("object", np.random.default_rng(0))
        assert np.linalg.norm(moved.new - before) >= MIN_SHIFT["object"] and np.allclose(moved.old, before)
        assert np.allclose(img.expert_obs()[4:7], moved.new)
        assert np.allclose(img.counterfactual_obs(moved)[4:7], before)  # as if nothing had moved
