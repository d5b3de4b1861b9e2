"""`synthetic`: batches follow the contract in xr0/types.py, are learnable, and carry VL sub-batches on request."""
import json

import pytest
import torch

from xr0 import embodiments
from xr0.config import build
from xr0.types import ACTION_DIM


def _batch(**kw):
    dm = build({"name": "synthetic", **kw}, "data")
    return dm, next(iter(dm.train_dataloader()))


def test_robot_batch_contract():
    dm, b = _batch(batch_size=4, num_samples=8, chunk=5, views=2, image_size=28)
    assert b["images"].shape == (4, 2, 3, 28, 28) and b["images"].dtype == torch.float32
    assert 0 <= b["images"].min() and b["images"].max() <= 1 and b["image_mask"].all()
    assert b["state"].shape == (4, ACTION_DIM) and b["actions"].shape == (4, 5, ACTION_DIM)
    assert b["action_mask"].shape == (4, ACTION_DIM) and b["action_mask"][0, :7].all() and not b["action_mask"][0, 7:].any()
    assert (b["actions"][..., 7:] == 0).all() and b["chunk_mask"].all() and b["chunk_mask"].shape == (4, 5)
    assert len(b["instruction"]) == 4 and all(isinstance(s, str) for s in b["instruction"])
    assert b["embodiment"] == ["synthetic"] * 4 and dm.embodiment == "synthetic"
    json.dumps(dm.stats)  # travels in checkpoints


def test_actions_are_a_function_of_state_and_instruction():
    dm = build({"name": "synthetic", "num_samples": 64, "chunk": 4}, "data")
    r = dm.robot
    again = build({"name": "synthetic", "num_samples": 64, "chunk": 4}, "data").robot
    assert torch.equal(r.actions, again.actions) and torch.equal(r.state, again.state)  # seeded
    # per instruction, actions are tanh of a linear map of the state: least squares on atanh fits exactly
    for k in range(4):
        idx = r.instr == k
        x, y = r.state[idx][:, :7], torch.atanh(r.actions[idx][:, 0, :7].clamp(-0.999999, 0.999999))
        sol = torch.linalg.lstsq(x, y).solution
        assert torch.allclose(x @ sol, y, atol=1e-3)


def test_embodiment_sets_slots_chunk_and_views():
    emb = embodiments.get("bimanual_30hz")
    dm, b = _batch(batch_size=2, num_samples=4, image_size=28, embodiment="bimanual_30hz")
    assert b["actions"].shape == (2, 30, ACTION_DIM) and b["images"].shape[1] == 3
    assert b["action_mask"][0].tolist() == emb.action_mask().tolist() and b["embodiment"] == ["bimanual_30hz"] * 2
    assert dm.embodiment == "bimanual_30hz" and dm.stats["action_mask"] == emb.action_mask().tolist()
    with pytest.raises(ValueError, match="has 14 action dims"):
        build({"name": "synthetic", "embodiment": "bimanual_30hz", "action_dims": 7}, "data")


def test_vl_ratio_adds_a_vl_sub_batch():
    _, b = _batch(batch_size=6, num_samples=12, vl_ratio=1 / 6)
    assert set(b) == {"robot", "vl"}
    vl = b["vl"]
    assert len(vl["prompt"]) == len(vl["answer"]) == vl["images"].shape[0] == 1 and vl["kind"] == ["vl"]
    assert vl["answer"][0] == ("yes" if b["robot"]["state"][0, 0] > 0 else "no")
    assert b["robot"]["actions"].shape[0] == 6


def test_holdout_samples_are_never_trained_on():
    dm = build({"name": "synthetic", "batch_size": 4, "num_samples": 20, "chunk": 4, "holdout": 6}, "data")
    seen = set()
    for _ in range(3):
        for b in dm.train_dataloader():
            seen |= set(b["index"])
    held = dm.heldout_batch()
    assert seen == set(range(14)) and held["index"] == list(range(14, 20))
    assert held["actions"].shape == (6, 4, ACTION_DIM)
    with pytest.raises(ValueError, match="data.holdout must be in 0..19"):
        build({"name": "synthetic", "num_samples": 20, "holdout": 20}, "data")
