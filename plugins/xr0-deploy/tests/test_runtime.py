"""The real-time runner (clock, inference thread, resampling, jitter) and the remote client in the loop."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
from xr0_deploy.client import RemotePolicy
from xr0_deploy.executor import Executor, ExecutorConfig
from xr0_deploy.local import sim_policy
from xr0_deploy.protocol import Reading
from xr0_deploy.runtime import RealTimeRunner, Resampler, nearest_index
from xr0_deploy.safety import Safety
from xr0_deploy.server import PolicyServer
from xr0_deploy.sim import SimArm, simulate


def test_nearest_index_and_resampler():
    ts = np.array([0.0, 0.1, 0.2])
    assert [nearest_index(ts, t) for t in (-1, 0.04, 0.06, 0.15, 0.16, 9)] == [0, 0, 1, 1, 2, 2]
    rs = Resampler()
    for i, t in enumerate([0.0, 0.01, 0.02, 0.03]):
        rs.add(Reading("state", t, np.full(2, i)))
    rs.add(Reading("images/front", 0.0, np.zeros((2, 2, 3), np.uint8)))
    rs.add(Reading("images/front", 0.066, np.ones((2, 2, 3), np.uint8)))
    obs = rs.observation(0.021, "go")
    assert obs["state"][0] == 2 and obs["images"]["front"].max() == 0 and obs["prompt"] == "go"
    assert rs.observation(0.05)["images"]["front"].max() == 1


class VirtualClock:
    """Time that moves only when the loop sleeps or a test says so: tick lateness becomes exact."""

    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t

    def sleep(self, dt):
        self.t += dt


def test_runner_counts_missed_ticks_on_a_virtual_clock():
    clock = VirtualClock()
    arm = SimArm(dof=7, clock=clock)
    ex = Executor(ExecutorConfig(mode="async"), Safety(arm.limits))

    def stall(k, now):
        arm.step(1 / 30)
        if k == 5:
            clock.t += 2.5 / 30  # this tick overran by 2.5 periods

    report = RealTimeRunner(ex, arm, sim_policy(), hz=30, clock=clock, sleep=clock.sleep, on_tick=stall).run(20)
    # tick 5 ends at 7.5 periods: tick 6 is skipped, tick 7 runs half a period late
    assert report.missed_ticks == 1
    assert report.ticks == 19
    assert ex.events.counts["missed_ticks"] == 1
    late = np.array(report.lateness_ms)
    assert np.count_nonzero(late > 1e-6) == 1 and abs(late.max() - 0.5 / 30 * 1000) < 1e-6
    assert "p99" in report.summary()


def test_runner_on_the_wall_clock_runs_chunks_through_the_inference_thread():
    arm = SimArm(dof=7)
    ex = Executor(ExecutorConfig(mode="async", exec_steps=4, prefix_steps=4), Safety(arm.limits))
    report = RealTimeRunner(ex, arm, sim_policy(), hz=100, prompt="wave",
                            on_tick=lambda k, t: arm.step(0.01)).run(40)
    assert report.ticks + report.missed_ticks == 40
    assert report.chunks >= 1 and len(arm.sent) >= 1
    assert np.isfinite(report.percentile(50)) and report.percentile(99) >= report.percentile(50)


def test_executor_through_the_xr0_client_holds_while_the_server_is_down(reserved_port):
    pol = sim_policy()
    srv = PolicyServer(pol, pol.metadata(), port=reserved_port)  # reserved: it comes back on the same port
    port = srv.start()
    client = RemotePolicy(f"ws://127.0.0.1:{port}", connect_timeout=1.0, reply_timeout=5.0)
    servers = [srv]

    class Outage:
        """Stops the server before request 3 and brings it back (same port) before request 7."""

        n = 0

        def infer(self, obs, prefix=None, rtc=None):
            if self.n == 3:
                servers[-1].stop()
            if self.n == 7:
                servers.append(PolicyServer(pol, pol.metadata(), port=port))
                servers[-1].start()
            self.n += 1
            return client.infer(obs, prefix, rtc)

    arm = SimArm(dof=7)
    ex = Executor(ExecutorConfig(mode="async"), Safety(arm.limits))
    try:
        trace = simulate(ex, Outage(), arm, 60, latency=2)
    finally:
        servers[-1].stop()
    assert ex.events.counts["inference_failed"] == 4
    assert ex.events.counts["watchdog_hold"] >= 1
    assert client.connects == 2
    assert not trace[-1]["held"] and trace[-1]["chunk_id"] >= 8
    assert ex.hold_reasons["server_unavailable"] >= 1  # the held ticks say why
    assert sum(ex.hold_reasons.values()) == sum(r["held"] for r in trace)


def test_cli_deploy_run_reports_jitter():
    res = subprocess.run([sys.executable, "-m", "xr0.cli", "deploy", "run", "--hz", "100", "--ticks", "30"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert "tick lateness p50" in res.stdout and "p99" in res.stdout
