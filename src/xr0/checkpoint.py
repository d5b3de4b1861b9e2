"""Stage checkpoints → models: `init_from` (stage N → stage N+1) and `load_policy` (checkpoint → deploy).

Stage modules name their parts `backbone.*` and `head.*` (stage 1) or `policy.backbone.*`,
`policy.head.*` (stages 2 and 3). Keys are compared in a canonical form with the `policy.` prefix
removed, so a stage-1 VLM loads into a stage-2 policy and a stage-2 policy into stage 3.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

SHOW = 8  # mismatching keys listed in an error


class CheckpointMismatch(ValueError):
    """A checkpoint does not fit the module it should initialise; the message lists the first bad keys."""


def _canonical(key: str) -> str:
    """Stage-independent key: no `policy.` prefix, and PEFT's wrapping removed so a LoRA model reads a
    plain checkpoint (`…base_model.model.X.base_layer.weight` → `…X.weight`)."""
    key = key[len("policy."):] if key.startswith("policy.") else key
    return key.replace(".base_model.model.", ".").replace(".base_layer.", ".")


def _is_adapter(key: str) -> bool:
    return ".lora_" in key  # LoRA weights are new in the stage that adds them


def read_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights and metadata from a Lightning checkpoint file or an `xr0 export` directory."""
    from xr0.export import META_KEYS, load_checkpoint, read_export

    path = Path(path)
    if path.is_dir():
        if (path / "config.json").is_file() and not (path / "xr0.json").is_file():
            raise ValueError(f"{path} is a Hugging Face model directory, not an xr0 checkpoint: load it with "
                             f"stage.backbone.pretrained={path} instead of init_from")
        return read_export(path)
    ckpt = load_checkpoint(path)
    if "state_dict" not in ckpt:
        raise ValueError(f"{path} has no state_dict: not a Lightning checkpoint")
    return ckpt["state_dict"], {k: ckpt.get(k) for k in META_KEYS}


def init_from(module: nn.Module, path: str | Path, parts: tuple[str, ...]) -> list[str]:
    """Copy the `parts` (e.g. ("backbone",) or ("backbone", "head")) of a checkpoint into `module`.

    Every target key under those parts must be present with the same shape; otherwise raise listing the
    first mismatching keys. Returns the loaded canonical keys.
    """
    source, meta = read_state(path)
    src = {_canonical(k): v for k, v in source.items()}
    target = {_canonical(k): k for k in module.state_dict()}
    wanted = [k for k in target if k.split(".", 1)[0] in parts and not _is_adapter(target[k])]
    if not wanted:
        raise CheckpointMismatch(f"the module has no parameters under {parts}; nothing to load from {path}")
    own = module.state_dict()
    missing = [k for k in wanted if k not in src]
    shape = [f"{k}: checkpoint {tuple(src[k].shape)} vs model {tuple(own[target[k]].shape)}"
             for k in wanted if k in src and src[k].shape != own[target[k]].shape]
    if missing or shape:
        lines = [f"missing in checkpoint: {k}" for k in missing[:SHOW]] + shape[:SHOW]
        have = sorted({k.split(".", 1)[0] for k in src})
        raise CheckpointMismatch(
            f"init_from {path} (stage {meta.get('xr0_stage')}) does not fit this model's {'/'.join(parts)}: "
            f"{len(missing)} keys missing, {len(shape)} with another shape. First ones:\n  "
            + "\n  ".join(lines)
            + f"\nThe checkpoint holds parts: {', '.join(have)}. Use the same backbone/head sizes (and lora "
              f"setting) as the run that wrote it.")
    with torch.no_grad():
        for k in wanted:
            own[target[k]].copy_(src[k].to(own[target[k]].dtype))
    return wanted


@dataclass
class LoadedPolicy:
    """What `load_policy` returns: the model plus everything needed to feed it and read its output."""

    policy: nn.Module  # a Policy (stages 2/3: predict_chunk(batch, prefix, steps)) or a stage-1 module
    recipe: dict[str, Any]
    embodiment: str | None
    stats: Any
    stage: str | None
    processor: Any = None  # xr0.processor.Processor: raw observation -> batch, chunk -> robot actions
    max_prefix: int | None = None  # the longest committed prefix Δt_c it was trained with (None: unknown)


def load_policy(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedPolicy:
    """Rebuild the stage a checkpoint (or export dir) was trained with, load its weights, return its policy."""
    from xr0 import config
    from xr0.plugins import load_plugins

    load_plugins()  # the recipe may name plugin parts (an entry point of its own: serving from Python)
    weights, meta = read_state(path)
    recipe = meta.get("xr0_recipe")
    if not recipe or "stage" not in recipe:
        raise ValueError(f"{path} carries no xr0_recipe: it was not written by `xr0 fit` (or the run predates "
                         f"metadata); cannot rebuild the model without the recipe")
    # init_from stays as trained: stages read it only in Lightning's setup, which rebuilding never calls
    stage_tree = _export_paths(dict(recipe["stage"]), Path(path) if Path(path).is_dir() else None)
    broken = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise CheckpointMismatch(f"{path}: {len(broken)} weight tensors hold NaN or inf (first: {broken[0]}); this "
                                 f"model would answer NaN — load an earlier checkpoint")
    check_shapes(stage_tree, weights, path)  # before anything is allocated: a recipe may declare any size
    module = config.build(stage_tree, "stage")
    # checkpoints name parts `policy.backbone.*` (stages 2/3) or `backbone.*` (stage 1, release imports)
    by_canonical = {_canonical(k): v for k, v in weights.items()}
    own = {_canonical(k): k for k in module.state_dict()}
    mapped = {own[k]: v for k, v in by_canonical.items() if k in own}
    missing, unexpected = module.load_state_dict(mapped, strict=False)
    unexpected = list(unexpected) + [k for k in by_canonical if k not in own]
    if missing or unexpected:
        raise CheckpointMismatch(
            f"{path}: weights do not match the rebuilt {stage_tree.get('name')} stage; first missing: "
            f"{missing[:SHOW]}, first unexpected: {unexpected[:SHOW]}")
    module.xr0_recipe, module.xr0_stats = recipe, meta.get("xr0_stats")
    module.to(map_location).eval()
    policy = getattr(module, "policy", module)
    processor = None
    if meta.get("xr0_processor"):
        from xr0.processor import Processor

        processor = Processor.from_dict(meta["xr0_processor"])
        _check_backbone_spec(path, processor, getattr(policy, "backbone", None))
    max_prefix = meta.get("xr0_max_prefix")
    if max_prefix is None:  # written before checkpoints stored it: the rebuilt stage's prefix sampler tells
        max_prefix = getattr(module, "trained_max_prefix", None)
    return LoadedPolicy(policy=policy, recipe=recipe, embodiment=meta.get("xr0_embodiment"),
                        stats=meta.get("xr0_stats"), stage=meta.get("xr0_stage"), processor=processor,
                        max_prefix=None if max_prefix is None else int(max_prefix))


def check_shapes(stage_tree: dict[str, Any], weights: dict[str, torch.Tensor], path: Any) -> None:
    """Build the stage's head (and a backbone defined by its config alone) on the meta device — no memory — and
    compare every parameter shape with the weight file, so a metadata file declaring a 16384-wide head is refused
    before 3.6 GB are allocated for it. A `pretrained` backbone's sizes come from its own folder: skipped here."""
    from xr0 import config

    given = {_canonical(k): tuple(v.shape) for k, v in weights.items()}
    for part in ("backbone", "head"):
        node = stage_tree.get(part)
        if not isinstance(node, dict) or node.get("pretrained"):
            continue
        with torch.device("meta"):
            probe = config.build(node, part)
        own = {f"{part}.{_canonical(k)}": tuple(v.shape) for k, v in probe.state_dict().items()}
        bad = [f"{k}: recipe {own[k]} vs weights {given[k]}" for k in own if k in given and own[k] != given[k]]
        if bad:
            raise CheckpointMismatch(f"{path}: its recipe's {part} does not fit its weights ({len(bad)} tensors), e.g. "
                                     + "; ".join(bad[:3]) + " — the metadata and the weight file disagree")


def _export_paths(node: Any, export_dir: Path | None) -> Any:
    """`${export_dir}/...` in a recipe an export carries (e.g. the release's tokenizer files) → that export's folder,
    so an export directory can be moved and still load."""
    from xr0.release.importer import EXPORT_DIR

    if isinstance(node, dict):
        return {k: _export_paths(v, export_dir) for k, v in node.items()}
    if isinstance(node, list):
        return [_export_paths(v, export_dir) for v in node]
    if isinstance(node, str) and node.startswith(EXPORT_DIR):
        if export_dir is None:
            raise ValueError(f"recipe path {node!r} points into an export directory, but this is a checkpoint file")
        return str(export_dir.resolve()) + node[len(EXPORT_DIR):]
    return node


def _check_backbone_spec(path: Any, processor: Any, backbone: Any) -> None:
    """The rebuilt backbone must preprocess as the trained one did (pixel mean/std, prompt, patch·merge): a model
    served with other preprocessing than it was trained with answers confidently and wrongly."""
    if backbone is None or not processor.backbone:
        return
    now, trained = backbone.input_spec(), processor.backbone
    differ = [k for k in ("factor", "image_mean", "image_std", "prompt", "view_labels")
              if k in trained and now.get(k) != trained[k]]
    if differ:
        k = differ[0]
        raise CheckpointMismatch(f"{path}: the rebuilt backbone preprocesses differently from training in "
                                 f"{', '.join(differ)} (e.g. {k}: now {now.get(k)}, trained {trained[k]}); keep the "
                                 f"backbone's preprocessor/prompt settings of the recipe that trained it")
