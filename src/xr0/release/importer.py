"""`xr0 import-release DIR OUT/`: a downloaded Xiaomi-Robotics-0 release -> an xr0 export directory.

OUT/ holds what `xr0.export.read_export` and `init_from:` read: model.safetensors (xr0 names, release dtype)
and xr0.json (embodiments and statistics from the release processor, one embodiment per `robot_type`, and the
recipe switches that reproduce the released inference path). The release's small files (config, processor,
tokenizer, remote code) are copied to OUT/release_files/ so `xr0 export-release` can rebuild a servable
directory later.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from xr0.export import METADATA, WEIGHTS
from xr0.release import keymap as K
from xr0.release import layout

RELEASE_FILES = "release_files"
VLM_CONFIG = "vlm_config.json"  # the release's Qwen3-VL config alone, for building the backbone at its sizes

# The released inference path (modeling_mibot.py, MiBoTForActionGeneration.forward): lower-triangular mask
# over [SINK, state, actions], no committed-action prefix, positions continue at max VLM position + 1 with no
# offset for noisy tokens, one scalar τ per sample for every DiT token, 5 Euler steps from τ=0, raw
# (un-normalised, zero-padded) state. xr0 defaults differ (docs/method.md §1.2–1.3), hence explicit switches.
PARITY = {"mask": "causal", "rope_offset": 0, "prefix_tau": "shared", "async_prefix": False,
          "num_steps": 5, "state_norm": "none"}

MAX_LISTED = 25  # names listed per problem kind before "... and N more"


@dataclass
class ImportReport:
    out: Path
    n_tensors: int
    embodiments: list[str]
    embodiment: str | None
    ignored: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)


def _listing(kind: str, names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    more = f" ... and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
    return f"{kind} ({len(names)}): {shown}{more}"


def check_release_names(shapes: dict[str, tuple[int, ...]], config: dict[str, Any], where: str) -> set[str]:
    """Check a full set of released names and shapes against the key map and config.json. Raises KeyMapError
    listing every unmapped, unexpected, mis-shaped and missing key by name. Returns the ignored names."""
    expected, optional = K.expected_release_shapes(config)
    unmapped, unexpected, bad, ignored = [], [], [], set()
    for name, shape in sorted(shapes.items()):
        if K.IGNORED_RELEASE_KEYS.search(name):
            ignored.add(name)
        elif K.to_xr0(name) is None:
            unmapped.append(name)
        elif name not in expected:
            unexpected.append(name)
        elif tuple(shape) != expected[name]:
            bad.append(f"{name} has shape {tuple(shape)}, config.json implies {expected[name]}")
    missing = sorted(set(expected) - set(shapes) - optional)
    problems = []
    if unmapped:
        problems.append(_listing("keys with no row in xr0/release/keymap.py", unmapped))
    if unexpected:
        problems.append(_listing("keys the config does not have (layer index past num_hidden_layers, or a "
                                 "module this vlm_config does not build)", unexpected))
    if bad:
        problems.append(_listing("wrong shapes", bad))
    if missing:
        problems.append(_listing("missing keys", missing))
    if problems:
        raise K.KeyMapError(f"{where}: does not match the released layout:\n  - " + "\n  - ".join(problems))
    return ignored


def release_embodiments(action_config: dict[str, Any], config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One xr0 embodiment per released robot_type: chunk, action mask, per-timestep action statistics."""
    out = {}
    for robot_type in sorted(action_config):
        s = layout.robot_stats(action_config, robot_type, int(config["action_length"]), int(config["action_dim"]))
        out[robot_type] = {
            "chunk": s["chunk"],
            "action_dim": int(config["action_dim"]),
            "state_dim": int(config["state_dim"]),
            "action_mask": s["action_mask"],
            # actions: (T, A) mean/std; the release feeds the state raw, so no state statistics
            "stats": {"actions": {"mean": s["mean"], "std": s["std"]}, "state": None},
        }
    return out


RELEASE_VLM = "qwen3vl"  # the backbone the released MiBoT model is built on (its vlm_config is a Qwen3-VL config)
EXPORT_DIR = "${export_dir}"  # paths inside an export: xr0.checkpoint resolves it to the export's folder
DEFAULT_VIEWS = (("base", "Base View"), ("left_wrist", "Left-Wrist View"))  # the release README's LIBERO example


def parity_recipe(config: dict[str, Any], embodiment: str | None, chunk: int, preprocessor: dict[str, Any],
                  view_labels: list[str], tokenizer: bool) -> dict[str, Any]:
    """A post_train stage with the released architecture and inference switches (PARITY), so `xr0 serve` and
    `load_policy` rebuild the imported model as the release runs it."""
    dit = config["dit_config"]
    backbone = {"name": RELEASE_VLM, "config": config["vlm_config"], "preprocessor": preprocessor,
                "prompt": "release", "view_labels": list(view_labels),
                "tokenizer": f"{EXPORT_DIR}/{RELEASE_FILES}" if tokenizer else None}
    head = {"name": "dit", "width": dit["hidden_size"], "depth": dit["num_hidden_layers"], "head_dim": dit["head_dim"],
            "num_heads": dit["hidden_size"] // dit["head_dim"],  # the release derives it: hidden // head_dim
            "action_dim": config["action_dim"], "state_dim": config["state_dim"], "chunk": chunk,
            "rope_offset": PARITY["rope_offset"], "prefix_tau": PARITY["prefix_tau"]}
    stage = {"name": "post_train", "mode": "sync", "init_from": None, "backbone": backbone, "head": head,
             "mask": {"name": PARITY["mask"]}, "tau_sampler": {"name": "beta"}, "flow_steps": PARITY["num_steps"]}
    return {"stage": stage, "embodiment": embodiment, "_parity": dict(PARITY)}


def release_processor(robot_type: str, emb: dict[str, Any], config: dict[str, Any], preprocessor: dict[str, Any],
                      cameras: list[str], view_labels: list[str], hz: float) -> dict[str, Any]:
    """The released preprocessing as an xr0 Processor: each frame smart-resized by itself (bicubic, the release's
    pixel budget), raw zero-padded state, per-timestep action statistics and mask (std > 1e-5 per step)."""
    import numpy as np

    from xr0.backbones.images import read_preprocessor
    from xr0.embodiments import Embodiment
    from xr0.processor import ImageSpec, Processor

    vis = config["vlm_config"]["vision_config"]
    pre = read_preprocessor(preprocessor)
    mean, std = np.asarray(emb["stats"]["actions"]["mean"]), np.asarray(emb["stats"]["actions"]["std"])
    per_step = std > layout.VALID_STD  # (T, A)
    dims = [int(i) for i in np.flatnonzero(per_step.any(0))]
    spread = np.where(per_step, std, 0).max(0)[dims]  # clip far outside what the statistics saw, nowhere else
    centre = mean[:, dims].mean(0)
    robot = Embodiment(name=robot_type, action_names=tuple(f"a{i}" for i in dims),
                       state_names=tuple(f"s{i}" for i in range(emb["state_dim"])), cameras=tuple(cameras),
                       control_hz=hz, chunk=emb["chunk"], action_low=tuple(float(x) for x in centre - 50 * spread - 1),
                       action_high=tuple(float(x) for x in centre + 50 * spread + 1), action_slots=tuple(dims))
    image = ImageSpec(size=None, resize="stretch", resample=pre.get("resample", "bicubic"),
                      factor=int(pre.get("patch_size", vis["patch_size"]) * pre.get("merge_size",
                                                                                   vis["spatial_merge_size"])),
                      min_pixels=int(pre.get("min_pixels", 56 * 56)), max_pixels=int(pre.get("max_pixels", 28 * 28 * 1280)))
    from xr0.backbones.images import CLIP_MEAN, CLIP_STD

    recorded = {"factor": image.factor, "image_mean": list(pre.get("image_mean", CLIP_MEAN)),
                "image_std": list(pre.get("image_std", CLIP_STD)), "prompt": "release", "view_labels": list(view_labels)}
    proc = Processor(robot, image, emb["chunk"], mean.astype(np.float32), std.astype(np.float32), None, None,
                     action_mask=per_step, cameras=tuple(cameras), backbone=recorded)
    return proc.to_dict()


def import_release(src: str | Path, out: str | Path, robot_type: str | None = None,
                   copy_files: bool = True, cameras: list[str] | None = None, view_labels: list[str] | None = None,
                   hz: float = 30.0) -> ImportReport:
    """cameras / view_labels: the camera names a client sends and the "# <label>" each gets in the released prompt,
    in the checkpoint's view order (default: the release README's LIBERO example, base + left wrist)."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise FileNotFoundError(f"release directory not found: {src}")
    config = layout.read_config(src)
    action_config, stats_file = layout.read_action_config(src)

    tensors: dict[str, torch.Tensor] = {}
    for name, t in layout.iter_tensors(src):
        tensors[name] = t
    ignored = check_release_names({k: tuple(v.shape) for k, v in tensors.items()}, config, str(src))

    mapped: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if name not in ignored:
            mapped[K.to_xr0(name)[0]] = t
    added = []
    lm_head = K.RELEASE_VLM_PREFIX + "lm_head.weight"
    has_lm_head = lm_head in tensors
    if not has_lm_head:  # tied and omitted by save_pretrained: xr0's state_dict still lists it
        embed = K.to_xr0(K.RELEASE_VLM_PREFIX + "model.language_model.embed_tokens.weight")[0]
        mapped[K.to_xr0(lm_head)[0]] = mapped[embed].clone()
        added.append(K.to_xr0(lm_head)[0])

    embodiments = release_embodiments(action_config, config)
    if robot_type is None and len(embodiments) == 1:
        robot_type = next(iter(embodiments))
    if robot_type is not None and robot_type not in embodiments:
        raise layout.ReleaseError(f"--robot-type {robot_type!r} is not in {stats_file}; the release has: "
                                  f"{', '.join(embodiments)}")
    chunk = embodiments[robot_type]["chunk"] if robot_type else int(config["action_length"])
    preprocessor = json.loads((src / stats_file).read_text())
    cameras = list(cameras or [c for c, _ in DEFAULT_VIEWS])
    view_labels = list(view_labels or ([lab for _, lab in DEFAULT_VIEWS] if cameras == [c for c, _ in DEFAULT_VIEWS]
                                       else [c.replace("_", " ").title() + " View" for c in cameras]))
    if len(view_labels) != len(cameras):
        raise layout.ReleaseError(f"{len(view_labels)} view labels for {len(cameras)} cameras: give one per camera")
    image_pre = {k: v for k, v in preprocessor.items() if k != "action_config"}
    has_tokenizer = copy_files and any((src / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    meta = {
        "xr0_recipe": parity_recipe(config, robot_type, chunk, image_pre, view_labels, has_tokenizer),
        "xr0_processor": release_processor(robot_type, embodiments[robot_type], config, image_pre, cameras, view_labels, hz)
        if robot_type else None,
        "xr0_stats": embodiments[robot_type]["stats"] if robot_type else None,
        "xr0_embodiment": robot_type,
        "xr0_stage": "release_import",
        "xr0_embodiments": embodiments,
        "xr0_release": {"source": str(src.resolve()), "config": config, "stats_file": stats_file,
                        "preprocessor": preprocessor, "has_lm_head": has_lm_head, "ignored": sorted(ignored)},
        "global_step": None,
    }
    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    tmp = out / (WEIGHTS + ".tmp")
    save_file({k: v.contiguous() for k, v in mapped.items()}, str(tmp), metadata={"format": "pt"})
    tmp.replace(out / WEIGHTS)
    (out / METADATA).write_text(json.dumps(meta, indent=2))
    (out / VLM_CONFIG).write_text(json.dumps({"model_type": "qwen3_vl", **config["vlm_config"]}, indent=2))
    if copy_files:
        dest = out / RELEASE_FILES
        dest.mkdir(exist_ok=True)
        for f in layout.auxiliary_files(src):
            shutil.copy2(f, dest / f.name)
    return ImportReport(out, len(mapped), list(embodiments), robot_type, sorted(ignored), added)
