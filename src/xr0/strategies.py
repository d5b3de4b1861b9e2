"""Distributed presets a recipe selects with `trainer.strategy`, mapped onto Lightning's own engines.

`ddp`, `fsdp`, `fsdp2` and `deepspeed_zero2` (the paper's pre-training engine) are names a lab can put in a
recipe; anything else Lightning accepts passes through unchanged.

- `fsdp`: Lightning's FSDPStrategy (torch's FSDP1, CUDA only: on CPU torch raises "FSDP needs a non-CPU
  accelerator device"), so with `trainer.accelerator=cpu` it means `fsdp2`.
- `fsdp2`: torch's `fully_shard` through Lightning's ModelParallelStrategy, every rank a data-parallel replica
  holding one shard of each parameter, gradient and optimiser state; runs over gloo on CPU and nccl on CUDA.
  Checkpoints are sharded folders (`step0000010.ckpt/`), written under a temporary name and renamed into place.
"""
from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from lightning.pytorch.strategies import ModelParallelStrategy


class FSDP2Strategy(ModelParallelStrategy):
    """ModelParallelStrategy as pure data-parallel FSDP2 (no tensor parallelism), with atomic sharded saves."""

    def __init__(self, **kwargs: Any):
        super().__init__(save_distributed_checkpoint=True, **kwargs)

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes  # every rank holds one shard
        self._tensor_parallel_size = 1
        super().setup_environment()

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        from xr0.fault import TMP_MARK, replace_dir

        path = Path(self.broadcast(str(filepath)))
        tmp = path.with_name(f".{path.name}{TMP_MARK}{self.broadcast(secrets.token_hex(4))}")
        super().save_checkpoint(checkpoint, tmp, storage_options)  # every rank writes its shard into tmp
        self.barrier("xr0_sharded_save")
        if self.global_rank == 0:
            replace_dir(tmp, path)
        self.barrier("xr0_sharded_replace")


class ShardedStage:
    """Mixin for stage modules: under `fsdp2`, Lightning's `configure_model` hook shards the model."""

    def configure_model(self) -> None:
        trainer = getattr(self, "_trainer", None)
        if trainer is not None and isinstance(trainer.strategy, FSDP2Strategy):
            shard_fsdp2(self, self.device_mesh["data_parallel"])


def shard_fsdp2(module: Any, mesh: Any) -> None:
    """One FSDP2 unit per block the model declares (`fsdp_wrap_modules`), then the module itself as the root
    unit, which gathers around the training/validation steps because the stages call their parts' own methods
    (context, flow_loss) rather than forward().

    Block units keep their weights gathered from forward to backward (`reshard_after_forward=False`, ZeRO-2 for
    the blocks): the DiT reads the VLM's K/V out of the HF cache, a side channel FSDP2's backward hooks do not
    see, so resharded decoder layers would be freed before their gradients are computed. On the tiny stage 3
    this trains to the same parameters as DDP.
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method

    if isinstance(module, FSDPModule):  # configure_model runs again for validate/test after fit
        return
    wrap = tuple(wrap_modules(module))  # blocks run through their forward (a backbone lists no others)
    for sub in list(module.modules()):
        if sub is not module and wrap and isinstance(sub, wrap):
            fully_shard(sub, mesh=mesh, reshard_after_forward=False)
    fully_shard(module, mesh=mesh)
    for name in ("training_step", "validation_step"):
        register_fsdp_forward_method(module, name)


def make_strategy(name: Any, module: Any, activation_checkpointing: bool = False, accelerator: Any = None) -> Any:
    if not isinstance(name, str):
        return name
    if name == "fsdp" and accelerator == "cpu":
        name = "fsdp2"
    if name == "fsdp2":
        if not isinstance(module, ShardedStage):
            raise ValueError(f"trainer.strategy=fsdp2 needs a stage with ShardedStage's configure_model; "
                             f"{type(module).__name__} has none")
        if activation_checkpointing:
            raise ValueError("run.activation_checkpointing is not wired for fsdp2 yet; use trainer.strategy=fsdp "
                             "on CUDA, or turn it off")
        return FSDP2Strategy()
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
