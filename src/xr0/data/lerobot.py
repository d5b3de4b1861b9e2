"""Read local LeRobot datasets (v2.0, v2.1, v3.0) without the lerobot package: one episode at a time as arrays.

Every layout is described by meta/info.json (codebase_version, fps, chunks_size, data_path, video_path and
features {name: {dtype, shape, names}}); every parquet row is one frame (episode_index, frame_index,
timestamp, task_index and the features). Where the versions differ:
  v2.0, v2.1  data/chunk-XXX/episode_NNNNNN.parquet       one file per episode (chunk = episode // chunks_size)
              videos/chunk-XXX/<key>/episode_NNNNNN.mp4    one file per episode and `video` feature, from t = 0
              meta/episodes.jsonl {episode_index, tasks, length}, meta/tasks.jsonl {task_index, task};
              v2.1 only adds meta/episodes_stats.jsonl, which is not needed here
  v3.0        data/chunk-XXX/file-XXX.parquet             many episodes per file
              videos/<key>/chunk-XXX/file-XXX.mp4          many episodes per file, back to back: meta/episodes/
                                                          chunk-XXX/file-XXX.parquet gives each episode's file
                                                          (videos/<key>/chunk_index, file_index, from_timestamp)
              meta/tasks.parquet (task string → task_index)
`image` features are inline in the parquet as {bytes, path} (PNG or JPEG bytes); `video` features are decoded
with PyAV (`pip install av`) and matched to each frame's timestamp (the nearest video frame, which must lie
within one frame period).
"""
from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

VERSIONS = ("v2.0", "v2.1", "v3.0")
STATE_KEYS = ("observation.state", "state")  # LeRobot's convention first, then openpi's LIBERO conversion
ACTION_KEYS = ("action", "actions")


def _pq():
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError("reading LeRobot parquet files needs pyarrow: pip install 'xr0[lerobot]'") from exc
    return pq


def read_info(root: str | Path) -> dict[str, Any]:
    """meta/info.json of a LeRobot folder, after checking it is a version this module reads."""
    root = Path(root)
    path = root / "meta" / "info.json"
    if not path.is_file():
        if (root / "meta_data" / "info.json").is_file():
            raise ValueError(f"{root}: a LeRobot v1.x folder (meta_data/); convert it to v2.x or v3.0 with "
                             f"lerobot's dataset conversion scripts, or download a newer revision")
        raise FileNotFoundError(f"{root}: no meta/info.json, so not a LeRobot dataset folder")
    info = json.loads(path.read_text())
    version = str(info.get("codebase_version", ""))
    if version not in VERSIONS:
        raise ValueError(f"{path}: codebase_version {version!r}; xr0 reads LeRobot {', '.join(VERSIONS)} "
                         f"(convert the dataset with lerobot's conversion scripts)")
    for key in ("fps", "features"):
        if key not in info:
            raise ValueError(f"{path}: no '{key}' entry; a LeRobot {version} info.json has one")
    return info


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _image(value: Any, root: Path, key: str) -> np.ndarray:
    """One inline `image` cell → (H, W, 3) uint8 RGB."""
    from PIL import Image

    if isinstance(value, dict):
        if value.get("bytes"):
            return np.asarray(Image.open(io.BytesIO(value["bytes"])).convert("RGB"))
        if value.get("path") and (root / value["path"]).is_file():
            return np.asarray(Image.open(root / value["path"]).convert("RGB"))
        raise ValueError(f"feature '{key}': an image cell holds neither bytes nor a readable path ({value.get('path')!r})")
    arr = np.asarray(value)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):  # channel-first arrays
        arr = arr.transpose(1, 2, 0)
    if arr.dtype != np.uint8:  # float images in [0, 1]
        arr = np.clip(np.round(arr * 255 if arr.max() <= 1.0 else arr), 0, 255).astype(np.uint8)
    return np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr


def video_frames(path: Path, timestamps: np.ndarray, fps: float) -> np.ndarray:
    """The frames of `path` nearest to `timestamps` (seconds in the file, sorted) as (N, H, W, 3) uint8.
    v3 files hold many episodes back to back: seek to the keyframe before the first timestamp and stop one
    frame past the last. Only the frames asked for are converted to arrays."""
    try:
        import av
    except ImportError as exc:
        raise ImportError(f"{path}: decoding LeRobot mp4 videos needs PyAV: pip install 'xr0[lerobot]'") from exc
    if not path.is_file():
        raise FileNotFoundError(f"{path}: video file missing (download the dataset's videos/ folder too)")
    want = np.asarray(timestamps, np.float64)
    out: list[np.ndarray | None] = [None] * len(want)
    period = 1.0 / fps
    j, prev = 0, None  # next timestamp to serve; the last decoded (time, frame)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if want[0] - period > 0:  # lands on the keyframe at or before the first frame asked for
            container.seek(int((want[0] - period) / float(stream.time_base)), stream=stream, backward=True)
        for fr in container.decode(stream):
            t = float(fr.time)
            while j < len(want) and want[j] <= t:  # nearest of prev and this frame; ties go to the earlier one
                pick = fr if prev is None or abs(t - want[j]) < abs(want[j] - prev[0]) else prev[1]
                out[j] = pick.to_ndarray(format="rgb24")
                if abs((t if pick is fr else prev[0]) - want[j]) > period:
                    raise ValueError(f"{path}: no video frame within one frame period of t={want[j]:.3f} s")
                j += 1
            prev = (t, fr)
            if j == len(want):
                break
    while j < len(want):  # past the last decoded frame: it is the nearest if it is close enough
        if prev is None or want[j] - prev[0] > period:
            raise ValueError(f"{path}: the video ends before t={want[j]:.3f} s (last frame at "
                             f"{prev[0] if prev else float('nan'):.3f} s)")
        out[j] = prev[1].to_ndarray(format="rgb24")
        j += 1
    return np.stack(out)


class LeRobotFolder:
    """A local LeRobot dataset: its episodes, tasks and features, read one episode at a time."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.info = read_info(self.root)
        self.version = str(self.info["codebase_version"])
        self.fps = float(self.info["fps"])
        self.features: dict[str, dict[str, Any]] = self.info["features"]
        self._episodes: dict[int, dict[str, Any]] | None = None
        self._tasks: dict[int, str] | None = None
        self._table: tuple[Path | None, Any] = (None, None)  # the last v3 data file read (episodes are consecutive)

    @property
    def v3(self) -> bool:
        return self.version.startswith("v3")

    @property
    def visual(self) -> list[str]:
        return [k for k, v in self.features.items() if v.get("dtype") in ("image", "video")]

    def find_key(self, given: str | None, candidates: tuple[str, ...], what: str) -> str:
        """The feature for the state or the actions: the one given, else the first conventional name present."""
        numeric = sorted(k for k, v in self.features.items() if str(v.get("dtype", "")).startswith("float"))
        if given is not None:
            if given not in self.features:
                raise ValueError(f"{self.root}: no feature '{given}' for the {what}; float features: {', '.join(numeric)}")
            return given
        for k in candidates:
            if k in self.features:
                return k
        raise ValueError(f"{self.root}: none of {', '.join(candidates)} is a feature; name the {what} feature "
                         f"(--{what} FEATURE); float features: {', '.join(numeric)}")

    def dim(self, key: str) -> int:
        shape = list(self.features[key].get("shape") or [])
        if len(shape) != 1:
            raise ValueError(f"{self.root}: feature '{key}' has shape {shape}; the state and the actions are 1-D vectors")
        return int(shape[0])

    # ------------------------------------------------------------------ index
    def episodes(self) -> dict[int, dict[str, Any]]:
        """episode_index → {length, ...} in episode order (v3: plus its data file and video entries)."""
        if self._episodes is None:
            self._episodes = self._v3_episodes() if self.v3 else self._v2_episodes()
            if not self._episodes:
                raise ValueError(f"{self.root}: no episodes found (empty data/ folder?)")
        return self._episodes

    def _v2_episodes(self) -> dict[int, dict[str, Any]]:
        meta = self.root / "meta" / "episodes.jsonl"
        if meta.is_file():
            rows = _jsonl(meta)
            return {int(r["episode_index"]): {"length": int(r["length"]), "tasks": r.get("tasks") or []}
                    for r in sorted(rows, key=lambda r: int(r["episode_index"]))}
        out = {}  # no episodes.jsonl: the data files say which episodes there are and how long
        for f in sorted((self.root / "data").glob("chunk-*/episode_*.parquet")):
            out[int(f.stem.split("_")[-1])] = {"length": _pq().ParquetFile(f).metadata.num_rows, "tasks": []}
        return dict(sorted(out.items()))

    def _v3_episodes(self) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        for f in sorted((self.root / "data").glob("chunk-*/file-*.parquet")):  # which file holds which episodes
            eps, counts = np.unique(np.asarray(_pq().read_table(f, columns=["episode_index"])["episode_index"]),
                                    return_counts=True)
            for e, n in zip(eps.tolist(), counts.tolist()):
                out.setdefault(int(e), {"length": 0, "file": f})["length"] += int(n)
        for f in sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet")):
            cols = [c for c in _pq().read_schema(f).names if c.startswith("videos/") or c in ("episode_index", "tasks")]
            for r in _pq().read_table(f, columns=cols).to_pylist():
                if int(r["episode_index"]) in out:
                    out[int(r["episode_index"])].update(r)
        return dict(sorted(out.items()))

    def tasks(self) -> dict[int, str]:
        if self._tasks is None:
            self._tasks = {}
            jl, pqf = self.root / "meta" / "tasks.jsonl", self.root / "meta" / "tasks.parquet"
            if jl.is_file():
                self._tasks = {int(r["task_index"]): str(r["task"]) for r in _jsonl(jl)}
            elif pqf.is_file():
                t = _pq().read_table(pqf).to_pydict()  # the task string is the pandas index of this table
                names = (t.get("task") or t.get("__index_level_0__")
                         or next((v for v in t.values() if v and isinstance(v[0], str)), []))
                self._tasks = {int(i): str(s) for i, s in zip(t["task_index"], names)}
        return self._tasks

    # ------------------------------------------------------------------ one episode
    def _rows(self, ep: int, columns: list[str]):
        """The parquet rows of episode `ep`, as a pyarrow table sorted by frame_index."""
        import pyarrow.compute as pc

        if self.v3:
            f = self.episodes()[ep]["file"]
            if self._table[0] != f:
                present = set(_pq().read_schema(f).names)
                cols = [c for c in dict.fromkeys([*columns, "episode_index"]) if c in present]
                self._table = (f, _pq().read_table(f, columns=cols))
            table = self._table[1].filter(pc.equal(self._table[1]["episode_index"], ep))
        else:
            chunk = ep // int(self.info.get("chunks_size", 1000))
            f = self.root / self.info["data_path"].format(episode_chunk=chunk, episode_index=ep, chunk_index=chunk,
                                                          total_episodes=self.info.get("total_episodes", 0))
            if not f.is_file():
                raise FileNotFoundError(f"{f}: data file of episode {ep} missing")
            present = set(_pq().read_schema(f).names)
            table = _pq().read_table(f, columns=[c for c in columns if c in present])
        if "frame_index" in table.column_names:
            table = table.take(pc.sort_indices(table, sort_keys=[("frame_index", "ascending")]))
        return table

    def _video_path(self, ep: int, key: str) -> tuple[Path, float]:
        if not self.v3:
            chunk = ep // int(self.info.get("chunks_size", 1000))
            return self.root / self.info["video_path"].format(episode_chunk=chunk, video_key=key, episode_index=ep), 0.0
        m = self.episodes()[ep]
        need = [f"videos/{key}/chunk_index", f"videos/{key}/file_index", f"videos/{key}/from_timestamp"]
        if any(n not in m for n in need):
            raise ValueError(f"{self.root}: meta/episodes has no {need[0]} / file_index / from_timestamp for episode "
                             f"{ep}, so its '{key}' video cannot be found")
        path = self.root / self.info["video_path"].format(video_key=key, chunk_index=int(m[need[0]]),
                                                          file_index=int(m[need[1]]))
        return path, float(m[need[2]])

    def read_episode(self, ep: int, cameras: dict[str, str], state_key: str, action_key: str,
                     fps: float | None = None) -> dict[str, Any]:
        """Episode `ep` as write_episodes wants it: images {xr0 camera: (N,H,W,3) uint8}, state (N,S), actions
        (N,A), instruction. cameras: xr0 camera → feature. fps: resample every stream onto that rate by
        nearest timestamp (xr0.data.resample); None keeps the dataset's frames."""
        from xr0.data.resample import nearest_index, timeline

        images_keys = list(cameras.values())
        inline = [k for k in images_keys if self.features[k]["dtype"] == "image"]
        table = self._rows(ep, ["frame_index", "timestamp", "task_index", state_key, action_key, *inline])
        n = table.num_rows
        if n == 0:
            raise ValueError(f"{self.root}: episode {ep} has no frames in its data file")
        ts = (np.asarray(table["timestamp"], np.float64) if "timestamp" in table.column_names
              else np.arange(n) / self.fps)
        rows = np.arange(n) if fps is None else nearest_index(ts, timeline(ts[0], ts[-1], fps))
        state = np.asarray(table[state_key].to_pylist(), np.float32)[rows]
        actions = np.asarray(table[action_key].to_pylist(), np.float32)[rows]
        images = {}
        for cam, key in cameras.items():
            if key in inline:
                col = table[key]
                images[cam] = np.stack([_image(col[int(r)].as_py(), self.root, key) for r in rows])
            else:
                path, start = self._video_path(ep, key)
                images[cam] = video_frames(path, ts[rows] + start, self.fps)
        instruction = ""
        if "task_index" in table.column_names:
            instruction = self.tasks().get(int(table["task_index"][0].as_py()), "")
        if not instruction and self.episodes()[ep].get("tasks"):
            instruction = str(self.episodes()[ep]["tasks"][0])
        return {"images": images, "state": state, "actions": actions, "instruction": instruction}


def default_cameras(folder: LeRobotFolder) -> dict[str, str]:
    """Every image/video feature, named by the last part of its key (observation.images.top → top)."""
    return {k.split(".")[-1]: k for k in folder.visual}


def check_cameras(folder: LeRobotFolder, cameras: dict[str, str]) -> None:
    for cam, key in cameras.items():
        if key not in folder.visual:
            raise ValueError(f"camera '{cam}': '{key}' is not an image/video feature of {folder.root}; "
                             f"have {', '.join(folder.visual) or 'none'}")


def iter_episodes(root: str | Path, cameras: dict[str, str] | None = None, state_key: str | None = None,
                  action_key: str | None = None, fps: float | None = None,
                  episodes: list[int] | None = None) -> Iterator[dict[str, Any]]:
    """Episodes of a LeRobot folder as write_episodes wants them, in episode order (or `episodes`).
    cameras: xr0 camera name → feature key (default: every image/video feature, named by its last part)."""
    folder = LeRobotFolder(root)
    cameras = cameras or default_cameras(folder)
    check_cameras(folder, cameras)
    sk = folder.find_key(state_key, STATE_KEYS, "state")
    ak = folder.find_key(action_key, ACTION_KEYS, "action")
    for ep in (episodes if episodes is not None else list(folder.episodes())):
        yield folder.read_episode(ep, cameras, sk, ak, fps)
