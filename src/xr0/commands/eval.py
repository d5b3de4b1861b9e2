"""`xr0 eval offline`: compare checkpoints on recorded held-out episodes (labs without a simulator)."""
from __future__ import annotations

import argparse

from xr0.registry import COMMANDS


@COMMANDS.register("eval")
class Eval:
    """Evaluate checkpoints without a robot: `xr0 eval offline CKPT [CKPT ...] --data CARD`."""

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        sub = p.add_subparsers(dest="eval_command", metavar="SUBCOMMAND", required=True)
        o = sub.add_parser("offline", help="action error per chunk step, chunk-boundary jumps under a committed "
                                            "prefix, response after discontinuities, on recorded episodes")
        o.add_argument("checkpoints", nargs="+", metavar="CKPT", help="stage-2/3 checkpoints or export folders; "
                                                                      "the first is the reference of the differences")
        o.add_argument("--data", required=True, metavar="CARD", help="data card of held-out episodes (name or path)")
        o.add_argument("--episodes", default=None, help="which episodes, e.g. 40-49,52 (default: all in the card)")
        o.add_argument("--max-episodes", type=int, default=None, help="at most this many (the first selected)")
        o.add_argument("--exec-steps", type=int, default=None, help="T_e of the replayed executor (default "
                                                                     "min(4, T/2))")
        o.add_argument("--delays", type=int, nargs="+", default=[0, 2, 4, 6], help="delays d in ticks")
        o.add_argument("--window", type=int, default=5, help="ticks after a discontinuity to follow")
        o.add_argument("--noise-seed", type=int, default=0, help="flow noise reseeded per call: every checkpoint "
                                                                 "sees the same noise")
        o.add_argument("--out", default=None, help="folder for results.md and results.json")

    @staticmethod
    def run(args) -> int:
        from xr0.offline import run_offline

        if args.window < 1:
            raise ValueError(f"--window must be >= 1, got {args.window}")
        md = run_offline(args.checkpoints, args.data, args.episodes, args.max_episodes, args.exec_steps,
                         tuple(args.delays), args.window, args.noise_seed, args.out)
        print(md)
        if args.out:
            print(f"[eval offline] {args.out}/results.md, {args.out}/results.json")
        return 0
