"""CLI verbs: `xr0 sim collect|eval`, `xr0 demo`, `xr0 ablate`."""
from __future__ import annotations

import argparse

from xr0.registry import COMMANDS


def _collect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", nargs="+", default=["reach-v3"], help="Meta-World tasks (e.g. reach-v3 push-v3)")
    p.add_argument("--episodes", type=int, default=20, help="episodes per task")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="folder for shards, statistics and cards")
    p.add_argument("--name", default="metaworld", help="card name (the VL card is <name>_vl)")
    p.add_argument("--image-size", type=int, default=56, help="square frames; a multiple of 28 for Qwen-VL")
    p.add_argument("--noise", type=float, default=0.1, help="std of the noise added to executed expert actions")
    p.add_argument("--no-vl", action="store_true", help="skip the vision-language samples")


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a stage-2/3 checkpoint, or `expert` / `zero` for the reference rows")
    p.add_argument("--tasks", nargs="+", default=["reach-v3"])
    p.add_argument("--episodes", type=int, default=10, help="episodes per task")
    p.add_argument("--seed", type=int, default=1000, help="layouts differ from collection's default seed 0")
    p.add_argument("--latency-steps", type=int, default=2, help="d: ticks between a request and its chunk")
    p.add_argument("--mode", choices=("sync", "async", "rtc"), default="async")
    p.add_argument("--exec-steps", type=int, default=4, help="T_e")
    p.add_argument("--prefix", type=int, default=None, help="Δt_c (default: max(d, 1))")
    p.add_argument("--flow-steps", type=int, default=5)
    p.add_argument("--max-steps", type=int, default=150, help="episode length limit in control ticks")
    p.add_argument("--perturb-at", type=int, default=None, help="move the goal at this tick (reactivity)")
    p.add_argument("--sheets", type=int, default=2, help="contact sheets saved (first episodes)")
    p.add_argument("--out", default="runs/sim_eval", help="folder for results.json and contact sheets")


def _collect(args) -> int:
    from xr0_metaworld.collect import collect

    r = collect(args.tasks, args.episodes, args.out, seed=args.seed, image_size=args.image_size, noise=args.noise,
                name=args.name, vl=not args.no_vl)
    print(f"wrote {r['card']} ({r['episodes']} episodes, {r['samples']} samples; expert success "
          f"{100 * r['expert_success']:.0f}%)" + (f" and {r['vl_card']}" if "vl_card" in r else ""))
    return 0


def _eval(args) -> int:
    from xr0_metaworld.evaluate import EvalConfig, evaluate, format_rows

    cfg = EvalConfig(mode=args.mode, latency=args.latency_steps, exec_steps=args.exec_steps,
                     prefix=args.prefix, flow_steps=args.flow_steps, max_steps=args.max_steps,
                     perturb_at=args.perturb_at, sheets=args.sheets)
    row = evaluate(args.checkpoint, args.tasks, args.episodes, args.seed, cfg, out=args.out)
    print(format_rows([row]))
    return 0


@COMMANDS.register("sim")
class Sim:
    """Meta-World: collect scripted-expert data, evaluate a checkpoint under simulated latency."""

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        sub = p.add_subparsers(dest="sim_command", metavar="SUBCOMMAND", required=True)
        c = sub.add_parser("collect", help="scripted-expert episodes → shards + card + stats (+ VL samples)")
        _collect_args(c)
        c.set_defaults(_sim=_collect)
        e = sub.add_parser("eval", help="rollouts through the deploy executor on a simulated clock")
        _eval_args(e)
        e.set_defaults(_sim=_eval)

    @staticmethod
    def run(args) -> int:
        return args._sim(args)


@COMMANDS.register("demo")
class Demo:
    """CPU demo in minutes: Meta-World expert data → stages 1→2→3 on a tiny VLM → async eval under latency."""

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", default="runs/demo", help="output folder (a previous demo's output there is cleared)")
        p.add_argument("--tasks", nargs="+", default=["reach-v3"])
        p.add_argument("--episodes", type=int, default=40, help="expert episodes per task")
        p.add_argument("--eval-episodes", type=int, default=20, help="evaluation episodes per task and row")
        p.add_argument("--latency-steps", type=int, default=2, help="simulated inference latency d (ticks)")
        p.add_argument("--steps", type=int, nargs=3, default=[60, 400, 200], metavar=("S1", "S2", "S3"),
                       help="training steps of stages 1, 2, 3")
        p.add_argument("--seed", type=int, default=0)

    @staticmethod
    def run(args) -> int:
        from xr0_metaworld.demo import run_demo

        run_demo(args.out, tuple(args.tasks), args.episodes, args.eval_episodes, args.latency_steps,
                 tuple(args.steps), args.seed)
        return 0


@COMMANDS.register("ablate")
class Ablate:
    """Async ablation on Meta-World: post-training variants × delays × execution modes × seeds (resumable)."""

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        from xr0_metaworld.ablate import MODES, VARIANTS

        p.add_argument("recipe", help="a stage-3 recipe with a `_variant` switch, e.g. "
                                      "plugins/xr0-metaworld/recipes/metaworld_tiny/stage3.yaml")
        p.add_argument("--stage2", default="runs/demo/stage2/checkpoints/last.ckpt", help="shared stage-2 checkpoint")
        p.add_argument("--data", default="runs/demo/data", help="folder with the metaworld card (`_data`)")
        p.add_argument("--out", default="runs/ablate")
        p.add_argument("--variants", nargs="+", default=list(VARIANTS))
        p.add_argument("--delays", type=int, nargs="+", default=[0, 2, 4, 6])
        p.add_argument("--modes", nargs="+", default=list(MODES))
        p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
        p.add_argument("--tasks", nargs="+", default=["reach-v3"])
        p.add_argument("--episodes", type=int, default=10, help="evaluation episodes per task and cell")
        p.add_argument("--exec-steps", type=int, default=4)
        p.add_argument("--max-steps", type=int, default=150)
        p.add_argument("--perturb-at", type=int, default=None, help="move the goal at this tick")
        p.add_argument("--steps", type=int, default=200, help="stage-3 training steps per variant")
        p.add_argument("--chunk", type=int, default=12, help="chunk T (≥ T_e + 2·max delay keeps d=6 seamless)")
        p.add_argument("overrides", nargs="*", help="extra recipe overrides for stage 3 (key=value)")

    @staticmethod
    def run(args) -> int:
        from xr0_metaworld.ablate import run_ablation

        overrides = [f"trainer.max_steps={args.steps}", f"_chunk={args.chunk}"] + args.overrides
        md = run_ablation(args.recipe, args.stage2, args.out, args.variants, args.delays, args.modes, args.seeds,
                          args.tasks, args.episodes, args.exec_steps, args.max_steps, args.perturb_at, overrides,
                          data=args.data)
        print(md)
        print(f"[ablate] {args.out}/results.md, {args.out}/success_vs_delay.png, TensorBoard: {args.out}/tb")
        return 0
