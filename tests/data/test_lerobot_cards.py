"""Each stock LeRobot card end to end, from the user's side: a tiny folder in exactly that dataset's published
layout → `xr0 data from-lerobot PATH --card NAME` → `xr0 data stats NAME` (checked against numpy by hand) →
streamed through the reader (states, frames, instructions in order) → `xr0 validate` and one `xr0 fit` step of
the stock recipe that names the card."""
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="the LeRobot importer reads parquet with pyarrow")
pytest.importorskip("av", reason="the LeRobot importer decodes mp4 with PyAV")

sys.path.insert(0, str(Path(__file__).parent))
import lerobot_layouts as L

from xr0 import embodiments
from xr0.cli import main
from xr0.data import load_card, load_stats

RECIPES = Path(__file__).parents[2] / "recipes"
TASKS = ["put the bowl on the plate", "open the top drawer and put the bowl inside"]

# card, layout, episode lengths (source frames), recipe (+ overrides) that trains on it
CASES = {
    "libero_openpi": (L.libero_openpi, (12, 5, 8), "post_train_libero.yaml", []),
    "libero_lerobot": (L.libero_lerobot, (11, 4, 6), "post_train_libero.yaml", ["data.card=libero_lerobot"]),
    "libero_lerobot[image]": (lambda: L.libero_lerobot(dtype="image"), (5, 6, 4), "post_train_libero.yaml",
                              ["data.card=libero_lerobot"]),
    "bridge_orig_lerobot": (L.bridge_orig_lerobot, (5, 3, 4), "post_train_simpler.yaml", []),
    "aloha_static_vinh_cup_left": (L.aloha_static, (21, 13, 17), "post_train_bimanual_30hz.yaml", []),
}


def by_hand(episodes, layout, card):
    """What the import must produce, computed here with numpy: per episode the source frame of every output
    frame (nearest timestamp on the card's rate when it differs from the dataset's), then every sample's state,
    its future chunk and its instruction."""
    out = []
    for ep in episodes:
        n = len(ep.state)
        ts = (np.arange(n, dtype=np.float32) / np.float32(layout.fps)).astype(np.float64)  # as stored
        if card.fps == layout.fps:
            idx = np.arange(n)
        else:
            m = int(np.floor((ts[-1] - ts[0]) * card.fps + 0.5)) + 1
            idx = np.array([np.argmin(np.abs(ts - (ts[0] + i / card.fps))) for i in range(m)])
        out.append({"idx": idx, "state": ep.state[idx], "action": ep.action[idx], "task": ep.task})
    return out


def hand_stats(expected, emb, chunk):
    states = np.concatenate([e["state"] for e in expected]).astype(np.float64)
    per_step = [[] for _ in range(chunk)]
    rel = np.array([bool(r) for r in emb.relative] or [False] * emb.action_dim)
    for e in expected:
        for t in range(len(e["state"])):
            for k in range(min(chunk, len(e["state"]) - t)):
                per_step[k].append(e["action"][t + k] - np.where(rel, e["state"][t][: emb.action_dim], 0))
    return states, [np.asarray(v, np.float64) for v in per_step]


@pytest.mark.parametrize("case", list(CASES))
def test_card_imports_streams_and_trains(case, tmp_path, monkeypatch):
    from xr0.data.module import WebDatasetData
    from xr0.run import fit

    name = case.split("[")[0]
    make_layout, lengths, recipe, extra = CASES[case]
    layout = make_layout()
    monkeypatch.setenv("XR0_DATA", str(tmp_path / "data"))
    card = load_card(name, check_files=False)
    emb = embodiments.get(card.embodiment)
    episodes = L.make_episodes(layout, lengths, TASKS, relative_like=any(emb.relative))
    src = L.write(tmp_path / "download", layout, episodes)

    assert main(["validate", str(RECIPES / recipe), *[f"--set={o}" for o in extra]]) == 1  # no shards yet
    assert main(["data", "from-lerobot", str(src), "--card", name]) == 0
    assert main(["data", "stats", name]) == 0
    card = load_card(name)
    expected = by_hand(episodes, layout, card)
    total = sum(len(e["idx"]) for e in expected)
    assert card.num_samples == total

    # statistics: `xr0 data stats` against numpy on the by-hand samples (canonical slots 0..S-1 / 0..A-1)
    stats = load_stats(card.stats_path)
    states, steps = hand_stats(expected, emb, card.chunk)
    S, A = emb.state_dim, emb.action_dim
    assert np.allclose(stats["state"]["mean"][:S], states.mean(0), atol=1e-5)
    assert np.allclose(stats["state"]["std"][:S], states.std(0), atol=1e-5)
    assert np.allclose(stats["state"]["q99"][:S], np.quantile(states, 0.99, axis=0), atol=1e-5)
    for k, v in enumerate(steps):
        assert stats["actions"]["count"][k] == len(v)
        if not len(v):  # longer than every episode
            continue
        assert np.allclose(stats["actions"]["mean"][k][:A], v.mean(0), atol=1e-5)
        assert np.allclose(stats["actions"]["std"][k][:A], v.std(0), atol=1e-5)
        assert np.allclose(stats["actions"]["q01"][k][:A], np.quantile(v, 0.01, axis=0), atol=1e-5)
    assert not stats["actions"]["mean"][:, A:].any()  # padding dims stay zero

    # streamed through the reader, in order: instructions, states (de-normalised) and the right frame per camera
    h, w = next(v for v in layout.features.values() if v["dtype"] in ("image", "video"))["shape"][:2]
    dm = WebDatasetData(card=name, batch_size=total, num_workers=0, image_size=(h, w), shuffle_buffer=0,
                        shard_shuffle=0)
    b = dm.account(next(iter(dm.train_dataloader())))
    assert b["instruction"] == [e["task"] for e in expected for _ in e["idx"]]
    st = load_stats(card.stats_path)["state"]
    std = np.where(st["std"][:S] < 1e-6, 1.0, st["std"][:S])  # constant dims normalise by 1
    got = b["state"][:, :S].numpy() * std + st["mean"][:S]
    assert np.allclose(got, np.concatenate([e["state"] for e in expected]), atol=1e-4)
    visual = [k for k, v in layout.features.items() if v["dtype"] in ("image", "video")]
    for v, cam in enumerate(card.cameras):
        feature = next(f for f, c in card.source_keys.items() if c == cam)
        i = visual.index(feature)
        want = np.concatenate([episodes[j].frames[feature][e["idx"], h // 2, w // 2] for j, e in enumerate(expected)])
        px = b["images"][:, v, :, h // 2, w // 2].numpy() * 255  # (B, 3)
        assert np.abs(px - want).max() <= 8, (cam, px[:, 0], want[:, 0])  # AV1 + JPEG: a few levels off
        assert np.abs(want[:, 2] - L.camera_blue(i)).max() == 0  # the test's own frames are what it thinks

    # the stock recipe naming the card validates now, and trains a step on it
    assert main(["validate", str(RECIPES / recipe), *[f"--set={o}" for o in extra]]) == 0
    out = fit(str(RECIPES / recipe), [*extra,
        "stage.init_from=null", "_tiny_vlm={name: qwen3vl, tiny: {}}", "stage.backbone=${_tiny_vlm}",
        "stage.head.width=32", "stage.head.depth=2", "stage.head.head_dim=32", "data.batch_size=2",
        "data.num_workers=0", "data.image_size=28", "data.shuffle_buffer=4", "trainer.max_steps=1",
        "trainer.accelerator=cpu", "trainer.devices=1", "trainer.num_nodes=1", "trainer.precision=32",
        "trainer.strategy=auto", "trainer.accumulate_grad_batches=1", "trainer.enable_progress_bar=false",
        "run.checkpoint_every_n_steps=1", f"run.out_dir={tmp_path / 'run'}"])
    import torch

    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 1 and ckpt["xr0_embodiment"] == card.embodiment
    assert np.allclose(ckpt["xr0_stats"]["state"]["mean"][:S], states.mean(0), atol=1e-5)
