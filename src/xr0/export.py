"""`xr0 export CKPT OUT/`: a training checkpoint → safetensors weights + JSON metadata.

The export is what a robot host needs and nothing else: weights (no optimiser state), the resolved recipe,
the embodiment, the normalisation statistics and the processor (xr0.processor) serving feeds the model with. `read_export` is its inverse; the policy loader
(`xr0.checkpoint`) accepts either form.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

WEIGHTS = "model.safetensors"
METADATA = "xr0.json"
META_KEYS = ("xr0_recipe", "xr0_stats", "xr0_embodiment", "xr0_stage", "xr0_processor", "xr0_max_prefix")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint, loaded safely (tensors and plain containers only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable xr0/Lightning checkpoint ({type(exc).__name__}: {exc})") from exc


def export_checkpoint(ckpt_path: str | Path, out_dir: str | Path) -> Path:
    from safetensors.torch import save_file

    ckpt = load_checkpoint(ckpt_path)
    if "state_dict" not in ckpt:
        raise ValueError(f"{ckpt_path} has no state_dict: not a Lightning checkpoint")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # safetensors refuses shared storage (tied embeddings): store each tensor as its own contiguous copy
    tensors = {k: v.detach().contiguous().clone() for k, v in ckpt["state_dict"].items() if torch.is_tensor(v)}
    meta = {k: ckpt.get(k) for k in META_KEYS}
    meta["global_step"] = ckpt.get("global_step")
    meta["source_checkpoint"] = str(Path(ckpt_path).resolve())
    tmp = out / (WEIGHTS + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(out / WEIGHTS)
    (out / METADATA).write_text(json.dumps(meta, indent=2, default=str))
    return out


def read_export(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / WEIGHTS).is_file() or not (path / METADATA).is_file():
        raise FileNotFoundError(f"{path} is not an xr0 export (needs {WEIGHTS} and {METADATA}); make one with `xr0 export CKPT {path}`")
    return load_file(str(path / WEIGHTS)), json.loads((path / METADATA).read_text())
