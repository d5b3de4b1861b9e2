"""End to end: `xr0 fit` a tiny stage-2 checkpoint, serve it on 127.0.0.1, drive it with the real openpi client
(plain requests and xr0's `prefix_actions`). Normalisation, the action mask and relative dims come from the
checkpoint's statistics and embodiment, so the client speaks robot units only."""
from __future__ import annotations

import numpy as np
import pytest
from xr0_deploy.local import load_local
from xr0_deploy.server import PolicyServer

openpi = pytest.importorskip("openpi_client.websocket_client_policy",
                             reason="pip install --no-deps openpi-client (it declares numpy<2)")

CHUNK = 4


@pytest.fixture(params=[None, "bimanual_30hz"], ids=["synthetic", "bimanual_30hz"])
def checkpoint(request, tmp_path):
    from xr0.run import fit

    emb = request.param
    extra = [] if emb is None else [f"embodiment={emb}", f"data.embodiment={emb}"]
    out = fit("recipes/tiny/stage2.yaml", ["stage.init_from=null", "trainer.max_steps=2",
                                            f"run.out_dir={tmp_path / 'run'}", *extra])
    return out / "checkpoints" / "last.ckpt", emb


def _observation(meta, rng):
    cams = meta["cameras"]
    return {"observation/state": rng.uniform(-1, 1, meta["state_dim"]), "prompt": "stack the cups",
            **{f"observation/{c}": rng.integers(0, 255, (56, 56, 3), dtype=np.uint8) for c in cams}}


def test_fit_serve_and_drive_with_the_openpi_client(checkpoint):
    from xr0 import embodiments

    ckpt, emb = checkpoint
    policy = load_local(str(ckpt))
    srv = PolicyServer(policy, policy.metadata(), port=0)
    srv.start()
    try:
        client = openpi.WebsocketClientPolicy(host="127.0.0.1", port=srv.port)
        meta = client.get_server_metadata()
        if emb is None:  # synthetic data: its made-up robot of 7 action and state dims and one camera
            want_a, want_s, cams = 7, 7, ["cam0"]
        else:
            robot = embodiments.get(emb)
            want_a, want_s, cams = robot.action_dim, robot.state_dim, list(robot.cameras)
        assert (meta["chunk_len"], meta["action_dim"], meta["state_dim"], meta["cameras"]) == \
               (CHUNK, want_a, want_s, cams)
        rng = np.random.default_rng(0)
        obs = _observation(meta, rng)
        out = client.infer(obs)
        assert out["actions"].shape == (CHUNK, want_a) and np.all(np.isfinite(out["actions"]))
        # a committed prefix in robot units (absolute, also on the relative dims) comes back unchanged
        prefix = out["actions"][:2] + rng.uniform(-0.3, 0.3, (2, want_a)).astype(np.float32)
        out2 = client.infer({**obs, "prefix_actions": prefix})
        assert out2["actions"].shape == (CHUNK, want_a)
        np.testing.assert_allclose(out2["actions"][:2], prefix, atol=1e-4)
        if emb is not None:  # relative dims go back to absolute: a shifted state shifts those dims' chunk
            robot = embodiments.get(emb)
            rel = np.array(robot.relative, bool)
            assert rel.any() and not rel.all()
            shifted = {**obs, "observation/state": obs["observation/state"] + 0.5}
            a = client.infer({**obs, "prefix_actions": prefix})["actions"]
            b = client.infer({**shifted, "prefix_actions": prefix})["actions"]
            np.testing.assert_allclose(b[:2], prefix, atol=1e-4)  # the prefix is absolute whatever the state
            assert not np.allclose(a[2:], b[2:])
        assert srv.counts["errors"] == 0
    finally:
        srv.stop()


def test_the_fast_path_serves_the_same_chunks(checkpoint):
    """`xr0 serve` runs FastPolicy by default (fast=auto); with the same noise it returns what the trained
    Policy (the HF forward, fast=off) returns, with and without a committed prefix."""
    import torch
    from xr0.infer import FastPolicy

    ckpt, _ = checkpoint
    fast, plain = load_local(str(ckpt)), load_local(str(ckpt), fast="off")
    assert isinstance(fast.model, FastPolicy) and not isinstance(plain.model, FastPolicy)
    meta = fast.metadata()
    obs = _observation(meta, np.random.default_rng(1))
    for prefix in (None, np.zeros((2, meta["action_dim"]))):
        torch.manual_seed(3)
        a = fast.infer(obs, prefix)
        torch.manual_seed(3)
        b = plain.infer(obs, prefix)
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_fast_must_be_a_known_choice(checkpoint):
    with pytest.raises(ValueError, match="fast must be one of"):
        load_local(str(checkpoint[0]), fast="yes")


def test_the_trained_prefix_maximum_travels_from_checkpoint_to_export_to_server_to_client(tmp_path):
    """A stage-3 checkpoint stores the longest Δt_c its prefix sampler drew; its export, the local policy, the
    server's metadata and the executor's client all declare it."""
    import json

    import torch
    from xr0_deploy.client import RemotePolicy
    from xr0_deploy.executor import declared_max_prefix

    from xr0.export import export_checkpoint
    from xr0.run import fit

    out = fit("recipes/tiny/stage3.yaml", ["stage.init_from=null", "trainer.max_steps=1", "_variant=training_rtc",
                                            "stage.prefix_sampler.max_len=2", f"run.out_dir={tmp_path / 'run'}"])
    ckpt = out / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["xr0_max_prefix"] == 2
    export = export_checkpoint(ckpt, tmp_path / "export")
    assert json.loads((export / "xr0.json").read_text())["xr0_max_prefix"] == 2
    policy = load_local(str(export))
    assert policy.max_prefix == 2 and declared_max_prefix(policy) == 2
    srv = PolicyServer(policy, policy.metadata(), port=0)
    srv.start()
    try:
        remote = RemotePolicy(f"ws://127.0.0.1:{srv.port}")
        remote.connect()
        assert declared_max_prefix(remote) == 2
        remote.close()
    finally:
        srv.stop()
    # a sync-trained (or stage-2) checkpoint never saw a prefix
    sync = fit("recipes/tiny/stage3.yaml", ["stage.init_from=null", "trainer.max_steps=1", "_variant=sync",
                                             f"run.out_dir={tmp_path / 'sync'}"])
    assert load_local(str(sync / "checkpoints" / "last.ckpt")).max_prefix == 0
