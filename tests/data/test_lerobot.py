"""LeRobot import on folders generated here with pyarrow / PyAV: v3 inline and mp4, versions refused, the\ncard-less path (the stock cards are covered end to end in test_lerobot_cards.py)."""
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pa = pytest.importorskip("pyarrow", reason="the LeRobot importer reads parquet with pyarrow")
import pyarrow.parquet as pq

from xr0.cli import main
from xr0.data import load_card
from xr0.data.module import WebDatasetData


def _png(img):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def make_v3(root: Path, lengths=(7, 5), seed=0):
    """Two episodes in one data file, as lerobot v3 lays them out (meta/info.json, tasks, data/chunk/file)."""
    rng = np.random.default_rng(seed)
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    (root / "data" / "chunk-000").mkdir(parents=True)
    info = {"codebase_version": "v3.0", "fps": 30, "robot_type": "example", "total_episodes": len(lengths),
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
            "features": {"observation.state": {"dtype": "float32", "shape": [7]},
                         "action": {"dtype": "float32", "shape": [7]},
                         "observation.images.top": {"dtype": "image", "shape": [10, 12, 3]},
                         "observation.images.hand": {"dtype": "image", "shape": [10, 12, 3]},
                         "timestamp": {"dtype": "float32", "shape": [1]}, "frame_index": {"dtype": "int64", "shape": [1]},
                         "episode_index": {"dtype": "int64", "shape": [1]}, "task_index": {"dtype": "int64", "shape": [1]}}}
    (root / "meta" / "info.json").write_text(json.dumps(info))
    pq.write_table(pa.table({"task_index": [0, 1], "task": ["stack the cups", "open the lid"]}), root / "meta" / "tasks.parquet")
    cols = {k: [] for k in ("episode_index", "frame_index", "timestamp", "task_index", "observation.state", "action",
                            "observation.images.top", "observation.images.hand")}
    truth = []
    for e, n in enumerate(lengths):
        state = rng.normal(size=(n, 7)).astype(np.float32)
        action = rng.normal(size=(n, 7)).astype(np.float32)
        truth.append((state, action))
        for i in range(n):  # stored out of order: the importer must sort by frame_index
            j = n - 1 - i
            cols["episode_index"].append(e)
            cols["frame_index"].append(j)
            cols["timestamp"].append(j / 30)
            cols["task_index"].append(e)
            cols["observation.state"].append(state[j].tolist())
            cols["action"].append(action[j].tolist())
            for cam in ("top", "hand"):
                img = np.full((10, 12, 3), 20 * j + (100 if cam == "hand" else 0), np.uint8)
                cols[f"observation.images.{cam}"].append({"bytes": _png(img), "path": None})
    pq.write_table(pa.table(cols), root / "data" / "chunk-000" / "file-000.parquet")
    pq.write_table(pa.table({"episode_index": list(range(len(lengths))), "length": list(lengths)}),
                   root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    return truth


def test_from_lerobot_v3(tmp_path, capsys):
    truth = make_v3(tmp_path / "ds")
    assert main(["data", "from-lerobot", str(tmp_path / "ds"), "--embodiment", "libero_franka", "--out",
                 str(tmp_path / "out"), "--camera", "agentview=observation.images.top",
                 "--camera", "wrist=observation.images.hand"]) == 2  # libero_franka has an 8-D state
    assert "feature 'observation.state' has 7 dims; embodiment 'libero_franka' has 8 state dims" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything was written
    assert main(["data", "from-lerobot", str(tmp_path / "ds"), "--embodiment", "example_arm", "--name", "lr",
                 "--out", str(tmp_path / "out"), "--camera", "scene=observation.images.top",
                 "--camera", "wrist=observation.images.hand"]) == 0
    card = load_card(tmp_path / "out" / "lr.yaml")
    assert card.fps == 30.0 and card.num_samples == 12 and card.cameras == ("scene", "wrist")
    dm = WebDatasetData(card=str(card.path), batch_size=12, num_workers=0, image_size=(10, 12), shuffle_buffer=0)
    b = dm.account(next(iter(dm.train_dataloader())))
    assert b["instruction"][:7] == ["stack the cups"] * 7 and b["instruction"][7:] == ["open the lid"] * 5
    # the state comes back exactly (normalisation undone); frames in frame order, each camera its own stream
    from xr0.data import load_stats

    st = load_stats(card.stats_path)["state"]
    state = b["state"][:, :7].numpy() * np.where(st["std"][:7] < 1e-6, 1, st["std"][:7]) + st["mean"][:7]
    assert np.allclose(state, np.concatenate([truth[0][0], truth[1][0]]), atol=1e-5)
    top = b["images"][:7, 0, 0, 0, 0].numpy() * 255
    assert np.allclose(top, [20 * j for j in range(7)], atol=3)  # JPEG re-encoding: a few levels off at most
    hand = b["images"][:7, 1, 0, 0, 0].numpy() * 255
    assert np.allclose(hand, [100 + 20 * j for j in range(7)], atol=3)


@pytest.mark.parametrize("version", ["v1.6", "v2.5", "v4.0", ""])
def test_unknown_versions_are_refused_in_one_line(tmp_path, version, capsys):
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "info.json").write_text(json.dumps({"codebase_version": version, "fps": 30, "features": {}}))
    assert main(["data", "from-lerobot", str(tmp_path), "--embodiment", "example_arm", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"codebase_version {version!r}" in err and "v2.0, v2.1, v3.0" in err


def test_v1_layout_and_non_dataset_are_explained(tmp_path):
    from xr0.data.lerobot import read_info

    (tmp_path / "meta_data").mkdir()
    (tmp_path / "meta_data" / "info.json").write_text(json.dumps({"codebase_version": "v1.6", "fps": 50}))
    with pytest.raises(ValueError, match="LeRobot v1.x folder"):
        read_info(tmp_path)
    with pytest.raises(FileNotFoundError, match="no meta/info.json"):
        read_info(tmp_path / "meta_data")


def _write_mp4(path: Path, frames: np.ndarray, fps: int = 30):
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264", rate=fps)
        st.width, st.height, st.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        st.options = {"g": "4"}  # a keyframe every 4 frames, so the importer's seek lands mid-file
        for f in frames:
            for pkt in st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)


def test_from_lerobot_v3_videos(tmp_path):
    """`video` features: both episodes share one mp4 per camera; each episode's frames start at its
    from_timestamp (meta/episodes), as lerobot v3 writes them."""
    pytest.importorskip("av", reason="decoding LeRobot mp4 videos needs PyAV (pip install av)")
    root, lengths = tmp_path / "vid", (8, 6)
    truth = make_v3(root, lengths)
    info = json.loads((root / "meta" / "info.json").read_text())
    for cam in ("top", "hand"):
        info["features"][f"observation.images.{cam}"] = {"dtype": "video", "shape": [32, 48, 3]}
    (root / "meta" / "info.json").write_text(json.dumps(info))
    data = pq.read_table(root / "data" / "chunk-000" / "file-000.parquet")
    pq.write_table(data.drop(["observation.images.top", "observation.images.hand"]),
                   root / "data" / "chunk-000" / "file-000.parquet")
    total = sum(lengths)
    level = {"top": lambda g: 12 * g, "hand": lambda g: 250 - 12 * g}  # frame g of the file: a flat grey
    for cam in ("top", "hand"):
        frames = np.stack([np.full((32, 48, 3), level[cam](g), np.uint8) for g in range(total)])
        _write_mp4(root / "videos" / f"observation.images.{cam}" / "chunk-000" / "file-000.mp4", frames)
    starts = [0, lengths[0]]
    ep = {"episode_index": [0, 1], "length": list(lengths)}
    for cam in ("top", "hand"):
        ep[f"videos/observation.images.{cam}/chunk_index"] = [0, 0]
        ep[f"videos/observation.images.{cam}/file_index"] = [0, 0]
        ep[f"videos/observation.images.{cam}/from_timestamp"] = [s / 30 for s in starts]
    pq.write_table(pa.table(ep), root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")

    from xr0.data.lerobot import iter_episodes

    eps = list(iter_episodes(root, {"scene": "observation.images.top", "wrist": "observation.images.hand"}))
    assert [len(e["actions"]) for e in eps] == list(lengths)
    for e, (state, action), s0 in zip(eps, truth, starts):
        assert np.allclose(e["state"], state) and np.allclose(e["actions"], action)
        assert e["images"]["scene"].shape == (len(state), 32, 48, 3)
        got_top = e["images"]["scene"][:, 16, 24, 0].astype(int)
        got_hand = e["images"]["wrist"][:, 16, 24, 0].astype(int)
        want = np.arange(s0, s0 + len(state))
        assert np.abs(got_top - level["top"](want)).max() <= 4  # the right frame, up to lossy coding
        assert np.abs(got_hand - level["hand"](want)).max() <= 4
    assert main(["data", "from-lerobot", str(root), "--embodiment", "example_arm", "--name", "v", "--out",
                 str(tmp_path / "out"), "--camera", "scene=observation.images.top"]) == 0
    assert load_card(tmp_path / "out" / "v.yaml").num_samples == total


def test_from_lerobot_written_by_lerobot(tmp_path):
    """A dataset made by lerobot's own writer (LeRobotDataset.create / add_frame / save_episode, v3 layout).
    lerobot >= 0.4 (the v3 format) pins torch < 2.8 and needs torchvision, neither of which installs beside
    xr0's torch 2.13 CPU here: then this test is skipped and the pyarrow-generated layouts above stand in."""
    try:
        from lerobot.datasets.lerobot_dataset import LeRobotDataset
    except (ImportError, RuntimeError) as exc:  # not installed, or torchvision failing to load its ops
        pytest.skip(f"lerobot's dataset writer is not importable beside this torch ({type(exc).__name__}: {exc})")
    feats = {"observation.state": {"dtype": "float32", "shape": (7,), "names": None},
             "action": {"dtype": "float32", "shape": (7,), "names": None},
             "observation.images.top": {"dtype": "image", "shape": (10, 12, 3), "names": ["height", "width", "channels"]}}
    ds = LeRobotDataset.create("xr0/test", fps=30, features=feats, root=tmp_path / "lr", use_videos=False)
    rng = np.random.default_rng(0)
    actions = []
    for n, task in ((6, "stack the cups"), (4, "open the lid")):
        for _ in range(n):
            a = rng.normal(size=7).astype(np.float32)
            actions.append(a)
            ds.add_frame({"observation.state": rng.normal(size=7).astype(np.float32), "action": a, "task": task,
                          "observation.images.top": rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)})
        ds.save_episode()
    ds.finalize()
    assert main(["data", "from-lerobot", str(tmp_path / "lr"), "--embodiment", "example_arm", "--name", "lr",
                 "--out", str(tmp_path / "out"), "--camera", "scene=observation.images.top"]) == 0
    card = load_card(tmp_path / "out" / "lr.yaml")
    assert card.num_samples == 10
    from xr0.data.lerobot import iter_episodes

    eps = list(iter_episodes(tmp_path / "lr", {"scene": "observation.images.top"}))
    assert [e["instruction"] for e in eps] == ["stack the cups", "open the lid"]
    assert np.allclose(np.concatenate([e["actions"] for e in eps]), np.stack(actions))
