"""The simulated clock of `xr0 sim eval`, with a constant-chunk stand-in policy (no model): idle ticks
and chunk alignment must follow the executor's timelines exactly."""
import numpy as np
from xr0_metaworld.env import MetaWorldEnv
from xr0_metaworld.evaluate import EvalConfig, format_rows, rollout_policy, summarize


class ConstantChunk:
    """Always the same (T, 4) chunk; records what the executor asked for."""

    def __init__(self, T=8):
        self.chunk = np.tile([[0.3, 0.0, 0.0, 0.0]], (T, 1))
        self.prefixes = []

    def infer(self, obs, prefix=None, rtc=None):
        assert obs["images"]["corner2"].shape == (28, 28, 3) and obs["state"].shape == (10,)
        self.prefixes.append(None if prefix is None else len(prefix))
        return self.chunk


def _run(mode, d, steps=40):
    cfg = EvalConfig(mode=mode, latency=d, exec_steps=4, max_steps=steps)
    pol = ConstantChunk()
    with MetaWorldEnv("reach-v3", seed=0, image_size=28, max_steps=steps) as env:
        r = rollout_policy(env, pol, cfg, np.random.default_rng(0))
    return r, pol


def test_sync_idles_d_ticks_per_chunk_async_only_at_the_start():
    r, pol = _run("sync", 2)
    # 40 ticks: idle 2, run 4, idle 2, ... → 2 idle ticks in every 6
    assert r["held"] == 14 and not r["success"]
    assert set(pol.prefixes) == {None}
    r, pol = _run("async", 2)
    assert r["held"] == 2  # only while the very first chunk is inferred
    assert pol.prefixes[0] is None and set(pol.prefixes[1:]) == {2}  # Δt_c defaults to max(d, 1)
    r, _ = _run("async", 0)
    assert r["held"] == 0  # d = 0: the chunk is used on the tick it was requested


def test_summary_counts_idle_ticks_in_throughput():
    rows = [summarize([{"success": True, "steps": 80, "success_at": 80, "held": 20, "boundary_jerk": 0.1,
                        "jerk": 0.05}], "p", EvalConfig())]
    assert rows[0]["throughput_per_min"] == 60.0  # 1 success in 80 ticks at 80 Hz = 1 per simulated second
    assert rows[0]["idle_frac"] == 0.25
    assert "| p | async | 2 | 1 | 100% |" in format_rows(rows)
