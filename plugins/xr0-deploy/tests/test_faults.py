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


# ---- configuration errors at startup; backoff after a lost server; held ticks counted by reason
class Counting:
    """The sim policy, counting inferences; `metadata` optional (a wrapper that declares nothing)."""

    def __init__(self, chunk_len=10, declare=True):
        self.inner, self.calls = sim_policy(chunk_len=chunk_len), 0
        if declare:
            self.metadata = self.inner.metadata

    def infer(self, obs, prefix=None, rtc=None):
        self.calls += 1
        return self.inner.infer(obs, prefix, rtc)


@pytest.mark.parametrize("exec_steps, prefix, needle", [
    (12, 0, r"exec_steps \(T_e=12\) exceeds the policy's chunk length T=10; use --exec-steps <= 10"),
    (4, 8, r"the async prefix runs past the chunk: T_e=4 \+ Δt_c=8 > T=10; use --prefix <= 6"),
])
def test_settings_that_cannot_fit_the_chunk_fail_before_the_first_tick(exec_steps, prefix, needle):
    from xr0_deploy.executor import ExecutorConfigError
    from xr0_deploy.runtime import RealTimeRunner

    arm = SimArm(dof=7)
    policy = Counting()
    ex = Executor(ExecutorConfig(mode="async", exec_steps=exec_steps, prefix_steps=prefix), Safety(arm.limits))
    with pytest.raises(ExecutorConfigError, match=needle):
        simulate(ex, policy, arm, 40, 2)
    assert policy.calls == 0 and ex.trace == [] and arm.sent == []  # nothing ran
    # the real-time runner learns T from its warm-up inference when the policy declares nothing
    policy = Counting(declare=False)
    ex = Executor(ExecutorConfig(mode="async", exec_steps=exec_steps, prefix_steps=prefix), Safety(arm.limits))
    t = [0.0]
    runner = RealTimeRunner(ex, arm, policy, hz=30, clock=lambda: t[0], sleep=lambda dt: t.__setitem__(0, t[0] + dt))
    with pytest.raises(ExecutorConfigError, match=needle):
        runner.run(20)
    assert policy.calls == 1 and ex.trace == [] and arm.sent == []  # the warm-up only


def test_cli_refuses_an_exec_step_count_beyond_the_chunk_in_one_line(tmp_path):
    import subprocess
    import sys

    trace = tmp_path / "t.jsonl"
    res = subprocess.run([sys.executable, "-m", "xr0.cli", "deploy", "simulate", "--latency-steps", "2",
                          "--chunk-len", "6", "--exec-steps", "8", "--trace", str(trace)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert lines == [lines[0]] and "exec_steps (T_e=8) exceeds the policy's chunk length T=6" in lines[0]
    assert not trace.exists()


class Outage:
    """The sim policy with the server gone for requests made in ticks [down, up)."""

    def __init__(self, down, up):
        self.inner, self.down, self.up, self.k, self.request_ticks = sim_policy(chunk_len=10), down, up, 0, []

    def infer(self, obs, prefix=None, rtc=None):
        self.request_ticks.append(self.k)
        if self.down <= self.k < self.up:
            raise PolicyUnavailable("connection refused")
        return self.inner.infer(obs, prefix, rtc)


def _outage_run(down, up, ticks, seed=0):
    arm = SimArm(dof=7)
    ex = Executor(ExecutorConfig(mode="async", exec_steps=4, prefix_steps=4, retry_max_ticks=30, retry_seed=seed),
                  Safety(arm.limits))
    policy = Outage(down, up)

    class Clocked:  # simulate has no per-tick hook: the tick is the executor's trace length
        def infer(self, obs, prefix=None, rtc=None):
            policy.k = len(ex.trace) - 1
            return policy.infer(obs, prefix, rtc)

    trace = simulate(ex, Clocked(), arm, ticks, 1)
    return ex, trace, policy.request_ticks


def test_retries_after_a_lost_server_back_off_jittered_and_bounded_and_holds_are_counted():
    ex, trace, asked = _outage_run(down=10, up=400, ticks=400)
    failed = [k for k in asked if 10 <= k < 400]
    gaps = np.diff(failed)
    # without backoff a request went out every tick (387 over the outage); now the gaps double up to the cap
    assert len(failed) < 25, failed
    assert list(gaps[:4]) == sorted(gaps[:4]) and gaps[0] <= 3 and gaps[3] >= 5
    assert gaps.max() <= 30 + 1 and gaps[-8:].min() >= 15 + 1  # capped at 30 ticks, jittered into [15, 30]
    assert len(set(gaps[-8:])) > 1, "jittered, not a fixed period"
    _, _, other = _outage_run(down=10, up=400, ticks=400, seed=1)
    assert other != asked, "another arm (seed) retries at other ticks"
    held = [r for r in trace if r["held"]]
    assert sum(ex.hold_reasons.values()) == len(held)
    assert ex.hold_reasons["wait_inference"] == 1  # the startup tick
    assert ex.hold_reasons["server_unavailable"] == len(held) - 1
    assert all(r["hold_reason"] == "server_unavailable" for r in held[1:])
    assert ex.events.counts["retry_backoff"] >= 1


def test_backoff_resets_once_the_server_answers_again():
    ex, trace, asked = _outage_run(down=10, up=60, ticks=160)
    after = [k for k in asked if k >= 60]
    assert after and after[0] <= 60 + 31  # the first retry past the outage succeeds
    recovered = next(r["tick"] for r in trace if r["tick"] > after[0] and not r["held"])
    assert ex.failures_in_row == 0 and ex.retry_at <= after[0] + 1
    assert not any(r["held"] for r in trace if r["tick"] > recovered + 2), "steady execution again"
