"""Fault tests on the executor + safety layer: NaN chunk, out-of-limit actions, late chunks, lost server."""
from __future__ import annotations

import numpy as np
import pytest
from xr0_deploy.executor import Executor, ExecutorConfig, LatencyWarning
from xr0_deploy.local import sim_policy
from xr0_deploy.protocol import Limits, PolicyUnavailable
from xr0_deploy.safety import Safety
from xr0_deploy.sim import SimArm, simulate


class Faulty:
    """The sim policy, with chosen requests (counted from 0) corrupted by `fault(chunk)` or raising."""

    def __init__(self, faults: dict):
        self.inner, self.faults, self.n = sim_policy(chunk_len=10), faults, 0

    def infer(self, obs, prefix=None, rtc=None):
        n, self.n = self.n, self.n + 1
        chunk = self.inner.infer(obs, prefix, rtc)
        fault = self.faults.get(n)
        return fault(chunk) if fault else chunk


def run(policy, d=2, ticks=40, max_delta=None, **cfg):
    arm = SimArm(dof=7, max_delta=max_delta)  # SimArm raises on any NaN / out-of-limit command
    ex = Executor(ExecutorConfig(mode=cfg.pop("mode", "async"), exec_steps=4, prefix_steps=4, keep_chunks=True,
                                 **cfg), Safety(arm.limits))
    return ex, simulate(ex, policy, arm, ticks, d), arm


def nan_chunk(c):
    c = c.copy()
    c[5, 2] = np.nan
    return c


def test_nan_chunk_is_rejected_and_the_arm_holds_its_last_safe_target():
    # one bad chunk is absorbed by the rest of the old one (a new request goes out at once); three in a row
    # exhaust it and the watchdog holds
    ex, trace, arm = run(Faulty({2: nan_chunk, 3: nan_chunk, 4: nan_chunk}))
    assert ex.events.counts["chunk_rejected"] == 3
    assert "non_finite" in next(e["detail"] for e in ex.events.events if e["kind"] == "chunk_rejected")
    assert not {2, 3, 4} & set(ex.chunks)
    held = [r for r in trace if r["held"] and r["tick"] >= 2]
    assert held and all("watchdog_hold" in r["events"] for r in held)
    # held ticks send nothing new: the arm's target stays the last safe action
    last_before = max(r["tick"] for r in trace if not r["held"] and r["tick"] < held[0]["tick"])
    assert arm.holds == len([r for r in trace if r["held"]])
    assert np.all(np.isfinite(np.stack(arm.sent)))
    assert trace[-1]["chunk_id"] is not None and trace[-1]["chunk_id"] > 4, "execution recovers"
    assert ex.last_target is not None and last_before < held[0]["tick"]


def test_slightly_out_of_limit_actions_are_clipped_far_ones_reject_the_chunk():
    push = lambda c: np.where(np.arange(7) == 0, 1.05, c)
    far = lambda c: np.where(np.arange(7) == 1, 3.0, c)
    ex, _, arm = run(Faulty({1: push, 3: far}))
    assert ex.events.counts["clipped"] == 1
    assert ex.events.counts["chunk_rejected"] == 1
    assert "out_of_range" in next(e["detail"] for e in ex.events.events if e["kind"] == "chunk_rejected")
    sent = np.stack(arm.sent)
    assert sent.max() <= 1.0 and sent.min() >= -1.0
    assert np.isclose(ex.chunks[1][:, 0], 1.0).sum() >= 6  # clipped to the limit (prefix rows excepted)


def test_late_chunk_holds_then_a_stale_chunk_is_dropped():
    lat = {3: 8, 5: 12}  # request 3 outlives the old chunk; request 5 arrives past its own last action
    with pytest.warns(LatencyWarning):
        ex, trace, _ = run(sim_policy(chunk_len=10), d=lambda n: lat.get(n, 2), ticks=80)
    assert ex.events.counts["watchdog_hold"] >= 1
    assert ex.events.counts["stale_chunk"] == 1
    assert 5 not in ex.chunks
    first = {}
    for r in trace:
        first.setdefault(r["chunk_id"], r)
    assert first[3]["index_in_chunk"] == 8  # still aligned: used from index Δt_inf
    assert max(r["chunk_id"] or 0 for r in trace) > 5, "execution recovers after the stale chunk"


def test_lost_server_holds_the_arm_and_retries():
    class Flaky:
        def __init__(self):
            self.inner, self.n = sim_policy(chunk_len=10), 0

        def infer(self, obs, prefix=None, rtc=None):
            self.n += 1
            if 3 <= self.n <= 5:
                raise PolicyUnavailable("connection refused")
            return self.inner.infer(obs, prefix, rtc)

    ex, trace, _ = run(Flaky())
    assert ex.events.counts["inference_failed"] == 3
    assert ex.events.counts["watchdog_hold"] >= 1
    assert trace[-1]["chunk_id"] is not None


def test_max_delta_bounds_each_step():
    ex, _, arm = run(sim_policy(chunk_len=10), max_delta=0.02)
    steps = np.abs(np.diff(np.stack(arm.sent), axis=0))
    assert steps.max() <= 0.02 + 1e-12
    assert ex.events.counts["rate_limited"] >= 1


def test_safety_rejects_wrong_shapes_and_limits_validate():
    s = Safety(Limits(np.full(3, -1.0), np.full(3, 1.0)))
    assert s.check_chunk(np.zeros((5, 4)))[0] is None
    assert s.check_chunk(np.zeros(5))[0] is None
    assert s.check_chunk(np.full((2, 3), np.inf))[1].startswith("non_finite")
    with pytest.raises(ValueError, match="low must be <="):
        Limits(np.ones(2), np.zeros(2))
    with pytest.raises(ValueError, match="mode must be one of"):
        ExecutorConfig(mode="fast")
