"""A lab's path end to end, from the user's side: `lab_arm` episodes (three cameras at their native sizes, wrist
frames dropped) → shards → a tiny `xr0 fit` → the real `xr0 serve` CLI → the real openpi client sending native
sizes, a missing camera and state in robot units → a (T, A) chunk in robot units inside the limits."""
from __future__ import annotations

import queue
import re
import subprocess
import sys
import threading

import numpy as np
import pytest

openpi = pytest.importorskip("openpi_client.websocket_client_policy",
                             reason="pip install --no-deps openpi-client (it declares numpy<2)")

CHUNK = 4
OFFSET = np.array([1.2, -0.6, 0.9, -1.5, 0.4, 2.0])  # joint angles far from 0, so normalisation matters


def lab_episodes(n_eps: int = 3, steps: int = 12, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    eps = []
    for e in range(n_eps):
        t = np.arange(steps)[:, None]
        joints = OFFSET + 0.3 * np.sin(0.4 * t + e)  # (N, 6) rad
        grip = (np.sin(0.3 * t[:, 0] + e) > 0).astype(float)  # opening 0..1
        state = np.column_stack([joints, grip, 15 * grip + rng.uniform(0, 2, steps)]).astype(np.float32)  # (N, 8)
        actions = np.column_stack([joints + 0.05, grip]).astype(np.float32)  # absolute joint targets + gripper
        def frames(h, w, drop=0):
            return [None if drop and k % drop == drop - 1 else
                    np.full((h, w, 3), (40 * e + 9 * k) % 255, np.uint8) for k in range(steps)]
        eps.append({"state": state, "actions": actions, "instruction": "put the cup on the shelf",
                    "images": {"scene": frames(240, 320), "wrist": frames(120, 160, drop=3),
                               "side": frames(240, 320)}})
    return eps


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from xr0.data.writer import write_episodes
    from xr0.run import fit

    root = tmp_path_factory.mktemp("lab")
    card = write_episodes(lab_episodes(), root / "shards", "lab_arm", "lab_v1", progress=False)
    data = (f"data={{name: webdataset, card: {card}, chunk: {CHUNK}, batch_size: 2, num_workers: 0, "
            f"image_size: [84, 112]}}")
    out = fit("recipes/tiny/stage2.yaml", ["stage.init_from=null", "trainer.max_steps=3", f"_chunk={CHUNK}",
                                            "embodiment=lab_arm", data, f"run.out_dir={root / 'run'}"])
    return out / "checkpoints" / "last.ckpt"


def _serve(ckpt):
    """`xr0 serve CKPT --port 0` as a user runs it; returns (process, port) once it prints where it listens."""
    proc = subprocess.Popen([sys.executable, "-m", "xr0.cli", "serve", str(ckpt), "--port", "0", "--noise-seed", "7"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    seen = []
    while True:
        try:
            line = lines.get(timeout=120)  # bounded: model load + plugin import on a slow CI core
        except queue.Empty:
            proc.kill()
            pytest.fail(f"xr0 serve printed no address within 120 s: {''.join(seen)}")
        seen.append(line)
        m = re.search(r"on ws://127\.0\.0\.1:(\d+)", line)
        if m:
            return proc, int(m.group(1)), line
        if proc.poll() is not None:
            pytest.fail(f"xr0 serve exited: {''.join(seen)}")


def test_native_sizes_and_a_missing_camera_give_a_chunk_in_robot_units(checkpoint):
    from xr0.embodiments import get

    arm = get("lab_arm")
    proc, port, banner = _serve(checkpoint)
    try:
        assert "lab_arm" in banner and "[84, 112]" in banner
        client = openpi.WebsocketClientPolicy(host="127.0.0.1", port=port)
        meta = client.get_server_metadata()
        assert meta["cameras"] == ["scene", "wrist", "side"] and meta["image_size"] == [84, 112]
        assert meta["action_names"] == list(arm.action_names) and meta["control_hz"] == 15.0
        assert meta["chunk_len"] == CHUNK and meta["action_frame"] == "absolute"
        state = np.concatenate([OFFSET + 0.1, [1.0, 14.0]]).astype(np.float64)
        rng = np.random.default_rng(1)
        obs = {"observation/state": state, "prompt": "put the cup on the shelf",
               "observation/scene": rng.integers(0, 256, (240, 320, 3), dtype=np.uint8),  # native 320×240
               "observation/side": rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)}  # wrist left out
        out = client.infer(obs)
        a = out["actions"]
        assert a.shape == (CHUNK, 7) and np.all(np.isfinite(a))
        assert np.all(a >= np.array(arm.action_low)) and np.all(a <= np.array(arm.action_high))
        assert out["missing_cameras"] == ["wrist"] and isinstance(out["clipped"], int)
        # absolute joint targets: near the observed joints (relative dims went back to absolute on the server)
        assert np.all(np.abs(a[:, :6] - state[:6]) < 3.0)
        # None and an omitted camera are the same thing (same per-request noise, so the same chunk)
        again = client.infer({**obs, "observation/wrist": None})
        np.testing.assert_allclose(again["actions"], a, atol=1e-6)
        # a native-size wrist frame is accepted too, and changes the answer
        with_wrist = client.infer({**obs, "observation/wrist": np.zeros((120, 160, 3), np.uint8) + 90})
        assert with_wrist["missing_cameras"] == []
        # committed actions come back as sent; the delta frame is the absolute one minus the observed joints
        prefix = a[:2].astype(np.float32)
        np.testing.assert_allclose(client.infer({**obs, "prefix_actions": prefix})["actions"][:2], prefix, atol=1e-4)
        delta = client.infer({**obs, "action_frame": "delta"})["actions"]
        np.testing.assert_allclose(delta[:, :6], a[:, :6] - state[:6], atol=1e-4)
        np.testing.assert_allclose(delta[:, 6], a[:, 6], atol=1e-6)
        with pytest.raises(RuntimeError, match="expected 8 values"):
            client.infer({**obs, "observation/state": state[:7]})
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_deploy_simulate_takes_the_checkpoints_embodiment(checkpoint, tmp_path, capsys):
    from xr0_deploy.sim import read_trace, read_trace_meta

    from xr0.cli import main

    trace = tmp_path / "lab.jsonl"
    assert main(["deploy", "simulate", "--policy", str(checkpoint), "--latency-steps", "2", "--ticks", "24",
                 "--exec-steps", "2", "--prefix", "2", "--trace", str(trace), "--drop-camera", "wrist:3"]) == 0
    out = capsys.readouterr().out
    m = re.search(r"lab_arm at 15 Hz: 24 ticks, (\d+) actions, held (\d+)", out)
    assert m and int(m.group(1)) >= 20 and int(m.group(1)) + int(m.group(2)) == 24, out
    rows = [r for r in read_trace(trace) if r["action"] is not None]
    acts = np.array([r["action"] for r in rows])
    assert acts.shape[1] == 7 and np.all(acts[:, 6] >= 0) and np.all(acts[:, 6] <= 1)  # the gripper's own range
    assert read_trace_meta(trace)["action_names"][:2] == ["shoulder_pan", "shoulder_lift"]
