"""LeRobot v3 dataset (local folder) → xr0 shards + card + stats, without the lerobot package.

The documented v3 layout read here:
  meta/info.json                          codebase_version "v3.0", fps, features {name: {dtype, shape, names}}
  meta/tasks.parquet                      task_index → task (the instruction)
  data/chunk-*/file-*.parquet             one row per frame: episode_index, frame_index, timestamp, task_index,
                                          observation.state, action, and `image` features as {bytes, path}
  videos/<key>/chunk-*/file-*.mp4         `video` features; meta/episodes/chunk-*/file-*.parquet gives each
                                          episode's file (videos/<key>/chunk_index, file_index) and from_timestamp
Video frames are decoded with PyAV (`pip install av`) and matched to frame timestamps by nearest timestamp.
"""
from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


def _pq():
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError("reading LeRobot parquet files needs pyarrow: pip install pyarrow") from exc
    return pq


def read_info(root: Path) -> dict[str, Any]:
    path = root / "meta" / "info.json"
    if not path.is_file():
        raise FileNotFoundError(f"{root}: no meta/info.json — not a LeRobot dataset folder")
    info = json.loads(path.read_text())
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3"):
        raise ValueError(f"{root}: LeRobot codebase_version {version!r}; this importer reads v3.x "
                         f"(convert older datasets with lerobot's convert_dataset_v21_to_v30 script)")
    return info


def _tasks(root: Path) -> dict[int, str]:
    path = root / "meta" / "tasks.parquet"
    if not path.is_file():
        return {}
    t = _pq().read_table(path).to_pydict()
    names = t.get("task") or t.get("__index_level_0__") or next((v for v in t.values() if v and isinstance(v[0], str)), [])
    return dict(zip(t["task_index"], names))


def _episode_meta(root: Path) -> dict[int, dict[str, Any]]:
    out = {}
    for f in sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet")):
        rows = _pq().read_table(f).to_pylist()
        out.update({int(r["episode_index"]): r for r in rows})
    return out


def _video_frames(path: Path, timestamps: np.ndarray) -> np.ndarray:
    """Frames of `path` nearest to `timestamps` (seconds in the file). v3 files hold many episodes back to
    back, so seek to the episode's first timestamp and stop decoding one frame past its last."""
    try:
        import av
    except ImportError as exc:
        raise ImportError(f"{path}: decoding LeRobot mp4 videos needs PyAV: pip install av") from exc
    from xr0.data.resample import resample

    frames, stamps = [], []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        tb = float(stream.time_base)
        rate = float(stream.average_rate or 30)
        start, stop = float(timestamps[0]) - 1.0 / rate, float(timestamps[-1]) + 1.0 / rate
        if start > 0:  # lands on the keyframe at or before `start`; frames before it are dropped below
            container.seek(int(start / tb), stream=stream, backward=True, any_frame=False)
        for fr in container.decode(stream):
            t = float(fr.pts * tb)
            if t < start:
                continue
            frames.append(fr.to_ndarray(format="rgb24"))
            stamps.append(t)
            if t > stop:
                break
    if not frames:
        raise ValueError(f"{path}: no video frames between {timestamps[0]:.3f} s and {timestamps[-1]:.3f} s")
    return resample(np.asarray(stamps), np.stack(frames), timestamps)


def iter_episodes(root: str | Path, cameras: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """Episodes as write_episodes wants them. cameras: xr0 camera name → LeRobot feature key
    (default: every image/video feature, named by its last dotted part)."""
    from PIL import Image

    root = Path(root)
    info = read_info(root)
    feats = info["features"]
    visual = {k: v for k, v in feats.items() if v.get("dtype") in ("image", "video")}
    cameras = cameras or {k.split(".")[-1]: k for k in visual}
    for cam, key in cameras.items():
        if key not in visual:
            raise ValueError(f"camera '{cam}': feature '{key}' is not an image/video feature; have {sorted(visual)}")
    for k in ("observation.state", "action"):
        if k not in feats:
            raise ValueError(f"{root}: feature '{k}' missing from meta/info.json")
    tasks, ep_meta = _tasks(root), _episode_meta(root)
    files = sorted((root / "data").glob("chunk-*/file-*.parquet"))
    if not files:
        raise FileNotFoundError(f"{root}: no data/chunk-*/file-*.parquet files")
    for f in files:
        table = _pq().read_table(f).to_pydict()
        ep_col = np.asarray(table["episode_index"])
        for ep in np.unique(ep_col):
            rows = np.flatnonzero(ep_col == ep)
            rows = rows[np.argsort(np.asarray(table["frame_index"])[rows])]
            ts = np.asarray(table["timestamp"], np.float64)[rows]
            images = {}
            for cam, key in cameras.items():
                if visual[key]["dtype"] == "image":
                    images[cam] = np.stack([np.asarray(Image.open(io.BytesIO(table[key][r]["bytes"])).convert("RGB"))
                                            for r in rows])
                else:
                    m = ep_meta[int(ep)]
                    vid = root / info["video_path"].format(video_key=key, chunk_index=m[f"videos/{key}/chunk_index"],
                                                           file_index=m[f"videos/{key}/file_index"])
                    images[cam] = _video_frames(vid, ts + float(m[f"videos/{key}/from_timestamp"]))
            task_idx = int(table["task_index"][rows[0]]) if "task_index" in table else None
            instruction = tasks.get(task_idx, "") if task_idx is not None else ""
            yield {"images": images, "instruction": instruction,
                   "state": np.asarray([table["observation.state"][r] for r in rows], np.float32),
                   "actions": np.asarray([table["action"][r] for r in rows], np.float32)}


def from_lerobot(root: str | Path, out_dir: str | Path, embodiment: str, name: str | None = None,
                 cameras: dict[str, str] | None = None, maxcount: int = 1000, progress: bool = True) -> Path:
    """Convert a local LeRobot v3 dataset into shards + card + stats; returns the card path."""
    from xr0.data.writer import write_episodes

    root = Path(root)
    info = read_info(root)
    eps = iter_episodes(root, cameras)
    first = next(eps)
    cams = list(first["images"])

    def chained():
        yield first
        yield from eps

    return write_episodes(chained(), out_dir, embodiment, name or root.name, fps=float(info["fps"]), cameras=cams,
                          maxcount=maxcount, license=str(info.get("license", "see source")),
                          source=f"LeRobot {info.get('codebase_version')} dataset {root}", progress=progress)
