"""Two simulated ranks × two DataLoader workers read disjoint shards; corrupt shards are skipped and counted."""
import os
import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from helpers import episodes

from xr0.data import load_card, write_episodes
from xr0.data.cards import shard_list
from xr0.data.module import WebDatasetData


@pytest.fixture(scope="module")
def eight_shards(tmp_path_factory):
    # 4 episodes × 8 steps = 32 samples, 4 per shard → 8 shards
    card = write_episodes(episodes(n_eps=4, steps=8, size=8), tmp_path_factory.mktemp("dist"), "libero_franka", "d",
                          maxcount=4, progress=False)
    assert len(shard_list(load_card(card).urls)) == 8
    return card


def _keys_by_worker(dm):
    seen = {}
    for b in dm.train_dataloader():
        w = b["_counts"]["worker"]
        seen.setdefault(w, set()).update(b["__key__"])
        dm.account(b)
    return seen


def test_two_ranks_two_workers_see_disjoint_shards(eight_shards, monkeypatch):
    per_reader = {}
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")  # what torch.distributed's launcher sets; webdataset reads it
        dm = WebDatasetData(card=str(eight_shards), batch_size=2, num_workers=2, image_size=8, shuffle_buffer=4)
        for w, keys in _keys_by_worker(dm).items():
            per_reader[(rank, w)] = keys
    assert sorted(per_reader) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    sets = list(per_reader.values())
    for i in range(4):
        assert len(sets[i]) == 8  # 2 shards × 4 samples each
        for j in range(i + 1, 4):
            assert not sets[i] & sets[j], f"readers {i} and {j} share samples"
    assert len(set().union(*sets)) == 32  # together they cover the dataset once


def test_corrupt_shard_does_not_stop_the_epoch(eight_shards, tmp_path):
    card = load_card(eight_shards)
    shards = shard_list(card.urls)
    # copy the dataset, then truncate shard 2 mid-file and replace shard 5 by garbage
    import shutil

    for s in shards:
        shutil.copy(s, tmp_path)
    shutil.copy(card.stats_path, tmp_path)
    (tmp_path / "c.yaml").write_text(Path(eight_shards).read_text())
    t2 = tmp_path / Path(shards[2]).name
    data = t2.read_bytes()
    t2.write_bytes(data[: len(data) // 2 + 100])
    (tmp_path / Path(shards[5]).name).write_bytes(os.urandom(3000))
    dm = WebDatasetData(card=str(tmp_path / "c.yaml"), batch_size=1, num_workers=0, image_size=8, shuffle_buffer=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        keys = [k for b in dm.train_dataloader() for k in dm.account(b)["__key__"]]
    assert 24 <= len(keys) < 32  # the 6 intact shards are read in full, the broken ones partly or not at all
    assert dm.counters["shards_failed"] == 2  # each broken shard counted once
    assert dm.counters["robot"] == len(keys)


def test_uneven_shards_give_every_rank_the_same_number_of_batches(tmp_path, monkeypatch):
    # 32 samples, 5 per shard → 7 shards: rank 0 reads 4 shards (17 samples), rank 1 reads 3 (15). A finite
    # epoch would give 4 and 3 batches of 4 and hang DDP; the module gives both ranks ceil(32 / 4 / 2) = 4.
    card = write_episodes(episodes(n_eps=4, steps=8, size=8), tmp_path, "libero_franka", "u", maxcount=5,
                          progress=False)
    assert len(shard_list(load_card(card).urls)) == 7
    batches, keys = {}, {}
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        dm = WebDatasetData(card=str(card), batch_size=4, num_workers=0, image_size=8, shuffle_buffer=0)
        got = [dm.account(b) for b in dm.train_dataloader()]
        batches[rank] = len(got)
        keys[rank] = {k for b in got for k in b["__key__"]}
    assert batches == {0: 4, 1: 4}
    assert not keys[0] & keys[1]  # rank 1 repeats its own shards to fill its epoch, never rank 0's


def test_too_few_shards_for_ranks_times_workers(eight_shards, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ValueError, match=r"8 shard\(s\); .* 4 rank\(s\) × 3 worker\(s\) needs at least 12"):
        WebDatasetData(card=str(eight_shards), batch_size=2, num_workers=3, image_size=8)
