"""Random bytes and random msgpack trees to the policy server: each gets an error reply, and the server
keeps serving well-formed requests on the same connection (hypothesis)."""
from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect
from xr0_deploy import wire
from xr0_deploy.local import sim_policy
from xr0_deploy.server import PolicyServer

OBS = {"state": np.linspace(-0.2, 0.2, 7), "prompt": "pick", "images": {"front": np.full((8, 8, 3), 128, np.uint8)}}
leaves = st.one_of(st.none(), st.booleans(), st.integers(-2**31, 2**31), st.floats(allow_nan=True), st.text(max_size=8),
                   st.binary(max_size=16))
trees = st.recursive(leaves, lambda k: st.one_of(st.lists(k, max_size=3),
                                                 st.dictionaries(st.sampled_from(["state", "prompt", "images",
                                                                                  "prefix_actions", "rtc", "x"]), k,
                                                                 max_size=4)), max_leaves=10)


@pytest.fixture(scope="module")
def ws():
    pol = sim_policy(chunk_len=10)
    srv = PolicyServer(pol, pol.metadata(), port=0, max_message_bytes=64 * 1024)
    srv.start()
    with connect(f"ws://127.0.0.1:{srv.port}") as conn:
        wire.unpackb(conn.recv(timeout=30))  # metadata
        yield conn
    srv.stop()


def _ok(ws) -> None:
    ws.send(wire.packb(OBS))
    assert wire.unpackb(ws.recv(timeout=10))["actions"].shape == (10, 7)


SETTINGS = settings(max_examples=40)  # deadline, health checks and the seed: the suite profile (conftest.py)


@SETTINGS
@given(st.binary(min_size=1, max_size=256))
def test_random_bytes_get_an_error_reply(ws, payload):
    ws.send(payload)
    reply = ws.recv(timeout=10)
    if isinstance(reply, bytes):  # random bytes can happen to be a valid observation
        assert wire.unpackb(reply)["actions"].shape == (10, 7)
    else:
        assert reply.startswith("xr0 policy server: bad request"), reply
    _ok(ws)


@SETTINGS
@given(trees)
def test_random_msgpack_trees_get_an_error_reply(ws, tree):
    ws.send(msgpack.packb(tree, use_bin_type=True))
    reply = ws.recv(timeout=10)
    # never a dropped connection, never an internal failure: whatever a client sends is either a usable observation
    # (a chunk comes back) or refused as a bad request that says what is wrong
    if isinstance(reply, bytes):
        assert wire.unpackb(reply)["actions"].shape == (10, 7)
    else:
        assert reply.startswith("xr0 policy server: bad request: "), reply
    _ok(ws)
