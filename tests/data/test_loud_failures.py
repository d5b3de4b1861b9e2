"""Data that fails loudly and loses nothing silently (issue 18's attacks): a card of garbage raises one clear error
instead of training 0 steps forever; NaN/inf samples and wrong-width arrays are skipped and counted by reason,
never reshaped; a broken shard is counted and named; NaN statistics fail validation and stats writing."""
from __future__ import annotations

import io
import json
import os
import sys
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from helpers import episodes

from xr0.data import load_card, write_episodes
from xr0.data.cards import shard_list
from xr0.data.module import WebDatasetData
from xr0.data.reader import DataError


def _card(tmp_path, **kw):
    return write_episodes(episodes(n_eps=2, steps=6, size=8), tmp_path, "libero_franka", "c", progress=False, **kw)


def _rewrite(shard: Path, edit) -> None:
    """Rewrite a shard member by member; edit(name, bytes) -> bytes or None (drop)."""
    members = []
    with tarfile.open(shard) as tf:
        for m in tf.getmembers():
            members.append((m.name, tf.extractfile(m).read()))
    with tarfile.open(shard, "w") as tf:
        for name, data in members:
            data = edit(name, data)
            if data is None:
                continue
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def _npy(x) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(x, np.float32))
    return buf.getvalue()


def _read(card, **kw):
    dm = WebDatasetData(card=str(card), batch_size=1, num_workers=0, image_size=8, shuffle_buffer=0, **kw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = [dm.account(b) for b in dm.train_dataloader()]
    return dm, batches, [str(w.message) for w in caught]


def test_a_card_of_garbage_raises_naming_the_card(tmp_path):
    card = _card(tmp_path, maxcount=3)
    for s in shard_list(load_card(card).urls):
        Path(s).write_bytes(os.urandom(2000))
    with pytest.raises(DataError, match=r"data card 'c': this rank/worker read no usable sample .*shard\(s\) failed"):
        _read(card)


def test_nan_and_wrong_width_samples_inside_an_intact_shard_are_skipped_by_reason(tmp_path):
    card = _card(tmp_path)
    shard = Path(shard_list(load_card(card).urls)[0])

    def poison(name, data):
        if name == "e0000000_t000001.state.npy":
            return _npy(np.where(np.arange(8) == 5, np.nan, 0.3))  # one NaN among finite values
        if name == "e0000000_t000003.actions.npy":
            return _npy(np.zeros((6, 5)))  # 5 action dims for a 7-dim robot (30 values: reshape would "work")
        if name == "e0000001_t000002.actions.npy":
            a = np.full((4, 7), 0.1)
            a[2, 6] = np.inf
            return _npy(a)
        return data

    _rewrite(shard, poison)
    dm, batches, said = _read(card)
    assert len(batches) == 12 - 3 and dm.counters["robot"] == 9
    assert dm.counters["skipped/non_finite"] == 2 and dm.counters["skipped/bad_shape"] == 1 and dm.skipped == 3
    assert all(np.isfinite(b["state"].numpy()).all() and np.isfinite(b["actions"].numpy()).all() for b in batches)
    assert any("e0000000_t000003" in m and "never reshaped" in m for m in said)
    assert dm.metrics()["data/skipped/non_finite"] == 2.0
    assert dm.counters["source:c"] == 9  # what each card gave, for the mixture report


def test_a_camera_left_out_of_a_sample_is_masked_and_the_others_are_read(tmp_path):
    card = _card(tmp_path)
    shard = Path(shard_list(load_card(card).urls)[0])
    _rewrite(shard, lambda name, data: None if name == "e0000000_t000002.wrist.jpg" else data)
    _, batches, _ = _read(card, shard_shuffle=0)
    masks = [b["image_mask"][0].tolist() for b in batches]
    assert len(batches) == 12 and masks.count([True, False]) == 1 and masks.count([True, True]) == 11
    for b in batches:  # recorded frames are decoded (the episodes' images are not black); a missing one is black
        imgs, m = b["images"][0], b["image_mask"][0]
        assert all(bool(imgs[v].abs().sum() > 0) == bool(m[v]) for v in range(len(m)))


def test_eight_unreadable_shards_before_any_sample_stop_the_card(tmp_path):
    """MAX_EMPTY_SHARDS: a card whose first 8 shard attempts give nothing is broken, and says so at once; once a
    shard gave samples, later broken shards are counted and skipped, never fatal."""
    card = _card(tmp_path, maxcount=1)  # 12 samples: 12 shards
    shards = shard_list(load_card(card).urls)
    for s in shards[:8]:
        Path(s).write_bytes(os.urandom(1500))
    with pytest.raises(DataError, match=r"data card 'c': its first 8 shard attempts gave no readable sample"):
        _read(card, shard_shuffle=0)

    late = _card(tmp_path / "late", maxcount=1)
    shards = shard_list(load_card(late).urls)
    for s in shards[2:11]:  # 9 broken shards after two good ones
        Path(s).write_bytes(os.urandom(1500))
    dm, batches, said = _read(late, shard_shuffle=0)
    assert len(batches) == 3 and dm.counters["shards_failed"] == 9
    assert sum("failed" in m for m in said) == 9


def test_a_truncated_shard_is_counted_and_named(tmp_path):
    card = _card(tmp_path, maxcount=4)
    shards = shard_list(load_card(card).urls)
    data = Path(shards[1]).read_bytes()
    Path(shards[1]).write_bytes(data[: len(data) // 2 + 100])
    dm, batches, said = _read(card)
    assert 8 <= len(batches) < 12 and dm.counters["shards_failed"] == 1
    assert any(Path(shards[1]).name in m and "failed" in m for m in said)


def test_nan_statistics_fail_validation_with_the_fix(tmp_path):
    from xr0.config import RecipeError, load_recipe, validate

    card = _card(tmp_path)
    stats_path = Path(load_card(card).stats_path)
    st = json.loads(stats_path.read_text())
    st["state"]["std"][0] = float("nan")
    stats_path.write_text(json.dumps(st))
    with pytest.raises(RecipeError, match=r"state.std hold NaN.*rerun `xr0 data stats c`"):
        validate(load_recipe("recipes/tiny/stage2.yaml", [f"data={{name: webdataset, card: {card}, chunk: 4}}"]))


def test_episodes_with_nan_are_refused_at_write_time_and_stats_skip_bad_samples(tmp_path):
    from xr0.data.tools import compute_stats

    eps = episodes(n_eps=1, steps=5, size=8)
    eps[0]["state"][3, 2] = np.nan
    with pytest.raises(ValueError, match="episode 0: state has NaN or inf \\(first at step 3\\)"):
        write_episodes(eps, tmp_path / "bad", "libero_franka", "bad", progress=False)
    card = _card(tmp_path / "ok")
    shard = Path(shard_list(load_card(card).urls)[0])
    _rewrite(shard, lambda n, d: _npy(np.full(8, np.nan)) if n == "e0000000_t000000.state.npy" else d)
    with pytest.warns(UserWarning, match="1 samples with NaN/inf or the wrong shape were left out"):
        stats = compute_stats(str(card), progress=False)
    assert stats["state"]["count"] == 11 and np.isfinite(stats["state"]["mean"]).all()
