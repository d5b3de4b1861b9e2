"""The policy server on 127.0.0.1, driven by the real openpi client and by xr0's reconnecting client."""
from __future__ import annotations

import os
import subprocess
import sys

import msgpack
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect
from xr0_deploy import wire
from xr0_deploy.client import RemotePolicy
from xr0_deploy.local import sim_policy
from xr0_deploy.protocol import PolicyError, PolicyUnavailable, RTCSpec
from xr0_deploy.server import PolicyServer

openpi = pytest.importorskip("openpi_client.websocket_client_policy",
                             reason="pip install --no-deps openpi-client (it declares numpy<2)")

OBS = {"state": np.linspace(-0.2, 0.2, 7), "prompt": "pick up the cube",
       "images": {"front": np.full((8, 8, 3), 128, np.uint8)}}


@pytest.fixture
def server():
    pol = sim_policy(chunk_len=10)
    srv = PolicyServer(pol, pol.metadata(), port=0, max_message_bytes=64 * 1024)
    srv.start()
    yield srv
    srv.stop()


def test_openpi_client_drives_the_server_unchanged(server):
    client = openpi.WebsocketClientPolicy(host="127.0.0.1", port=server.port)
    meta = client.get_server_metadata()
    assert meta["chunk_len"] == 10 and meta["action_dim"] == 7 and meta["prefix_actions"] is True
    out = client.infer(OBS)
    assert out["actions"].shape == (10, 7) and out["actions"].dtype == np.float32
    assert out["server_timing"]["infer_ms"] > 0
    out2 = client.infer({"observation/state": OBS["state"], "observation/front": OBS["images"]["front"],
                         "prompt": "x", "prefix_actions": out["actions"][4:8]})
    np.testing.assert_allclose(out2["actions"][:4], out["actions"][4:8], atol=1e-5)  # prefix honoured
    assert "prev_total_ms" in out2["server_timing"]
    with pytest.raises(RuntimeError, match="bad request: missing 'state'"):
        client.infer({"prompt": "no state"})
    assert client.infer(OBS)["actions"].shape == (10, 7), "the connection survives a bad request"
    assert server.counts["requests"] == 3 and server.counts["errors"] == 1


def test_malformed_messages_get_error_replies_and_the_server_keeps_serving(server):
    uri = f"ws://127.0.0.1:{server.port}"
    with connect(uri) as ws:
        wire.unpackb(ws.recv(timeout=30))  # metadata first
        bad = [b"\xc1not msgpack", "a text frame", msgpack.packb([1, 2, 3]),
               wire.packb({"state": np.zeros(3)}),  # wrong state width
               wire.packb({"state": np.full(7, np.nan)}),
               msgpack.packb({"state": {b"__ndarray__": True, b"data": b"\x00" * 3, b"dtype": "<f8", b"shape": [7]}}),
               wire.packb({"state": np.zeros(7), "prefix_actions": np.zeros((3, 2))}),
               wire.packb({"state": np.zeros(7), "prefix_actions": np.zeros((2, 7)), "rtc": {"frozen": 1}})]
        for msg in bad:
            ws.send(msg)
            reply = ws.recv(timeout=10)
            assert isinstance(reply, str) and reply.startswith("xr0 policy server: bad request"), reply
        ws.send(wire.packb(OBS))
        assert wire.unpackb(ws.recv(timeout=10))["actions"].shape == (10, 7)
    assert server.counts["errors"] == len(bad)


def test_oversized_message_closes_that_connection_only(server):
    uri = f"ws://127.0.0.1:{server.port}"
    with connect(uri, max_size=None) as ws:
        wire.unpackb(ws.recv(timeout=30))
        ws.send(wire.packb({"state": np.zeros(7), "images": {"front": np.zeros((200, 200, 3), np.uint8)}}))
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=10)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    assert server.wait_for_count("oversized", 1, timeout=60)  # the server notices the close on its own thread
    assert server.counts["oversized"] == 1
    assert RemotePolicy(f"ws://127.0.0.1:{server.port}").infer(OBS).shape == (10, 7)


def test_api_key_is_required_when_set():
    pol = sim_policy()
    srv = PolicyServer(pol, pol.metadata(), port=0, api_key="s3cret")
    srv.start()
    try:
        with pytest.raises(InvalidStatus):
            openpi.WebsocketClientPolicy(host="127.0.0.1", port=srv.port, api_key="wrong")
        ok = openpi.WebsocketClientPolicy(host="127.0.0.1", port=srv.port, api_key="s3cret")  # Authorization
        assert ok.infer(OBS)["actions"].shape == (10, 7)
        assert RemotePolicy(f"ws://127.0.0.1:{srv.port}", api_key="s3cret").infer(OBS).shape == (10, 7)  # Api-Key
        with pytest.raises(PolicyError, match="401"):
            RemotePolicy(f"ws://127.0.0.1:{srv.port}").infer(OBS)
        assert srv.counts["unauthorized"] == 2
    finally:
        srv.stop()


def test_xr0_client_reconnects_after_the_server_comes_back(reserved_port):
    """The server goes away and comes back at the same address; the port stays reserved for this test meanwhile
    (conftest.py), so nothing else can take it in between."""
    pol = sim_policy()
    srv = PolicyServer(pol, pol.metadata(), port=reserved_port)
    port = srv.start()
    client = RemotePolicy(f"ws://127.0.0.1:{port}", connect_timeout=1.0, reply_timeout=5.0)
    first = client.infer(OBS)
    rtc = client.infer(OBS, first[4:], RTCSpec(frozen_steps=2, max_guidance=5.0))
    assert rtc.shape == (10, 7) and client.connects == 1 and client.metadata["rtc"] is True
    srv.stop()
    with pytest.raises(PolicyUnavailable):
        client.infer(OBS)  # the dropped connection is noticed on the next request
    assert not client.connected
    with pytest.raises(PolicyUnavailable, match="cannot reach"):
        client.infer(OBS)  # server still down: fails fast, the executor keeps holding
    srv2 = PolicyServer(pol, pol.metadata(), port=port)
    srv2.start()
    try:
        out = client.infer(OBS, first[4:8])
        np.testing.assert_allclose(out[:4], first[4:8], atol=1e-5)
        assert client.connects == 2
    finally:
        srv2.stop()


def test_cli_serve_on_a_tiny_checkpoint_drives_openpi_client(wait_for_line):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "xr0.cli", "serve", "sim:tiny", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        # `xr0 serve` prints its address once the socket is bound (port 0: the one the OS chose)
        match = wait_for_line(proc, r"on ws://127\.0\.0\.1:(\d+)", timeout=120)
        client = openpi.WebsocketClientPolicy(host="127.0.0.1", port=int(match.group(1)))
        assert client.infer(OBS)["actions"].shape == (10, 7)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_wire_matches_openpis_encoding():
    from openpi_client import msgpack_numpy as theirs

    data = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.float64(2.5), "p": "x"}
    for packed in (wire.packb(data), theirs.packb(data)):
        a, b = wire.unpackb(packed), theirs.unpackb(packed)
        np.testing.assert_array_equal(a["a"], b["a"])
        assert a["s"] == b["s"] == 2.5 and a["p"] == "x"
    with pytest.raises(TypeError):
        wire.packb({"o": np.array([object()])})
    evil = msgpack.packb({b"__ndarray__": True, b"data": b"", b"dtype": "|O", b"shape": [0]})
    with pytest.raises(ValueError, match="not accepted"):
        wire.unpackb(evil)
