"""Trace tests (issue 6): the executor's timelines, checked tick by tick on the simulated arm."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
from xr0_deploy.executor import Executor, ExecutorConfig, LatencyWarning, PrefixRangeWarning
from xr0_deploy.local import sim_policy
from xr0_deploy.protocol import RTCSpec
from xr0_deploy.safety import Safety
from xr0_deploy.sim import SimArm, read_trace, simulate, write_trace

T, TE, PREFIX = 10, 4, 4


def run(mode: str, d, ticks: int = 60, prefix: int = PREFIX, **cfg):
    arm = SimArm(dof=7)
    ex = Executor(ExecutorConfig(mode=mode, exec_steps=TE, prefix_steps=prefix, keep_chunks=True, **cfg),
                  Safety(arm.limits))
    trace = simulate(ex, sim_policy(chunk_len=T), arm, ticks, d)
    return ex, trace, arm


def first_use(trace):
    """chunk id -> first trace record that executes it."""
    out = {}
    for r in trace:
        if r["chunk_id"] is not None and r["chunk_id"] not in out:
            out[r["chunk_id"]] = r
    return out


@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_async_never_idles_and_starts_new_chunks_at_index_d(d):
    with warnings.catch_warnings():
        warnings.simplefilter("error", LatencyWarning)  # Δt_c ≥ d: no latency warning allowed
        ex, trace, arm = run("async", d)
    startup = [r["tick"] for r in trace if r["held"]]
    assert startup == list(range(d)), "only the first inference may idle the arm"
    firsts = first_use(trace)
    assert len(firsts) >= 8
    for cid, rec in firsts.items():
        req = ex.requests[cid]
        if req.origin is None:  # the startup chunk runs from index 0
            assert rec["index_in_chunk"] == 0
            continue
        assert rec["index_in_chunk"] == d
        assert rec["tick"] == req.tick + d
        assert rec["inference_finished"] == cid
    assert ex.events.counts.get("watchdog_hold", 0) == 0
    assert len(arm.sent) == len(trace) - d


@pytest.mark.parametrize("d", [2, 4])
def test_async_prefix_is_the_old_chunks_actions_and_is_what_runs(d):
    ex, trace, _ = run("async", d)
    by_tick = {r["tick"]: r for r in trace}
    checked = 0
    for cid, req in ex.requests.items():
        if req.prefix is None or cid not in ex.chunks:
            continue
        old_id = by_tick[req.tick]["chunk_id"]
        old, j = ex.chunks[old_id], by_tick[req.tick]["index_in_chunk"]
        np.testing.assert_array_equal(req.prefix, old[j:j + PREFIX])  # prefix = old actions T_e … T_e+Δt_c−1
        assert j == TE
        np.testing.assert_allclose(ex.chunks[cid][:PREFIX], req.prefix)
        for i in range(d):  # during inference the arm runs exactly the committed prefix
            np.testing.assert_allclose(by_tick[req.tick + i]["action"], req.prefix[i])
        checked += 1
    assert checked >= 5


def test_model_honours_the_prefix_without_the_executor_overwriting_it():
    pol = sim_policy(chunk_len=T)
    obs = {"state": np.zeros(7)}
    old = pol.infer(obs)
    new = pol.infer(obs, old[4:7])
    np.testing.assert_allclose(new[:3], old[4:7], atol=1e-6)
    assert not np.allclose(new[3:6], old[7:10])  # the rest is a fresh prediction


class IgnoresPrefix:
    """A policy that answers every request with a fresh random chunk, whatever prefix it is sent: only the executor
    can keep the committed actions."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)

    def infer(self, obs, prefix=None, rtc=None):
        return self.rng.uniform(-0.8, 0.8, (T, 7))


@pytest.mark.parametrize("mode, d, committed", [("async", 2, PREFIX), ("async", 4, PREFIX), ("rtc", 3, 3)])
def test_committed_actions_run_even_when_the_policy_ignores_the_prefix(mode, d, committed):
    """Async: the prefix was promised to the arm, so the new chunk's first Δt_c actions are overwritten with it.
    RTC: only the actions that ran before the chunk arrived (its frozen steps) are kept; the rest stays the model's."""
    arm = SimArm(dof=7)
    ex = Executor(ExecutorConfig(mode=mode, exec_steps=TE, prefix_steps=PREFIX, keep_chunks=True), Safety(arm.limits))
    trace = simulate(ex, IgnoresPrefix(), arm, 60, d)
    by_tick = {r["tick"]: r for r in trace}
    checked = 0
    for cid, req in ex.requests.items():
        if req.prefix is None or cid not in ex.chunks:
            continue
        n = min(committed, len(req.prefix))
        np.testing.assert_array_equal(ex.chunks[cid][:n], req.prefix[:n])
        if len(req.prefix) > n:  # RTC's guidance target beyond the frozen steps is not copied in
            assert not np.allclose(ex.chunks[cid][n:len(req.prefix)], req.prefix[n:])
        for i in range(n):  # what the arm ran around the switch is the committed action, tick by tick
            if req.tick + i in by_tick and by_tick[req.tick + i]["action"] is not None:
                np.testing.assert_allclose(by_tick[req.tick + i]["action"], req.prefix[i])
        checked += 1
    assert checked >= 5


@pytest.mark.parametrize("d", [1, 3])
def test_sync_idles_exactly_the_inference_ticks(d):
    ex, trace, _ = run("sync", d, ticks=50)
    held = [r["tick"] for r in trace if r["held"]]
    expected = []
    for req in ex.requests.values():
        expected += list(range(req.tick, min(req.tick + d, len(trace))))
    assert held == expected
    for r in trace:  # each chunk runs T_e actions from index 0
        if not r["held"]:
            assert 0 <= r["index_in_chunk"] < TE
    assert all(req.prefix is None for req in ex.requests.values())
    assert set(ex.events.counts) == {"wait_inference"}


def test_latency_beyond_prefix_warns_and_adapt_grows_the_prefix():
    with pytest.warns(LatencyWarning, match="exceeds the prefix"):
        ex, trace, _ = run("async", 3, prefix=2)
    assert ex.events.counts["latency_exceeds_prefix"] >= 1
    assert first_use(trace)[3]["index_in_chunk"] == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error", LatencyWarning)
        ex, _, _ = run("async", 3, prefix=2, adapt_prefix=True)
    assert ex.prefix_steps == 3
    assert ex.events.counts["prefix_adapted"] == 1
    assert max(len(r.prefix) for r in ex.requests.values() if r.prefix is not None) == 3


def test_adapt_prefix_never_grows_past_the_trained_maximum_and_says_so_once():
    """Latency 9 ticks, T = 16, T_e = 4: adapt_prefix would send 9 committed actions; a policy trained with at most
    6 gets 6, and one warning naming both numbers."""
    def drive(max_prefix):
        arm = SimArm(dof=7)
        ex = Executor(ExecutorConfig(mode="async", exec_steps=4, prefix_steps=2, adapt_prefix=True, keep_chunks=True),
                      Safety(arm.limits))
        policy = sim_policy(chunk_len=16)
        policy.max_prefix = max_prefix  # what load_local reads from the checkpoint
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            simulate(ex, policy, arm, 120, 9)
        sent = max(len(r.prefix) for r in ex.requests.values() if r.prefix is not None)
        return ex, sent, [w for w in seen if issubclass(w.category, PrefixRangeWarning)]

    ex, sent, warned = drive(None)  # unknown training range: grows to the latency
    assert (ex.prefix_steps, sent, warned) == (9, 9, [])
    ex, sent, warned = drive(6)
    assert ex.max_prefix == 6 and ex.prefix_steps == 6 and sent == 6
    assert len(warned) == 1 and ex.events.counts["prefix_at_trained_max"] == 1  # once, though every chunk is late
    msg = str(warned[0].message)
    assert "Δt_inf=9" in msg and "trained with at most 6 committed actions" in msg and "stays at 6" in msg


def test_a_hand_set_prefix_past_the_trained_maximum_is_warned_about_at_start():
    arm = SimArm(dof=7)
    ex = Executor(ExecutorConfig(mode="async", exec_steps=4, prefix_steps=5), Safety(arm.limits))
    policy = sim_policy(chunk_len=T)
    policy.max_prefix = 3
    with pytest.warns(PrefixRangeWarning, match="Δt_c=5 is longer than the 3 committed actions"):
        simulate(ex, policy, arm, 5, 1)
    assert ex.events.counts["prefix_beyond_training"] == 1


def test_quantile_estimator_ignores_one_slow_chunk():
    lat = lambda n: 6 if n == 2 else 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", LatencyWarning)  # the median never exceeds Δt_c
        ex, _, _ = run("async", lat, ticks=120, estimator="quantile", quantile=0.5, window=5)
    assert ex.latency.estimate() == 2
    with pytest.warns(LatencyWarning):
        ex, _, _ = run("async", lat, ticks=120, estimator="max", window=50)
    assert ex.latency.estimate() == 6  # the rolling max remembers it


def test_rtc_runs_and_guidance_pulls_toward_the_old_chunk():
    ex, trace, _ = run("rtc", 3)
    assert [r["tick"] for r in trace if r["held"]] == [0, 1, 2]
    rtc_reqs = [r for r in ex.requests.values() if r.rtc is not None]
    assert rtc_reqs and all(r.rtc.frozen_steps == 3 and len(r.prefix) == T - TE for r in rtc_reqs)
    for cid, rec in first_use(trace).items():
        if ex.requests[cid].origin is not None:
            assert rec["index_in_chunk"] == 3
    obs = {"state": np.full(7, 0.1)}
    gaps = []
    for seed in range(3):
        guided, free = sim_policy(seed=seed), sim_policy(seed=seed)  # same noise draws
        old = guided.infer(obs)
        free.infer(obs)
        rest = old[TE:]
        g = guided.infer(obs, rest, RTCSpec(frozen_steps=2, max_guidance=5.0))
        f = free.infer(obs, rest, RTCSpec(frozen_steps=2, max_guidance=0.0))
        gaps.append((np.abs(g[:4] - rest[:4]).mean(), np.abs(f[:4] - rest[:4]).mean()))
    assert all(guided < free for guided, free in gaps), gaps


def test_trace_round_trips_as_json_lines(tmp_path):
    _, trace, _ = run("async", 2, ticks=12)
    path = write_trace(trace, tmp_path / "t.jsonl")
    back = read_trace(path)
    assert back == json.loads(json.dumps(trace))
    assert set(back[5]) >= {"tick", "chunk_id", "index_in_chunk", "action", "inference_started", "inference_finished"}


def test_cli_simulate_writes_the_trace_and_warns(tmp_path):
    out = tmp_path / "trace.jsonl"
    cmd = [sys.executable, "-m", "xr0.cli", "deploy", "simulate", "--latency-steps", "5", "--mode", "async",
           "--prefix", "3", "--ticks", "30", "--trace", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert "exceeds the prefix" in res.stderr
    trace = read_trace(out)
    assert len(trace) == 30 and trace[0]["inference_started"] == 0
    assert first_use(trace)[1]["index_in_chunk"] == 5
