"""Tiny LeRobot folders in the published layouts of the datasets the stock cards name, written with pyarrow
and PyAV the way lerobot writes them: the datasets' own feature names, dtypes, codebase_version, fps, file
layout, inline PNG frames or AV1 mp4 (libsvtav1, yuv420p, g=2, crf=30: lerobot's encoder settings). Only the
sizes are shrunk (a few episodes and frames, small images) so the tests stay fast.

Every frame of a camera is flat colour with R = a level that counts up frame by frame, G = 255 - R and a
per-camera B, so a test can tell which frame of which camera (and in which channel order) came through.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

V2_DATA = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V2_VIDEO = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
V3_DATA = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_VIDEO = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
INDEX_FEATURES = {k: {"dtype": d, "shape": [1], "names": None} for k, d in
                  (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                   ("index", "int64"), ("task_index", "int64"))}


@dataclass
class Layout:
    """What a published meta/info.json says, with the image sizes shrunk."""

    version: str
    fps: float
    robot_type: str
    features: dict  # the dataset's own features (without the index columns)
    state: str
    action: str
    extra: dict = field(default_factory=dict)  # other float features the dataset carries: name → dim


def _visual(f: dict, dtype: str, hw: tuple[int, int], names=("height", "width", "channel"), codec_info=None) -> dict:
    out = {"dtype": dtype, "shape": [hw[0], hw[1], 3], "names": list(names)}
    if dtype == "video" and codec_info:
        out[codec_info] = {"video.fps": f, "video.codec": "av1", "video.pix_fmt": "yuv420p",
                           "video.is_depth_map": False, "has_audio": False}
    return out


def libero_openpi(hw=(32, 32)) -> Layout:
    """physical-intelligence/libero (openpi's convert_libero_data_to_lerobot.py): v2.0, panda, 10 fps."""
    return Layout("v2.0", 10, "panda", {
        "image": _visual(10, "image", hw), "wrist_image": _visual(10, "image", hw),
        "state": {"dtype": "float32", "shape": [8], "names": ["state"]},
        "actions": {"dtype": "float32", "shape": [7], "names": ["actions"]}}, "state", "actions")


def libero_lerobot(hw=(32, 32), dtype="video") -> Layout:
    """lerobot/libero (dtype video, av1) and HuggingFaceVLA/libero (dtype image): v3.0, 10 fps."""
    info = "info" if dtype == "video" else None
    return Layout("v3.0", 10, "panda", {
        "observation.images.image": _visual(10, dtype, hw, codec_info=info),
        "observation.images.image2": _visual(10, dtype, hw, codec_info=info),
        "observation.state": {"dtype": "float32", "shape": [8], "names": ["state"]},
        "action": {"dtype": "float32", "shape": [7], "names": ["actions"]}}, "observation.state", "action")


def bridge_orig_lerobot(hw=(32, 32)) -> Layout:
    """IPEC-COMMUNITY/bridge_orig_lerobot: v2.0, widowx, 5 fps, four av1 cameras image_0..image_3."""
    feats = {f"observation.images.image_{i}": _visual(5, "video", hw, ("height", "width", "rgb"), "info")
             for i in range(4)}
    feats["observation.state"] = {"dtype": "float32", "shape": [8],
                                  "names": {"motors": ["x", "y", "z", "roll", "pitch", "yaw", "pad", "gripper"]}}
    feats["action"] = {"dtype": "float32", "shape": [7],
                       "names": {"motors": ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]}}
    return Layout("v2.0", 5, "widowx", feats, "observation.state", "action")


ALOHA_MOTORS = [f"{side}_{j}" for side in ("left", "right") for j in
                ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper")]


def aloha_static(hw=(24, 32)) -> Layout:
    """lerobot/aloha_static_vinh_cup_left: v2.0, aloha, 50 fps, four av1 cameras, 14-D state/effort/action."""
    feats = {f"observation.images.{c}": _visual(50, "video", hw, codec_info="video_info")
             for c in ("cam_high", "cam_left_wrist", "cam_low", "cam_right_wrist")}
    for k in ("observation.state", "observation.effort", "action"):
        feats[k] = {"dtype": "float32", "shape": [14], "names": {"motors": ALOHA_MOTORS}}
    return Layout("v2.0", 50, "aloha", feats, "observation.state", "action", extra={"observation.effort": 14})


# ---------------------------------------------------------------------------------------------- episodes
@dataclass
class Episode:
    state: np.ndarray  # (n, S) float32
    action: np.ndarray  # (n, A) float32
    frames: dict  # feature → (n, H, W, 3) uint8
    task: str
    extra: dict = field(default_factory=dict)


def camera_blue(i: int) -> int:
    return 40 + 60 * i


def make_episodes(layout: Layout, lengths, tasks, seed=0, relative_like=False) -> list[Episode]:
    """Random states/actions (actions near the state for joint-target datasets), counting frame levels."""
    rng = np.random.default_rng(seed)
    s_dim, a_dim = layout.features[layout.state]["shape"][0], layout.features[layout.action]["shape"][0]
    visual = [k for k, v in layout.features.items() if v["dtype"] in ("image", "video")]
    out, level = [], 10
    for e, n in enumerate(lengths):
        state = np.cumsum(rng.normal(0.3, 0.5, size=(n, s_dim)), 0).astype(np.float32)
        action = (state + rng.normal(0, 0.2, size=(n, s_dim))).astype(np.float32) if relative_like \
            else rng.normal(0.1, 0.6, size=(n, a_dim)).astype(np.float32)
        frames = {}
        for i, k in enumerate(visual):
            h, w = layout.features[k]["shape"][:2]
            f = np.empty((n, h, w, 3), np.uint8)
            for t in range(n):
                f[t] = (level + 7 * t) % 240, 255 - (level + 7 * t) % 240, camera_blue(i)
            frames[k] = f
        extra = {k: rng.normal(size=(n, d)).astype(np.float32) for k, d in layout.extra.items()}
        out.append(Episode(state, action, frames, tasks[e % len(tasks)], extra))
        level += 3
    return out


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def write_mp4(path: Path, frames: np.ndarray, fps: float) -> None:
    """AV1 the way lerobot encodes (libsvtav1, yuv420p, g=2, crf=30)."""
    import av

    os.environ.setdefault("SVT_LOG", "0")  # SVT-AV1 prints its configuration to stdout otherwise
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        st = out.add_stream("libsvtav1", rate=int(fps))
        st.width, st.height, st.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        st.options = {"g": "2", "crf": "30", "preset": "12"}
        for f in frames:
            for pkt in st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)


def _columns(layout: Layout, ep: Episode, e: int, start: int, task_index: int) -> dict:
    n = len(ep.state)
    cols = {layout.state: ep.state.tolist(), layout.action: ep.action.tolist()}
    cols.update({k: v.tolist() for k, v in ep.extra.items()})
    for k, v in layout.features.items():
        if v["dtype"] == "image":
            cols[k] = [{"bytes": _png(f), "path": f"frame_{t:06d}.png"} for t, f in enumerate(ep.frames[k])]
    cols.update({"timestamp": (np.arange(n, dtype=np.float32) / np.float32(layout.fps)).tolist(),
                 "frame_index": list(range(n)), "episode_index": [e] * n,
                 "index": list(range(start, start + n)), "task_index": [task_index] * n})
    return cols


def _table(cols: dict):
    import pyarrow as pa

    typed = {}
    for k, v in cols.items():
        if v and isinstance(v[0], list):
            typed[k] = pa.array(v, type=pa.list_(pa.float32()))
        elif k == "timestamp":
            typed[k] = pa.array(v, type=pa.float32())
        else:
            typed[k] = pa.array(v)
    return pa.table(typed)


def _info(layout: Layout, episodes, tasks, data_path, video_path, **more) -> dict:
    n_videos = sum(v["dtype"] == "video" for v in layout.features.values())
    info = {"codebase_version": layout.version, "robot_type": layout.robot_type, "total_episodes": len(episodes),
            "total_frames": sum(len(e.state) for e in episodes), "total_tasks": len(tasks),
            "total_videos": n_videos * len(episodes), "total_chunks": 1, "chunks_size": 1000, "fps": layout.fps,
            "splits": {"train": f"0:{len(episodes)}"}, "data_path": data_path,
            "video_path": video_path if n_videos else None,
            "features": {**layout.features, **INDEX_FEATURES}}
    info.update(more)
    return info


def write_v2(root: Path, layout: Layout, episodes: list[Episode]) -> None:
    """v2.0 / v2.1: one parquet per episode, one mp4 per episode and video feature, jsonl metadata."""
    import pyarrow.parquet as pq

    tasks = list(dict.fromkeys(e.task for e in episodes))
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(_info(layout, episodes, tasks, V2_DATA, V2_VIDEO), indent=4))
    (root / "meta" / "tasks.jsonl").write_text("".join(json.dumps({"task_index": i, "task": t}) + "\n"
                                                       for i, t in enumerate(tasks)))
    (root / "meta" / "episodes.jsonl").write_text("".join(
        json.dumps({"episode_index": e, "tasks": [ep.task], "length": len(ep.state)}) + "\n"
        for e, ep in enumerate(episodes)))
    if layout.version == "v2.1":  # v2.1's one addition: per-episode statistics
        (root / "meta" / "episodes_stats.jsonl").write_text("".join(
            json.dumps({"episode_index": e, "stats": {layout.state: {"mean": ep.state.mean(0).tolist()}}}) + "\n"
            for e, ep in enumerate(episodes)))
    else:
        (root / "meta" / "stats.json").write_text(json.dumps({layout.state: {"mean": [0.0]}}))
    start = 0
    for e, ep in enumerate(episodes):
        f = root / V2_DATA.format(episode_chunk=0, episode_index=e)
        f.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_table(_columns(layout, ep, e, start, tasks.index(ep.task))), f)
        start += len(ep.state)
        for k, v in layout.features.items():
            if v["dtype"] == "video":
                write_mp4(root / V2_VIDEO.format(episode_chunk=0, video_key=k, episode_index=e), ep.frames[k], layout.fps)


def write_v3(root: Path, layout: Layout, episodes: list[Episode], per_file: int = 2) -> None:
    """v3.0: `per_file` episodes per data file, every episode's video back to back in one mp4 per feature,
    episode metadata (with each video's from_timestamp) in meta/episodes, tasks in meta/tasks.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tasks = list(dict.fromkeys(e.task for e in episodes))
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(_info(
        layout, episodes, tasks, V3_DATA, V3_VIDEO, data_files_size_in_mb=100, video_files_size_in_mb=500), indent=4))
    # lerobot writes tasks.parquet from a pandas frame indexed by the task string
    pq.write_table(pa.table({"task_index": list(range(len(tasks))), "__index_level_0__": tasks}),
                   root / "meta" / "tasks.parquet")
    videos = [k for k, v in layout.features.items() if v["dtype"] == "video"]
    meta = {"episode_index": [], "tasks": [], "length": [], "data/chunk_index": [], "data/file_index": [],
            "dataset_from_index": [], "dataset_to_index": []}
    for k in videos:
        for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp"):
            meta[f"videos/{k}/{c}"] = []
    start, t0 = 0, 0.0
    for file_index in range(0, len(episodes), per_file):
        group = list(range(file_index, min(file_index + per_file, len(episodes))))
        cols: dict = {}
        for e in group:
            ep = episodes[e]
            for k, v in _columns(layout, ep, e, start, tasks.index(ep.task)).items():
                cols.setdefault(k, []).extend(v)
            n = len(ep.state)
            for k, v in (("episode_index", e), ("tasks", [ep.task]), ("length", n), ("data/chunk_index", 0),
                         ("data/file_index", file_index // per_file), ("dataset_from_index", start),
                         ("dataset_to_index", start + n)):
                meta[k].append(v)
            for k in videos:
                for c, v in (("chunk_index", 0), ("file_index", 0), ("from_timestamp", t0),
                             ("to_timestamp", t0 + n / layout.fps)):
                    meta[f"videos/{k}/{c}"].append(v)
            start += n
            t0 += n / layout.fps
        f = root / V3_DATA.format(chunk_index=0, file_index=file_index // per_file)
        f.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_table(cols), f)
    for k in videos:
        write_mp4(root / V3_VIDEO.format(video_key=k, chunk_index=0, file_index=0),
                  np.concatenate([ep.frames[k] for ep in episodes]), layout.fps)
    pq.write_table(pa.table(meta), root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")


def write(root: Path, layout: Layout, episodes: list[Episode]) -> Path:
    (write_v3 if layout.version.startswith("v3") else write_v2)(root, layout, episodes)
    return root
