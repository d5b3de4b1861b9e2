"""Distributed presets a recipe selects with `trainer.strategy`, mapped onto Lightning's own engines.

`ddp` and `fsdp` and `deepspeed_zero2` (the paper's pre-training engine) are names a lab can put in a
recipe; anything else Lightning accepts passes through unchanged.
"""
from __future__ import annotations

from typing import Any


def make_strategy(name: Any, module: Any, activation_checkpointing: bool = False) -> Any:
    if not isinstance(name, str):
        return name
    if name == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        wrap = wrap_modules(module)
        return FSDPStrategy(
            auto_wrap_policy=wrap or None,
            activation_checkpointing_policy=wrap if activation_checkpointing and wrap else None,
            sharding_strategy="FULL_SHARD",
        )
    if name == "deepspeed_zero2":
        return "deepspeed_stage_2"
    return name


def wrap_modules(module: Any) -> set[type]:
    """The repeated blocks the model declares (DiT block, VLM decoder and vision layers): one FSDP unit each."""
    wrap: set[type] = set()
    for sub in module.modules():
        fn = getattr(sub, "fsdp_wrap_modules", None)
        if callable(fn):
            wrap |= set(fn())
    return wrap


def global_batch(per_device: int | None, trainer: Any) -> str:
    if per_device is None:
        return "global batch: unknown (the data module has no batch_size)"
    devices = trainer.num_devices
    nodes = trainer.num_nodes
    accum = trainer.accumulate_grad_batches
    return (f"global batch = {per_device} per device × {devices} devices × {nodes} nodes × {accum} accumulation "
            f"= {per_device * devices * nodes * accum}")
