"""episodes → shards → batches gives back the actions (up to normalisation), the chunk mask, the stats."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from helpers import episodes

import xr0.embodiments
from xr0.data import load_card, load_stats, write_episodes
from xr0.data.module import WebDatasetData


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    eps = episodes(n_eps=3, steps=12)
    card = write_episodes(eps, tmp_path_factory.mktemp("rt"), "libero_franka", "rt", maxcount=10, progress=False)
    return eps, card


def _all_batches(dm):
    out = []
    for b in dm.train_dataloader():
        out.append(dm.account(b))
    return out


def test_card_and_stats_written(written):
    eps, card_path = written
    card = load_card(card_path)
    assert card.embodiment == "libero_franka" and card.num_samples == 36 and card.chunk == 10
    stats = load_stats(card.stats_path)
    assert stats["actions"]["mean"].shape == (10, 32) and stats["state"]["mean"].shape == (32,)
    assert stats["action_mask"].sum() == 7
    # per-timestep count: step k exists for samples with at least k+1 actions left
    assert stats["actions"]["count"].tolist() == [3 * (12 - k) for k in range(10)]
    first = np.concatenate([e["actions"][:, :] for e in eps])  # step-0 actions = every action once
    assert np.allclose(stats["actions"]["mean"][0, :7], first.mean(0), atol=1e-4)
    assert np.allclose(stats["actions"]["q99"][0, :7], np.quantile(first, 0.99, axis=0), atol=1e-4)


def test_round_trip_reproduces_actions(written):
    eps, card_path = written
    dm = WebDatasetData(card=str(card_path), batch_size=4, num_workers=0, image_size=16, shuffle_buffer=8)
    emb = xr0.embodiments.get("libero_franka")
    stats = load_stats(load_card(card_path).stats_path)
    a_std = np.where(stats["actions"]["std"] < 1e-6, 1, stats["actions"]["std"])
    s_std = np.where(stats["state"]["std"] < 1e-6, 1, stats["state"]["std"])
    seen = set()
    for b in _all_batches(dm):
        assert b["images"].dtype.is_floating_point and 0 <= b["images"].min() and b["images"].max() <= 1
        assert b["images"].shape[1:] == (2, 3, 16, 16) and b["image_mask"].all()
        assert (b["actions"][..., 7:] == 0).all() and b["action_mask"][:, :7].all() and not b["action_mask"][:, 7:].any()
        for i, key in enumerate(b["__key__"]):
            e, t = int(key[1:8]), int(key[-6:])
            seen.add((e, t))
            state = emb.from_canonical(b["state"][i].numpy() * s_std + stats["state"]["mean"], "state")
            assert np.allclose(state, eps[e]["state"][t], atol=1e-5)
            rel = emb.from_canonical(b["actions"][i].numpy() * a_std + stats["actions"]["mean"])
            absolute = emb.to_absolute(rel, state)
            n = min(10, 12 - t)
            assert b["chunk_mask"][i].tolist() == [True] * n + [False] * (10 - n)
            assert np.allclose(absolute[:n], eps[e]["actions"][t:t + n], atol=1e-4)
            assert b["instruction"][i] == f"task {e}"
    assert len(seen) == 36  # 36 samples, batch 4: one epoch sees every sample once
    assert dm.counters["robot"] == 36 and dm.skipped == 0
    assert dm.stats["actions"]["mean"][0][:7] == pytest.approx(stats["actions"]["mean"][0, :7].tolist(), abs=1e-6)


def test_reader_chunk_shorter_than_stored(written):
    _, card_path = written
    dm = WebDatasetData(card=str(card_path), batch_size=6, num_workers=0, image_size=8, chunk=4, shuffle_buffer=0)
    b = dm.account(next(iter(dm.train_dataloader())))
    assert b["actions"].shape == (6, 4, 32) and b["images"].shape == (6, 2, 3, 8, 8)
    assert np.asarray(dm.stats["actions"]["mean"]).shape == (4, 32)


def test_writer_rejects_wrong_shapes(tmp_path):
    bad = episodes(n_eps=1, steps=4, action_dim=6)
    with pytest.raises(ValueError, match=r"actions shape .* needs \(N, 7\)"):
        write_episodes(bad, tmp_path, "libero_franka", "bad", progress=False)
