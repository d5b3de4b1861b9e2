"""`xr0 data from-lerobot`: a local LeRobot folder (v2.0, v2.1, v3.0) → xr0 shards + statistics (+ a card).

Two ways to say what goes where:
  --card NAME   a stock card (data_cards/NAME.yaml) gives the embodiment, fps, chunk, cameras and the key map
                (`source_keys`: feature → camera / state / actions); the shards go where its `shards` pattern
                points (under $XR0_DATA), the statistics to its `stats` file.
  --embodiment E --out DIR [--camera X=FEATURE ...] [--state F] [--action F] [--fps HZ]
                the same by hand; a card NAME.yaml is written beside the shards.

Resumable: episodes are planned into parts of about `maxcount` samples before anything is decoded (from the
dataset's episode lengths), and each part is written to a temporary tar that is renamed to NAME-NNNNNN.tar
only once it is complete. A rerun of the same command keeps every finished shard and continues with the
next part; the plan is stored in NAME.import.json, and a rerun with other options is refused rather than
mixing two imports. Statistics are computed at the end over all shards (`xr0 data stats`).
"""
from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from xr0.data.cards import DataCard, load_card, write_card
from xr0.data.lerobot import ACTION_KEYS, STATE_KEYS, LeRobotFolder, check_cameras, default_cameras

PLAN_FORMAT = 1


def plan_parts(episodes: dict[int, dict[str, Any]], src_fps: float, fps: float | None, maxcount: int) -> list[list[int]]:
    """Consecutive episodes grouped into parts of at most `maxcount` samples (a longer episode is a part alone),
    counting an episode's samples after resampling to `fps`."""
    parts: list[list[int]] = [[]]
    size = 0
    for ep, m in episodes.items():
        n = int(m["length"])
        if fps is not None and n > 1:
            n = math.floor((n - 1) / src_fps * fps + 0.5) + 1
        if parts[-1] and size + n > maxcount:
            parts.append([])
            size = 0
        parts[-1].append(ep)
        size += n
    return parts


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def _settings_from_card(ref: str) -> dict[str, Any]:
    card = load_card(ref, check_files=False)
    if card.kind != "robot" or not card.source_keys:
        raise ValueError(f"data card '{ref}' ({card.path}) has no source_keys, so it cannot drive an import; "
                         f"use --embodiment/--out and --camera/--state/--action instead")
    if not card.is_glob:
        raise ValueError(f"data card '{card.name}': an import needs a shards pattern like $XR0_DATA/{card.name}/"
                         f"{card.name}-*.tar, got {card.shards!r}")
    pattern = Path(card.shards_pattern)
    if not fnmatch.fnmatch(f"{card.name}-000000.tar", pattern.name):
        raise ValueError(f"data card '{card.name}': its shards pattern {pattern.name!r} does not match the names "
                         f"an import writes ({card.name}-000000.tar, ...)")
    inverse = {v: k for k, v in card.source_keys.items()}
    return {"out": pattern.parent, "name": card.name, "embodiment": card.embodiment, "fps": card.fps,
            "chunk": card.chunk, "cameras": {c: inverse[c] for c in card.cameras}, "state": inverse["state"],
            "action": inverse["actions"], "license": card.license, "source": card.source, "card": card}


def from_lerobot(root: str | Path, out_dir: str | Path | None = None, embodiment: str | None = None,
                 name: str | None = None, cameras: dict[str, str] | None = None, state_key: str | None = None,
                 action_key: str | None = None, fps: float | None = None, chunk: int | None = None,
                 card: str | None = None, maxcount: int = 1000, progress: bool = True) -> Path:
    """Convert (or continue converting) a local LeRobot dataset; returns the card path (the stock card with
    `card=`, else the card written beside the shards)."""
    from tqdm import tqdm

    from xr0 import embodiments
    from xr0.data.tools import compute_stats
    from xr0.data.writer import write_episodes

    folder = LeRobotFolder(root)
    if card is not None:
        if embodiment or out_dir or name or cameras or state_key or action_key or fps or chunk:
            raise ValueError("--card gives the embodiment, output folder, name, cameras, state, action, fps and "
                             "chunk; drop the other options (all but --maxcount), or leave out --card")
        s = _settings_from_card(card)
    else:
        if not embodiment or out_dir is None:
            raise ValueError("name a stock card (--card NAME, `ls data_cards/`) or give --embodiment and --out")
        s = {"out": Path(out_dir), "name": name or folder.root.name, "embodiment": embodiment, "fps": fps,
             "chunk": chunk, "cameras": cameras or default_cameras(folder), "state": state_key,
             "action": action_key, "license": str(folder.info.get("license", "see source")),
             "source": f"LeRobot {folder.version} dataset {folder.root.resolve()}", "card": None}
    emb = embodiments.get(s["embodiment"])
    check_cameras(folder, s["cameras"])
    s["state"] = folder.find_key(s["state"], STATE_KEYS, "state")
    s["action"] = folder.find_key(s["action"], ACTION_KEYS, "action")
    for key, want, what in ((s["state"], emb.state_dim, "state"), (s["action"], emb.action_dim, "action")):
        if folder.dim(key) != want:
            raise ValueError(f"feature '{key}' has {folder.dim(key)} dims; embodiment '{emb.name}' has {want} {what} "
                             f"dims: pick the embodiment that matches (`xr0 ls embodiment`) or another --{what}")
    out_fps = s["fps"] if s["fps"] is not None else folder.fps
    resample = None if abs(out_fps - folder.fps) < 1e-6 else out_fps
    if s["card"] is None and s["fps"] is None and abs(folder.fps - emb.control_hz) > 1e-6:
        print(f"note: {folder.root.name} is recorded at {folder.fps:g} Hz and '{emb.name}' runs at "
              f"{emb.control_hz:g} Hz; kept at {folder.fps:g} Hz (--fps {emb.control_hz:g} resamples)", file=sys.stderr)

    out, nm = Path(s["out"]), s["name"]
    out.mkdir(parents=True, exist_ok=True)
    episodes = folder.episodes()
    plan = {"format": PLAN_FORMAT, "source": str(folder.root.resolve()), "codebase_version": folder.version,
            "embodiment": emb.name, "fps": out_fps, "chunk": s["chunk"], "cameras": s["cameras"], "state": s["state"],
            "action": s["action"], "maxcount": maxcount,
            "parts": plan_parts(episodes, folder.fps, resample, maxcount)}
    plan_path = out / f"{nm}.import.json"
    if plan_path.is_file():
        old = json.loads(plan_path.read_text())
        diff = [k for k in plan if k != "source" and old.get(k) != plan[k]]  # the download may have moved
        if diff:
            was = "; ".join(f"{k} {old.get(k)!r} there, {plan[k]!r} now" for k in diff if k != "parts")
            raise ValueError(f"{out} holds an import of '{nm}' made with other options ({was or 'other episodes'}; "
                             f"{plan_path.name}); rerun it with the same options, or pick another --out/--name")
    elif list(out.glob(f"{nm}-*.tar")):
        raise ValueError(f"{out} already holds {nm}-*.tar shards that no import plan ({plan_path.name}) describes; "
                         f"pick another --out/--name, or move them away")
    _atomic_json(plan_path, plan)

    parts = plan["parts"]
    done = [k for k in range(len(parts)) if (out / f"{nm}-{k:06d}.tar").is_file()]
    frames = {ep: int(m["length"]) for ep, m in episodes.items()}
    bar = tqdm(total=sum(frames.values()), desc=f"import {nm}", unit="frame", disable=not progress,
               initial=sum(frames[ep] for k in done for ep in parts[k]))
    if done and progress:
        print(f"resuming: {len(done)} of {len(parts)} shards already written in {out}", file=sys.stderr)
    tmp = out / f".{nm}.import"
    shutil.rmtree(tmp, ignore_errors=True)  # a part a killed run left half-written (only ever ours)

    def part_episodes(k: int):
        for ep in parts[k]:
            yield folder.read_episode(ep, s["cameras"], s["state"], s["action"], resample)
            bar.update(frames[ep])

    with bar:  # closed before an error is printed, so the error is the last line
        for k in range(len(parts)):
            final = out / f"{nm}-{k:06d}.tar"
            if final.is_file():
                continue
            tmp.mkdir(exist_ok=True)
            write_episodes(part_episodes(k), tmp, emb.name, f"part{k:06d}", fps=out_fps, chunk=s["chunk"],
                           cameras=list(s["cameras"]), maxcount=10**9, license=s["license"], source=s["source"],
                           progress=False)
            written = sorted(tmp.glob(f"part{k:06d}-*.tar"))
            if len(written) != 1:  # ShardWriter also cuts at 3 GB
                raise ValueError(f"part {k} of {nm} came out as {len(written)} tar files (over 3 GB); rerun with "
                                 f"a smaller --maxcount into another --out")
            os.replace(written[0], final)  # atomic: a shard exists only once it is complete
            shutil.rmtree(tmp)

    if s["card"] is not None:
        card_path = s["card"].path
    else:
        card_path = write_card(DataCard(
            name=nm, shards=f"{nm}-{{000000..{len(parts) - 1:06d}}}.tar", fps=out_fps, kind="robot",
            embodiment=emb.name, cameras=tuple(s["cameras"]), chunk=int(s["chunk"] or emb.chunk),
            stats=f"{nm}.stats.json", license=s["license"], source=s["source"],
            description=f"{len(episodes)} episodes of {folder.root.name} (LeRobot {folder.version})",
            source_keys={**{v: c for c, v in s["cameras"].items()}, s["state"]: "state", s["action"]: "actions"}),
            out / f"{nm}.yaml")
    stats = compute_stats(str(card_path), progress=progress)
    if s["card"] is None:  # the sample count is known now
        c = load_card(card_path, check_files=False)
        write_card(dataclasses.replace(c, num_samples=int(stats["state"]["count"])), card_path)
    return Path(card_path)
