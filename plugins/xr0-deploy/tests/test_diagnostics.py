"""Deploy diagnostics: every held tick has a reason (counted, in the trace, printed), the simulated arm takes the
policy's embodiment, and `xr0 deploy plot` draws a trace with its chunk-boundary jumps found where they are."""
from __future__ import annotations

import numpy as np
from xr0_deploy.executor import Executor, ExecutorConfig
from xr0_deploy.local import sim_policy
from xr0_deploy.plot import boundary_jumps, plot_trace
from xr0_deploy.protocol import PolicyError
from xr0_deploy.safety import Safety
from xr0_deploy.sim import SimArm, read_trace, read_trace_meta, simulate

from xr0.cli import main
from xr0.embodiments import get


class Refusing:
    """A server that rejects the first `n` requests (a client sending the wrong state width, say)."""

    def __init__(self, n: int):
        self.inner, self.n = sim_policy(chunk_len=10), n

    def infer(self, obs, prefix=None, rtc=None):
        if self.n > 0:
            self.n -= 1
            raise PolicyError("xr0 policy server: bad request: state: expected 7 values, got shape (6,)")
        return self.inner.infer(obs, prefix, rtc)


def test_every_held_tick_is_counted_by_its_reason():
    arm = SimArm(dof=7)
    ex = Executor(ExecutorConfig(mode="async", exec_steps=4, prefix_steps=2), Safety(arm.limits))
    trace = simulate(ex, Refusing(3), arm, 40, 2)
    held = [r for r in trace if r["held"]]
    assert len(held) == sum(ex.hold_reasons.values()) and all("hold_reason" in r for r in held)
    # the first request idles the arm (wait_inference); from the first refusal until a good chunk is adopted
    # (three refused requests, with backoff between them) every held tick is the refusal's
    first_good = next(r["tick"] for r in trace if not r["held"])
    assert dict(ex.hold_reasons) == {"wait_inference": 2, "policy_error": first_good - 2}
    assert ex.events.counts["inference_failed"] == 3
    assert "expected 7 values" in ex.hold_details["policy_error"]
    assert not any("hold_reason" in r for r in trace if not r["held"])


def test_simulated_arm_takes_the_embodiments_shape():
    from xr0.plugins import load_plugins

    load_plugins()  # lab_arm comes from the example plugin; lookups do not load plugins (the entry points do)
    emb = get("lab_arm")
    arm = SimArm.for_embodiment(emb, drop_camera={"wrist": 2})
    assert arm.dof == 7 and arm.state_dim == 8 and arm.limits.high[6] == 1.0
    assert arm.cameras == {"scene": (240, 320), "wrist": (120, 160), "side": (240, 320)}
    readings = {r.name: r.value for r in arm.observe()}
    assert readings["state"].shape == (8,) and readings["images/scene"].shape == (240, 320, 3)
    arm._t += 1.0
    assert {r.name: r.value for r in arm.observe()}["images/wrist"] is None  # every 2nd wrist frame is dropped


def test_boundary_jumps_are_found_where_they_are():
    trace = []
    for k in range(12):
        cid = 0 if k < 6 else 1
        a = [0.01 * k, 0.5 + (0.4 if cid else 0.0)]  # dim 1 jumps by 0.4 when chunk 1 takes over at tick 6
        trace.append({"tick": k, "chunk_id": cid, "action": a, "held": False})
    assert [(t, d) for t, d, _ in boundary_jumps(trace)] == [(6, 1)]


def test_cli_simulate_uses_the_embodiments_rate_writes_a_labelled_trace_and_a_plot(tmp_path, capsys):
    trace_path, png = tmp_path / "t.jsonl", tmp_path / "t.png"
    assert main(["deploy", "simulate", "--latency-steps", "3", "--ticks", "30", "--trace", str(trace_path),
                 "--plot", str(png), "--drop-camera", "front:4"]) == 0
    out = capsys.readouterr().out
    assert "sim_arm at 30 Hz" in out and "held 3 (wait_inference 3" in out
    meta = read_trace_meta(trace_path)
    assert meta["action_names"] == [f"joint{i}" for i in range(7)] and meta["hz"] == 30.0
    assert len(read_trace(trace_path)) == 30
    from PIL import Image

    img = np.asarray(Image.open(png))
    assert img.shape[0] > 400 and img.std() > 10  # 7 panels, something drawn
    assert main(["deploy", "plot", str(trace_path), "--out", str(tmp_path / "again.png")]) == 0
    assert (tmp_path / "again.png").stat().st_size > 10_000


def test_plot_of_a_trace_with_holds(tmp_path):
    arm = SimArm(dof=7)
    ex = Executor(ExecutorConfig(mode="sync", exec_steps=4), Safety(arm.limits))
    trace = simulate(ex, Refusing(2), arm, 40, 2)
    out = plot_trace(trace, tmp_path / "p.png", {"action_names": [f"j{i}" for i in range(7)], "mode": "sync"})
    assert out.stat().st_size > 10_000
