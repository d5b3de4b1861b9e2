"""Nothing poisoned leaves the server (issue 18's attacks, each now an error reply on a connection that stays
open): absurd states, float images beyond [0, 1], NaN RTC options, prefixes far outside the limits, and a model
that returns NaN. openpi's client would pass a NaN reply straight to a robot."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from xr0_deploy.local import sim_policy
from xr0_deploy.server import PolicyServer

openpi = pytest.importorskip("openpi_client.websocket_client_policy",
                             reason="pip install --no-deps openpi-client (it declares numpy<2)")

OBS = {"state": np.linspace(-0.2, 0.2, 7), "prompt": "reach", "images": {"front": np.full((8, 8, 3), 90, np.uint8)}}


@pytest.fixture
def served():
    pol = sim_policy(chunk_len=10)
    srv = PolicyServer(pol, pol.metadata(), port=0)
    srv.start()
    yield pol, srv, openpi.WebsocketClientPolicy(host="127.0.0.1", port=srv.port)
    srv.stop()


@pytest.mark.parametrize("change, message", [
    ({"state": np.full(7, 1e300)}, "values beyond float32's range"),
    ({"state": np.full(7, 1e3)}, r"joint0 = 1000 is 2e\+03 std from the training mean"),
    ({"images": {"front": np.full((8, 8, 3), 1e30, np.float32)}}, r"float image must hold values in \[0, 1\]"),
    ({"prefix_actions": np.full((2, 7), 1e6, np.float32)}, "prefix_actions: values far outside the limits"),
    ({"prefix_actions": np.zeros((3, 7), np.float32), "rtc": {"frozen_steps": 1, "max_guidance": float("nan")}},
     "rtc.max_guidance must be a finite number"),
    ({"action_frame": "joint"}, "action_frame: 'joint' is not one of"),
])
def test_poisoned_requests_get_an_error_reply_and_the_connection_stays(served, change, message):
    _, srv, client = served
    with pytest.raises(RuntimeError, match=message):
        client.infer({**OBS, **change})
    out = client.infer(OBS)["actions"]
    assert out.shape == (10, 7) and np.all(np.isfinite(out)) and np.all(np.abs(out) <= 1.0)
    assert srv.counts["errors"] == 1


def test_a_model_answering_nan_sends_nothing_to_the_robot(served):
    pol, srv, client = served
    real = pol.model.predict_chunk
    pol.model.predict_chunk = lambda *a, **k: real(*a, **k) * torch.tensor(float("nan"))
    with pytest.raises(RuntimeError, match="non-finite action values; nothing was sent to the robot"):
        client.infer(OBS)
    assert srv.counts["bad_outputs"] == 1
    pol.model.predict_chunk = real
    assert np.all(np.isfinite(client.infer(OBS)["actions"]))


def test_out_of_limit_outputs_are_clipped_and_reported(served):
    pol, srv, client = served
    real = pol.model.predict_chunk
    pol.model.predict_chunk = lambda *a, **k: real(*a, **k) + 40.0  # 40 std of 0.25 rad: 10 rad, limits ±1
    out = client.infer(OBS)
    assert np.all(np.abs(out["actions"]) <= 1.0) and out["clipped"] == 70 and srv.counts["clipped_values"] == 70
