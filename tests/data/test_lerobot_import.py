"""`xr0 data from-lerobot` as a long job: a killed import keeps its finished shards and a rerun continues to
the same result; a rerun with other options is refused; v2.1 reads like v2.0; --fps resamples; broken
videos and key maps are one-line errors."""
import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="the LeRobot importer reads parquet with pyarrow")

sys.path.insert(0, str(Path(__file__).parent))
import lerobot_layouts as L

from xr0.cli import main
from xr0.data import load_card
from xr0.data.lerobot import LeRobotFolder, iter_episodes
from xr0.data.lerobot_import import from_lerobot

TASKS = ["stack the cups", "open the lid"]


def _samples(card) -> list[tuple]:
    import webdataset as wds

    return [(s["__key__"], s["state.npy"], s["actions.npy"], s["meta.json"], s["agentview.jpg"], s["wrist.jpg"])
            for s in wds.WebDataset(card.urls, shardshuffle=False, empty_check=False)]


def test_killed_import_keeps_finished_shards_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("XR0_DATA", str(tmp_path / "data"))
    layout = L.libero_openpi(hw=(16, 16))
    src = L.write(tmp_path / "dl", layout, L.make_episodes(layout, (6, 5, 7, 4, 6, 3), TASKS))
    out = tmp_path / "data" / "libero_openpi"

    calls = {"n": 0}
    real = LeRobotFolder.read_episode

    def dies_at_the_fourth_episode(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # what a Ctrl-C or a kill mid-import looks like to the writer
        return real(self, *a, **k)

    monkeypatch.setattr(LeRobotFolder, "read_episode", dies_at_the_fourth_episode)
    with pytest.raises(KeyboardInterrupt):
        from_lerobot(src, card="libero_openpi", maxcount=12, progress=False)
    plan = [[0, 1], [2, 3], [4, 5]]  # parts of at most 12 samples, whole episodes
    assert sorted(p.name for p in out.glob("libero_openpi-*.tar")) == ["libero_openpi-000000.tar"]
    first = out / "libero_openpi-000000.tar"
    kept = (first.stat().st_mtime_ns, first.read_bytes())

    monkeypatch.setattr(LeRobotFolder, "read_episode", real)
    calls["n"] = 0
    assert main(["data", "from-lerobot", str(src), "--card", "libero_openpi", "--maxcount", "12"]) == 0
    assert (first.stat().st_mtime_ns, first.read_bytes()) == kept  # the finished shard was not rewritten
    assert not (out / ".libero_openpi.import").exists()
    resumed = _samples(load_card("libero_openpi"))
    assert len(list(out.glob("libero_openpi-*.tar"))) == len(plan)

    monkeypatch.setenv("XR0_DATA", str(tmp_path / "clean"))  # the same import in one go
    from_lerobot(src, card="libero_openpi", maxcount=12, progress=False)
    assert resumed == _samples(load_card("libero_openpi"))
    assert len(resumed) == 31


def test_rerun_with_other_options_or_foreign_shards_is_refused(tmp_path, capsys):
    layout = L.aloha_static(hw=(16, 16))
    src = L.write(tmp_path / "dl", layout, L.make_episodes(layout, (9, 7), TASKS))
    args = ["data", "from-lerobot", str(src), "--embodiment", "bimanual_30hz", "--out", str(tmp_path / "o"),
            "--camera", "head=observation.images.cam_high"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "recorded at 50 Hz and 'bimanual_30hz' runs at 30 Hz; kept at 50 Hz (--fps 30 resamples)" in err
    assert load_card(tmp_path / "o" / "dl.yaml").num_samples == 16
    before = {p: p.read_bytes() for p in (tmp_path / "o").iterdir() if p.is_file()}
    assert main(args) == 0  # the same command again: nothing to do but the statistics
    assert main(args + ["--fps", "30"]) == 2
    assert "made with other options (fps 50.0 there, 30.0 now; dl.import.json)" in capsys.readouterr().err
    after = {p: p.read_bytes() for p in (tmp_path / "o").iterdir() if p.is_file()}
    assert after == before  # refusing wrote nothing

    (tmp_path / "o2").mkdir()
    (tmp_path / "o2" / "dl-000000.tar").write_bytes(b"someone else's shard")
    assert main(["data", "from-lerobot", str(src), "--embodiment", "bimanual_30hz", "--out", str(tmp_path / "o2"),
                 "--camera", "head=observation.images.cam_high"]) == 2
    assert "already holds dl-*.tar shards that no import plan" in capsys.readouterr().err
    assert (tmp_path / "o2" / "dl-000000.tar").read_bytes() == b"someone else's shard"


def test_fps_resamples_each_episode_on_its_own_timeline(tmp_path):
    layout = L.aloha_static(hw=(16, 16))
    eps = L.make_episodes(layout, (21, 8), TASKS, relative_like=True)
    src = L.write(tmp_path / "dl", layout, eps)
    card = from_lerobot(src, tmp_path / "o", "bimanual_30hz", cameras={"head": "observation.images.cam_high"},
                        fps=30, progress=False)
    card = load_card(card)
    assert card.fps == 30 and card.num_samples == 13 + 5  # 20/50 s and 7/50 s at 30 Hz, both ends included
    got = list(iter_episodes(src, {"head": "observation.images.cam_high"}, fps=30))
    src_t = [np.arange(len(e.state)) / 50 for e in eps]
    for e, g, ts in zip(eps, got, src_t):
        want = [int(np.argmin(np.abs(ts - t))) for t in np.arange(len(g["state"])) / 30]
        assert np.array_equal(g["state"], e.state[want]) and np.array_equal(g["actions"], e.action[want])
        level = g["images"]["head"][:, 8, 8, 0].astype(int)
        assert np.abs(level - e.frames["observation.images.cam_high"][want, 8, 8, 0]).max() <= 6


def test_v21_reads_like_v20(tmp_path):
    eps = L.make_episodes(L.libero_openpi(hw=(16, 16)), (4, 6), TASKS)
    read = {}
    for version in ("v2.0", "v2.1"):
        layout = L.libero_openpi(hw=(16, 16))
        layout.version = version
        read[version] = list(iter_episodes(L.write(tmp_path / version, layout, eps), {"a": "image", "w": "wrist_image"}))
    assert (tmp_path / "v2.1" / "meta" / "episodes_stats.jsonl").is_file()
    for a, b in zip(read["v2.0"], read["v2.1"]):
        assert a["instruction"] == b["instruction"] and np.array_equal(a["state"], b["state"])
        assert np.array_equal(a["images"]["a"], b["images"]["a"])  # PNG frames inline: exact
    assert [r["instruction"] for r in read["v2.0"]] == TASKS


def test_broken_videos_and_key_maps_are_one_line_errors(tmp_path, capsys):
    pytest.importorskip("av", reason="decoding mp4 needs PyAV")
    layout = L.bridge_orig_lerobot(hw=(16, 16))
    eps = L.make_episodes(layout, (5, 6), TASKS)
    src = L.write(tmp_path / "dl", layout, eps)
    base = ["data", "from-lerobot", str(src), "--embodiment", "simpler_widowx", "--out", str(tmp_path / "o")]

    assert main(base + ["--camera", "image=observation.images.image_9"]) == 2
    assert "'observation.images.image_9' is not an image/video feature" in capsys.readouterr().err
    assert main(base + ["--camera", "image"]) == 2
    assert "write XR0_NAME=FEATURE" in capsys.readouterr().err

    short = src / L.V2_VIDEO.format(episode_chunk=0, video_key="observation.images.image_0", episode_index=1)
    L.write_mp4(short, eps[1].frames["observation.images.image_0"][:3], 5)  # 3 of the episode's 6 frames
    assert main(base + ["--camera", "image=observation.images.image_0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "the video ends before t=0.600 s" in err[-1] and str(short) in err[-1]

    os.remove(short)
    assert main(base + ["--camera", "image=observation.images.image_0", "--name", "b"]) == 2
    assert "video file missing" in capsys.readouterr().err


def test_card_key_map_must_cover_every_camera(tmp_path):
    from xr0.data.cards import CardError

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nshards: $XR0_DATA/bad/bad-*.tar\nembodiment: libero_franka\nchunk: 10\n"
                   "stats: $XR0_DATA/bad/bad.stats.json\ncameras: [agentview, wrist]\n"
                   "source_keys: {image: agentview, state: state, actions: actions, extra: elbow}\n")
    with pytest.raises(CardError) as err:
        load_card(bad, check_files=False)
    assert "'elbow' is not state, actions or one of the cameras" in str(err.value)
    assert "map exactly one source feature to 'wrist' (found 0)" in str(err.value)


def test_inline_png_is_exact(tmp_path):
    """Inline frames go PNG → array without loss (only the shards' JPEG is lossy)."""
    from PIL import Image

    layout = L.libero_openpi(hw=(16, 16))
    eps = L.make_episodes(layout, (3,), TASKS)
    noisy = np.random.default_rng(0).integers(0, 255, (3, 16, 16, 3), dtype=np.uint8)
    eps[0].frames["image"] = noisy
    src = L.write(tmp_path / "dl", layout, eps)
    got = next(iter_episodes(src, {"a": "image"}))["images"]["a"]
    assert np.array_equal(got, noisy)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(L._png(noisy[0])))), noisy[0])
