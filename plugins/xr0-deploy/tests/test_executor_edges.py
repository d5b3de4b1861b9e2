"""The executor at its edges, each computed by hand: settings exactly at their limits, a chunk exactly as late as its
length, Δt_inf against Δt_c and T (warnings, adapt_prefix and its bounds), the retry backoff's exact waits, hold
reasons, and what a request carries (an empty prefix is None, RTC's frozen steps follow the measured latency)."""
from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
from xr0_deploy.executor import (
    Executor,
    ExecutorConfig,
    ExecutorConfigError,
    LatencyWarning,
    PrefixRangeWarning,
)
from xr0_deploy.protocol import PolicyUnavailable
from xr0_deploy.safety import Safety
from xr0_deploy.sim import SimArm, simulate

T = 10


class Scripted:
    """Chunk n holds 0.01·n + 0.001·index on every joint (inside the arm's limits); `fail` lists the requests (from
    0) that raise PolicyUnavailable. Keeps every chunk it returned, to check nobody wrote into them."""

    def __init__(self, fail=(), chunk_len=T):
        self.n, self.fail, self.chunk_len, self.returned = 0, set(fail), chunk_len, []

    def infer(self, obs, prefix=None, rtc=None):
        n, self.n = self.n, self.n + 1
        if n in self.fail or "all" in self.fail:
            raise PolicyUnavailable("server down")
        chunk = np.repeat((0.01 * n + 0.001 * np.arange(self.chunk_len))[:, None], 7, axis=1)  # float64
        self.returned.append((chunk, chunk.copy()))
        return chunk


def run(mode="async", d=2, ticks=40, policy=None, exec_steps=4, prefix=4, configure=None, **cfg):
    arm = SimArm(dof=7)
    ex = Executor(ExecutorConfig(mode=mode, exec_steps=exec_steps, prefix_steps=prefix, keep_chunks=True, **cfg),
                  Safety(arm.limits))
    if configure is not None:
        ex.configure(*configure)
    policy = policy or Scripted()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        trace = simulate(ex, policy, arm, ticks, d)
    return ex, trace, [w for w in seen if issubclass(w.category, LatencyWarning | PrefixRangeWarning)]


def kinds(ex) -> set[str]:
    return set(ex.events.counts)


# ---------------------------------------------------------------- settings at their limits
@pytest.mark.parametrize("mode, chunk, exec_steps, prefix", [("async", 1, 1, 0), ("sync", 6, 6, 0),
                                                              ("async", 6, 2, 4), ("rtc", 6, 6, 3)])
def test_settings_exactly_at_their_limits_are_accepted(mode, chunk, exec_steps, prefix):
    Executor(ExecutorConfig(mode=mode, exec_steps=exec_steps, prefix_steps=prefix)).configure(chunk)
    with pytest.raises(ExecutorConfigError):
        Executor(ExecutorConfig(mode=mode, exec_steps=exec_steps + 1, prefix_steps=prefix)).configure(chunk)


def test_a_prefix_longer_than_trained_warns_once_before_the_first_tick():
    ex = Executor(ExecutorConfig(mode="async", exec_steps=4, prefix_steps=5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ex.configure(T, max_prefix=5)  # exactly the trained maximum: fine
    ex = Executor(ExecutorConfig(mode="async", exec_steps=4, prefix_steps=6))
    with pytest.warns(PrefixRangeWarning, match="Δt_c=6 is longer than the 5 committed actions"):
        ex.configure(T, max_prefix=5)
    assert [(e["tick"], e["kind"]) for e in ex.events.events] == [(-1, "prefix_beyond_training")]  # before tick 0


# ---------------------------------------------------------------- arrival edges
def test_a_chunk_that_arrives_exactly_its_length_late_is_stale():
    """T_e = 4, so the request goes out at index 4; latency 10 would land it at its own index 10: past its last
    action (index 9), so it is dropped as stale and the arm holds for that reason."""
    ex, _, _ = run(d=lambda n: 1 if n == 0 else 10, ticks=30)
    assert ex.events.counts["stale_chunk"] >= 1 and ex.hold_reasons["stale_chunk"] >= 1
    ex, _, _ = run(d=lambda n: 1 if n == 0 else 9, ticks=30)  # one tick earlier: index 9 still runs
    assert "stale_chunk" not in kinds(ex)


def test_a_chunk_nobody_asked_for_is_dropped_even_with_nothing_in_flight():
    ex = Executor(ExecutorConfig(mode="async"))
    ex.configure(T)
    ex.deliver(7, np.zeros((T, 7)))
    step = ex.tick(0)  # startup: no request was in flight when chunk 7 came
    assert ex.events.counts["unexpected_chunk"] == 1 and step.action is None and step.request.id == 0


def test_the_executor_never_writes_into_the_policys_chunk():
    pol = Scripted()
    ex, _, _ = run(policy=pol, d=2)
    assert len(pol.returned) >= 5 and all(np.array_equal(a, b) for a, b in pol.returned)
    assert any(not np.allclose(ex.chunks[i][:4], pol.returned[i][0][:4]) for i in ex.chunks if i > 0)  # overwritten


# ---------------------------------------------------------------- latency against the prefix and the chunk
def test_sync_never_warns_about_latency():
    _, _, said = run(mode="sync", d=7)  # max(4, 7) + 7 > 10 would warn in async; sync idles by design
    assert said == []


def test_rtc_warns_about_the_chunk_but_has_no_prefix_to_exceed():
    ex, _, _ = run(mode="rtc", d=5, prefix=4)
    assert "latency_exceeds_prefix" not in kinds(ex)


@pytest.mark.parametrize("d, warned", [(5, False), (6, True)])
def test_the_chunk_runs_out_when_max_te_latency_plus_latency_exceeds_t(d, warned):
    """max(T_e=4, d) + d > T=10: at d=5 it is exactly 10 (the new chunk lands on the old one's last action)."""
    ex, _, said = run(d=d, prefix=6, exec_steps=4)
    assert ("latency_exceeds_chunk" in kinds(ex)) == warned
    assert any("> chunk length T=10" in str(w.message) for w in said) == warned


def test_adapt_prefix_grows_to_the_latency_but_never_past_the_chunk():
    """d = 7 > Δt_c = 4: Δt_c grows to min(7, T − T_e = 6) = 6, once; the latency still exceeds it, which warns."""
    ex, _, _ = run(d=7, adapt_prefix=True, ticks=60)
    assert ex.prefix_steps == 6 and ex.events.counts["prefix_adapted"] == 1
    assert "latency_exceeds_prefix" in kinds(ex)
    assert max(len(r.prefix) for r in ex.requests.values() if r.prefix is not None) == 6


def test_adapt_prefix_stops_at_the_trained_maximum_and_warns_only_beyond_it():
    ex, _, said = run(d=5, adapt_prefix=True, configure=(T, 5))  # exactly the trained maximum
    assert ex.prefix_steps == 5 and not any(issubclass(w.category, PrefixRangeWarning) for w in said)
    ex, _, said = run(d=6, adapt_prefix=True, configure=(T, 5))
    assert ex.prefix_steps == 5 and any(issubclass(w.category, PrefixRangeWarning) for w in said)


# ---------------------------------------------------------------- retries and holds
def test_retry_waits_double_from_one_tick_jittered_into_the_upper_half():
    """The n-th failure in a row waits ceil(U(cap/2, cap)) ticks (at least 1), cap = min(30, 2^(n−1)), with U from
    the executor's seeded generator; requests fail one tick after they go out."""
    ex, _, _ = run(d=1, ticks=120, policy=Scripted(fail={"all"}), retry_seed=3)
    ticks = sorted(r.tick for r in ex.requests.values())
    waits = [b - a - 1 for a, b in itertools.pairwise(ticks)]
    rng = np.random.default_rng(3)
    caps = [min(30, 2 ** (n - 1)) for n in range(1, ex.events.counts["inference_failed"] + 1)]
    expected = [max(1, math.ceil(rng.uniform(c / 2, c))) for c in caps]
    assert waits == expected[:len(waits)] and len(waits) >= 7 and caps[:7] == [1, 2, 4, 8, 16, 30, 30]
    assert ex.events.counts["retry_backoff"] == sum(w > 1 for w in expected)  # a 1-tick wait is no backoff


def test_a_chunk_that_runs_out_before_the_next_arrives_is_a_late_hold():
    """T_e=4, d=8: the request leaves at index 4 and lands at index 12, so indices 10 and 11 are held as late (the
    arm was meant to keep going), unlike the startup ticks (waiting for a first chunk)."""
    ex, trace, _ = run(d=8, ticks=30)
    assert ex.hold_reasons["wait_inference"] == 8 and ex.hold_reasons["late_chunk"] >= 2
    late = [r["tick"] for r in trace if r.get("hold_reason") == "late_chunk"]
    assert late[:2] == [8 + 10, 8 + 11]  # the first chunk starts at tick 8 and its index 10 is tick 18


def test_exec_steps_equal_to_the_chunk_waits_for_each_new_chunk_from_index_zero():
    """async with T_e = T and no prefix: the chunk is used up when the request goes out, so the next one starts at
    index 0 after its latency, like sync."""
    ex, trace, _ = run(d=2, exec_steps=T, prefix=0, ticks=40)
    starts = {r["chunk_id"]: r["index_in_chunk"] for r in reversed(trace) if r["chunk_id"] is not None}
    assert len(starts) >= 3 and set(starts.values()) == {0}
    assert all(r.prefix is None for r in ex.requests.values())


@pytest.mark.parametrize("prefix", [0, 1])
def test_the_request_carries_exactly_its_prefix(prefix):
    ex, _, _ = run(d=1, prefix=prefix, ticks=30)
    later = [r for r in ex.requests.values() if r.origin is not None]
    assert later and all((r.prefix is None) if prefix == 0 else (r.prefix.shape == (1, 7)) for r in later)


def test_rtc_freezes_what_runs_before_arrival_even_at_one_tick():
    ex, _, _ = run(mode="rtc", d=1, ticks=30)
    rtc = [r.rtc.frozen_steps for r in ex.requests.values() if r.rtc is not None]
    assert rtc and set(rtc) == {1}
