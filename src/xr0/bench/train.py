"""`xr0 bench train`: optimizer steps of the real stage modules through a Lightning Trainer; samples/s and MFU.

The stage comes from recipes/tiny/stage2.yaml (dit_flow: frozen VLM) or recipes/tiny/stage3.yaml (post_train
async: full model, Λ mask, re-weighting) with the backbone and head swapped to the bench scale, and trains on
one synthetic batch repeated in memory, so the step time holds no data loading. bf16-mixed on CUDA, fp32 on
a CPU; gradients clipped as the recipe says, so AdamW is fused only where Lightning allows it (see
stages.common._fused; the JSON says which). MFU = model FLOPs per step (xr0.flops.train_flops, formula in
its docstring; checkpointing recompute not counted) / p50 step time / the device's peak dense bf16 FLOP/s.
"""
from __future__ import annotations

import gc
import logging
import time
import warnings
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy

from xr0 import config, flops
from xr0.bench import DEFAULT_BACKBONE, device_name, head_dims, make_batch, scale_of, summary

RECIPES = {"dit_flow": "tiny/stage2.yaml", "post_train": "tiny/stage3.yaml"}
MAX_AUTO_BATCH = 1024


def _recipe(stage: str) -> dict[str, Any]:
    return config.resolve(config.load_recipe(config.RECIPES_DIR / RECIPES[stage]))


def build_stage(scale: str, stage: str, activation_checkpointing: bool = False, device: str = "cpu",
                backbone: str = DEFAULT_BACKBONE):
    """The stage LightningModule of the tiny recipe with the bench scale's backbone and head; (module, scale)."""
    s = scale_of(scale, backbone)
    tree = _recipe(stage)
    st = tree["stage"]
    # fp32 master weights: bf16-mixed autocasts the matmuls, AdamW keeps fp32 state
    st["backbone"] = {**s["backbone"], "dtype": None, "gradient_checkpointing": activation_checkpointing}
    with torch.device("meta"):  # the VLM's sizes, for the DiT's head_dim, without allocating it
        s["head"] = head_dims(s, config.build(st["backbone"], "backbone"))
    st["head"] = {**st["head"], **s["head"], "chunk": s["chunk"]}
    tree["data"] = {**tree["data"], "chunk": s["chunk"]}  # one chunk length (validate checks they agree)
    st.update(init_from=None, plot_every_n_steps=0)
    with torch.device(device):  # a paper-scale model initialises on the GPU, not for minutes on the CPU
        module = config.build(config.validate(tree)["stage"], "stage")
    return module, s


def synthetic_batch(s: dict[str, Any], batch: int, device: str) -> dict[str, Any]:
    data = make_batch(s, batch, device, torch.float32)
    data["embodiment"] = ["synthetic"] * batch
    return data


class StepTimer(L.Callback):
    """Milliseconds per training batch (forward, backward, optimizer step) after `warmup` batches: CUDA events
    on a GPU (read once at the end, so timing adds no sync), perf_counter on a CPU. Also notes whether the
    stage's AdamW is fused (the strategy drops the optimizer at teardown)."""

    def __init__(self, warmup: int, cuda: bool):
        self.warmup, self.cuda, self.fused = warmup, cuda, False
        self.start: Any = None
        self.pairs: list[tuple[Any, Any]] = []
        self.cpu_ms: list[float] = []

    def _now(self):
        if not self.cuda:
            return time.perf_counter()
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    def on_train_start(self, trainer, pl_module):
        self.fused = bool(trainer.optimizers[0].defaults.get("fused"))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.start = self._now()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        end = self._now()
        if batch_idx < self.warmup:
            return
        if self.cuda:
            self.pairs.append((self.start, end))
        else:
            self.cpu_ms.append((end - self.start) * 1e3)

    def ms(self) -> list[float]:
        if not self.cuda:
            return self.cpu_ms
        torch.cuda.synchronize()
        return [a.elapsed_time(b) for a, b in self.pairs]


class _StayOnDevice(SingleDeviceStrategy):
    """Lightning's teardown copies the model and the AdamW state to the CPU (~60 GB at paper scale); here the
    optimizer is dropped instead, so each try of the batch search starts at once."""

    def teardown(self) -> None:
        self.optimizers, self.lr_scheduler_configs = [], []
        self.precision_plugin.teardown()
        self.accelerator.teardown()
        self.checkpoint_io.teardown()


def fit_steps(module: L.LightningModule, data: dict[str, Any], steps: int, warmup: int, device: str,
              gradient_clip_val: float | None = None) -> tuple[list[float], bool]:
    """`steps` optimizer steps of `module` on `data` through a Trainer; (ms per timed step, fused AdamW used)."""
    cuda = device.startswith("cuda")
    dev = torch.device(device)
    if cuda and dev.index is None:  # Lightning sets the CUDA device, which needs an index
        dev = torch.device("cuda", torch.cuda.current_device())
    timer = StepTimer(warmup, cuda)
    loader = torch.utils.data.DataLoader([data] * steps, batch_size=None)  # one batch, already on the device
    log = logging.getLogger("lightning.pytorch")
    level = log.level
    log.setLevel(logging.WARNING)  # no "GPU available" banner per try of the batch search
    try:
        with warnings.catch_warnings():
            for text in ("does not have many workers", "no `val_dataloader`", "in eval mode", "LeafSpec"):
                warnings.filterwarnings("ignore", f".*{text}.*")
            trainer = L.Trainer(accelerator="gpu" if cuda else "cpu", devices=1, strategy=_StayOnDevice(dev),
                                precision="bf16-mixed" if cuda else "32-true", max_steps=steps,
                                gradient_clip_val=gradient_clip_val, callbacks=[timer], logger=False,
                                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                                limit_val_batches=0, num_sanity_val_steps=0)
            trainer.fit(module, train_dataloaders=loader)
    finally:
        log.setLevel(level)
    return timer.ms(), timer.fused


def _free() -> None:
    gc.collect()
    torch.cuda.empty_cache()


def largest_batch(module: L.LightningModule, s: dict[str, Any], device: str, clip: float | None) -> int:
    """Double the batch from 1 until CUDA runs out of memory; the largest that ran two steps."""
    best, b = 0, 1
    while b <= MAX_AUTO_BATCH:
        oom = False
        try:
            fit_steps(module, synthetic_batch(s, b, device), 2, 1, device, clip)
        except torch.cuda.OutOfMemoryError:
            oom = True  # freed below, once the traceback (which holds the step's tensors) is gone
        module.zero_grad(set_to_none=True)
        _free()
        if oom:
            break
        best, b = b, 2 * b
    if not best:
        raise ValueError(f"batch 1 does not fit on {device_name(device)}: try --activation-checkpointing")
    return best


def bench_train(scale: str = "tiny", device: str = "cpu", stage: str = "post_train", batch: int | str = 2,
                iters: int = 10, warmup: int = 3, activation_checkpointing: bool = False,
                backbone: str = DEFAULT_BACKBONE) -> dict[str, Any]:
    """Step time, samples/s and MFU of one stage's optimizer step; batch="auto" (CUDA only) takes the largest
    batch that fits."""
    cuda = device.startswith("cuda")
    if batch == "auto" and not cuda:
        raise ValueError("--batch auto searches for the largest batch before CUDA runs out of memory; on a CPU "
                         "give a number")
    torch.manual_seed(0)
    module, s = build_stage(scale, stage, activation_checkpointing, device, backbone)
    clip = (_recipe(stage).get("trainer") or {}).get("gradient_clip_val")  # training clips, so the bench does too
    if batch == "auto":
        batch = largest_batch(module, s, device, clip)
    batch = int(batch)
    data = synthetic_batch(s, batch, device)
    step_ms, fused = fit_steps(module, data, warmup + iters, warmup, device, clip)
    policy = module.policy
    reweight = getattr(module, "reweight", "off") not in ("off", False, None)
    with torch.no_grad():
        vlm_tokens = policy.backbone.prepare(data["images"], data["image_mask"], data["instruction"])["input_ids"]
    h, w = s["hw"]
    model_flops = flops.train_flops(policy, batch, vlm_tokens.shape[1], s["views"], h, w, stage,
                                    training_repeat=module.training_repeat,
                                    reweight=reweight, flow_steps=policy.flow_steps)
    ms = summary(step_ms)
    name = device_name(device)
    peak = flops.peak_for(name) if cuda else None
    achieved = model_flops / (ms["p50_ms"] / 1e3) / 1e12
    note = None
    if activation_checkpointing:
        note = "the DiT has no checkpointing switch: only the VLM is checkpointed"
        if stage == "dit_flow":
            note += "; the frozen VLM runs under no_grad, so nothing is recomputed"
    return {"kind": "train", "scale": scale, "backbone": backbone, "stage": stage, "device": name, "batch": batch,
            "precision": "bf16-mixed" if cuda else "32-true", "fused_adamw": fused, "gradient_clip_val": clip,
            "step_ms": ms,
            "samples_per_s": batch / (ms["p50_ms"] / 1e3), "model_flops_per_step": model_flops,
            "achieved_tflops": achieved, "mfu": achieved / peak[0] if peak else None,
            "activation_checkpointing": {"backbone": activation_checkpointing, "dit": False, "note": note},
            "training_repeat": module.training_repeat, "reweight": reweight,
            "trainable_params": sum(p.numel() for p in module.parameters() if p.requires_grad),
            "vlm_tokens": int(vlm_tokens.shape[1])}
