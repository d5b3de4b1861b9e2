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
    p.add_argument("--obs", choices=("state", "image"), default="state",
                   help="state: goal and object positions in the state; image: only in the frames")
    p.add_argument("--perturb-at", type=int, default=None,
                   help="move the goal (or object) at this tick in every episode; the expert follows it")
    p.add_argument("--perturb", choices=("goal", "object"), default="goal", help="what --perturb-at moves")


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
    p.add_argument("--perturb-at", type=int, default=None,
                   help="move the goal (or object) at this tick; reports reaction time and success after the move")
    p.add_argument("--perturb", choices=("goal", "object"), default="goal", help="what --perturb-at moves")
    p.add_argument("--obs", choices=("state", "image"), default=None,
                   help="observation mode (default: the checkpoint's; `state` for the expert/zero rows)")
    p.add_argument("--sheets", type=int, default=2, help="contact sheets saved (first episodes)")
    p.add_argument("--out", default="runs/sim_eval", help="folder for results.json and contact sheets")


def _collect(args) -> int:
    from xr0_metaworld.collect import collect

    r = collect(args.tasks, args.episodes, args.out, seed=args.seed, image_size=args.image_size, noise=args.noise,
                name=args.name, vl=not args.no_vl, obs=args.obs, perturb_at=args.perturb_at, perturb=args.perturb)
    print(f"wrote {r['card']} ({r['episodes']} episodes, {r['samples']} samples; expert success "
          f"{100 * r['expert_success']:.0f}%)" + (f" and {r['vl_card']}" if "vl_card" in r else ""))
    return 0


def _eval(args) -> int:
    from xr0_metaworld.evaluate import EvalConfig, evaluate, format_rows

    cfg = EvalConfig(mode=args.mode, latency=args.latency_steps, exec_steps=args.exec_steps,
                     prefix=args.prefix, flow_steps=args.flow_steps, max_steps=args.max_steps,
                     perturb_at=args.perturb_at, perturb=args.perturb, sheets=args.sheets, obs=args.obs)
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
    """Post-training ablation on Meta-World: points × execution modes × delays × seeds, factor effects (resumable)."""

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        from xr0_metaworld.ablate import MODES

        p.add_argument("recipe", help="a stage-3 recipe, e.g. plugins/xr0-metaworld/recipes/metaworld_tiny/stage3.yaml "
                                      "(its stage1.yaml and stage2.yaml siblings train the earlier stages)")
        p.add_argument("--data", default="runs/demo/data", help="folder with the metaworld card (`xr0 sim collect`)")
        p.add_argument("--out", default="runs/ablate")
        p.add_argument("--variants", nargs="+", default=None,
                       help="named points (the recipe's _variants, plus sync training_rtc lambda lambda_no_offset "
                            "lambda_no_reweight causal_offset); default: all, unless --factorial/--point is given")
        p.add_argument("--factorial", nargs="+", default=None, metavar="AXIS=L1,L2",
                       help="every combination of these levels, other axes as --base, e.g. mask=causal,lambda "
                            "rope_offset=0,10 reweight=off,batch,sample prefix_dropout=off,on")
        p.add_argument("--point", nargs="+", default=[], metavar="AXIS=L,AXIS=L",
                       help="single points as axis assignments over --base, e.g. mask=causal,rope_offset=10")
        p.add_argument("--base", default="lambda", help="the point --factorial and --point start from")
        p.add_argument("--delays", type=int, nargs="+", default=[0, 2, 4, 6])
        p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
        p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
        p.add_argument("--tasks", nargs="+", default=["reach-v3"])
        p.add_argument("--episodes", type=int, default=10, help="evaluation episodes per task and cell")
        p.add_argument("--exec-steps", type=int, default=4)
        p.add_argument("--max-steps", type=int, default=150)
        p.add_argument("--perturb-at", type=int, default=None,
                       help="move the goal (or object) at this tick: adds reaction time and success after the move")
        p.add_argument("--perturb", choices=("goal", "object"), default="goal")
        p.add_argument("--steps", type=int, nargs=3, default=[60, 400, 200], metavar=("S1", "S2", "S3"),
                       help="training steps of stage 1, each stage 2, each stage 3")
        p.add_argument("--chunk", type=int, default=12, help="chunk T (≥ T_e + max delay; 12 keeps d=6 seamless)")
        p.add_argument("--stage1", default=None, help="a stage-1 checkpoint to start from (default: train one)")
        p.add_argument("--stage2", nargs="+", default=None, metavar="CKPT",
                       help="stage-2 checkpoints to reuse, each for the RoPE offset it was trained with")
        p.add_argument("--stage1-recipe", default=None)
        p.add_argument("--stage2-recipe", default=None)
        p.add_argument("--reps", type=int, default=2000, help="bootstrap replicates")
        p.add_argument("--set", dest="every_stage", action="append", default=[], metavar="KEY=VALUE",
                       help="an override for every stage (e.g. _image=56, data.batch_size=16); repeatable")
        p.add_argument("overrides", nargs="*", help="extra recipe overrides for stage 3 (key=value)")

    @staticmethod
    def run(args) -> int:
        from xr0_metaworld.ablate import run_ablation
        from xr0_metaworld.points import recipe_points, select

        variants = args.variants
        if variants is None and not args.factorial and not args.point:
            variants = list(recipe_points(args.recipe)[0])
        points, sampler = select(args.recipe, variants or [], " ".join(args.factorial or []), args.point, args.base)
        md = run_ablation(args.recipe, args.out, args.data, points, args.delays, args.modes, args.seeds, args.tasks,
                          args.episodes, args.exec_steps, args.max_steps, args.perturb_at, args.perturb,
                          tuple(args.steps), args.chunk, args.stage1, args.stage2, args.overrides,
                          args.stage1_recipe, args.stage2_recipe, sampler, args.reps, args.every_stage)
        print(md)
        print(f"[ablate] {args.out}/results.md, {args.out}/ablation.png, TensorBoard: {args.out}/tb")
        return 0
