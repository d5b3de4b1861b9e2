"""`xr0 bench infer|train`: latency and throughput at tiny (CPU) or paper scale."""
from __future__ import annotations

import argparse

from xr0.registry import COMMANDS


@COMMANDS.register("bench")
class Bench:
    """Benchmark policy inference latency or training throughput (--scale tiny|paper)."""

    @staticmethod
    def add_arguments(p):
        sub = p.add_subparsers(dest="what", required=True)
        for name in ("infer", "train"):
            q = sub.add_parser(name)
            q.add_argument("--scale", choices=("tiny", "paper"), default="tiny")
            q.add_argument("--backbone", default="qwen3vl",
                           help="a registered backbone (xr0 ls backbones) at its declared sizes for the scale")
            q.add_argument("--device", default="cuda" if _cuda() else "cpu")
            q.add_argument("--iters", type=int, default=100 if name == "infer" else 10)
            q.add_argument("--warmup", type=int, default=10 if name == "infer" else 3)
            q.add_argument("--out", default=None, help="write the JSON result here")
            if name == "infer":
                q.add_argument("--steps", type=int, default=5)
                q.add_argument("--no-eager", action="store_true", help="time the fast path only (no eager baseline)")
                q.add_argument("--compile", action="store_true", help="torch.compile the fast path before capture")
                q.add_argument("--peak", type=float, nargs=2, metavar=("TFLOPS", "TBPS"), default=None,
                               help="device peak for the roofline when its name is not in xr0.flops.PEAKS")
            else:
                q.add_argument("--stage", choices=("dit_flow", "post_train"), default="post_train")
                q.add_argument("--batch", type=_batch, default=2,
                               help="samples per step, or 'auto' (CUDA): the largest that fits")
                q.add_argument("--activation-checkpointing", action="store_true",
                               help="checkpoint the VLM's layers (the DiT has no switch)")

    @staticmethod
    def run(args):
        from xr0 import bench
        from xr0.bench.infer import bench_infer, line
        from xr0.bench.train import bench_train

        if args.what == "infer":
            res = bench_infer(args.scale, args.device, args.iters, args.warmup, args.steps, eager=not args.no_eager,
                              compile=args.compile, peak=tuple(args.peak) if args.peak else None,
                              backbone=args.backbone)
            print(line(res))
        else:
            res = bench_train(args.scale, args.device, args.stage, args.batch, args.iters, args.warmup,
                              args.activation_checkpointing, args.backbone)
            mfu = "n/a (no peak known)" if res["mfu"] is None else f"{100 * res['mfu']:.1f}%"
            print(f"[xr0 bench train] {res['scale']} {res['backbone']} {res['stage']} on {res['device']}: batch {res['batch']}, "
                  f"{res['precision']}, step p50 {res['step_ms']['p50_ms']:.1f} ms, {res['samples_per_s']:.1f} "
                  f"samples/s, {res['achieved_tflops']:.2f} TFLOP/s model, MFU {mfu}")
        print(bench.write(res, args.out))
        return 0


def _batch(text: str) -> int | str:
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"--batch takes a positive integer or 'auto', got {text!r}")
    return int(text)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
