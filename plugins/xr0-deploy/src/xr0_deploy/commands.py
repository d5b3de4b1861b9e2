"""CLI verbs: `xr0 serve CKPT` and `xr0 deploy simulate|run`."""
from __future__ import annotations

import argparse
import os
import sys

from xr0.registry import COMMANDS, Registry

# Robot drivers come from embodiment plugins (robot SDKs stay out of training environments).
ROBOTS = Registry("robot")


@ROBOTS.register("sim_arm")
def _sim_arm(dof: int = 7, clock=None, max_delta: float | None = None):
    """Simulated position-controlled arm (one camera, joints), for tests and dry runs."""
    from xr0_deploy.sim import SimArm

    return SimArm(dof=dof, clock=clock, max_delta=max_delta)


def _policy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", default="sim:tiny",
                   help="sim:tiny (tiny random policy), an xr0 checkpoint, or ws://host:port of `xr0 serve`")
    p.add_argument("--api-key", default=os.environ.get("XR0_API_KEY"), help="for ws:// policies (or XR0_API_KEY)")
    p.add_argument("--steps", type=int, default=5, help="flow-matching steps (local policies)")
    p.add_argument("--chunk-len", type=int, default=10, help="chunk length of sim:tiny")
    p.add_argument("--seed", type=int, default=0)
    _fast_args(p)


def _fast_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fast", choices=("auto", "on", "off"), default="auto",
                   help="checkpoints: the fast inference path (planned prompt, CUDA graphs on a GPU); off = HF forward")
    p.add_argument("--compile", action="store_true", help="with --fast: torch.compile the chunk before capture")


def _executor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=("sync", "async", "rtc"), default="async")
    p.add_argument("--exec-steps", type=int, default=4, help="T_e: actions executed before the next inference")
    p.add_argument("--prefix", type=int, default=4, help="Δt_c: committed prefix actions (async)")
    p.add_argument("--estimator", choices=("max", "quantile"), default="max", help="Δt_inf estimate")
    p.add_argument("--window", type=int, default=20)
    p.add_argument("--quantile", type=float, default=0.9)
    p.add_argument("--adapt-prefix", action="store_true", help="grow Δt_c to the measured latency")
    p.add_argument("--max-guidance", type=float, default=5.0, help="rtc: β")
    p.add_argument("--retry-max-ticks", type=int, default=30,
                   help="after failed inferences (server lost) wait up to this many ticks between retries "
                        "(exponential from 1, jittered)")
    p.add_argument("--dof", type=int, default=7, help="simulated arm joints")
    p.add_argument("--max-delta", type=float, default=None, help="per-tick action change bound")
    p.add_argument("--prompt", default="")


def open_policy(args):
    """The ChunkPolicy an argument names (remote, checkpoint or simulated)."""
    if args.policy.startswith(("ws://", "wss://")):
        from xr0_deploy.client import RemotePolicy

        return RemotePolicy(args.policy, api_key=args.api_key)
    from xr0_deploy.local import load_local

    return load_local(args.policy, steps=args.steps, chunk_len=args.chunk_len, seed=args.seed, fast=args.fast,
                      compile=args.compile)


def _executor_config(args):
    """ExecutorConfig from the shared executor flags."""
    from xr0_deploy.executor import ExecutorConfig

    return ExecutorConfig(mode=args.mode, exec_steps=args.exec_steps, prefix_steps=args.prefix,
                         estimator=args.estimator, window=args.window, quantile=args.quantile,
                         adapt_prefix=args.adapt_prefix, max_guidance=args.max_guidance,
                         retry_max_ticks=args.retry_max_ticks)


@COMMANDS.register("deploy")
class Deploy:
    """Run a policy on a robot: `simulate` (tick-exact, simulated latency, writes a trace) or `run` (real time)."""

    @staticmethod
    def add_arguments(p):
        sub = p.add_subparsers(dest="deploy_command", metavar="{simulate,run}", required=True)
        s = sub.add_parser("simulate", help="simulated arm + policy with a simulated delay; writes the trace")
        _policy_args(s)
        _executor_args(s)
        s.add_argument("--latency-steps", type=int, required=True, help="d: inference latency in ticks (>= 1)")
        s.add_argument("--ticks", type=int, default=90)
        s.add_argument("--hz", type=float, default=30.0)
        s.add_argument("--trace", default="deploy_trace.jsonl", help="JSON-lines trace output")
        r = sub.add_parser("run", help="real-time loop on a robot driver (default: the simulated arm)")
        _policy_args(r)
        _executor_args(r)
        r.add_argument("--robot", default="sim_arm", help="robot driver name (registered by embodiment plugins)")
        r.add_argument("--hz", type=float, default=30.0)
        r.add_argument("--ticks", type=int, default=300)

    @staticmethod
    def run(args):
        import warnings

        from xr0_deploy.executor import Executor, LatencyWarning
        from xr0_deploy.safety import Safety

        cfg = _executor_config(args)
        policy = open_policy(args)
        if args.deploy_command == "simulate":
            from xr0_deploy.sim import SimArm, simulate, write_trace

            arm = SimArm(dof=args.dof, max_delta=args.max_delta)
            ex = Executor(cfg, Safety(arm.limits))
            with warnings.catch_warnings():
                warnings.simplefilter("always", LatencyWarning)
                # one clean line on stderr per warning (restored when the block ends)
                warnings.showwarning = lambda m, *a, **k: print(f"warning: {m}", file=sys.stderr)
                simulate(ex, policy, arm, args.ticks, args.latency_steps, hz=args.hz, prompt=args.prompt)
            path = write_trace(ex.trace, args.trace)
            held = sum(r["held"] for r in ex.trace)
            ev = ", ".join(f"{k}={v}" for k, v in sorted(ex.events.counts.items())) or "none"
            why = ", ".join(f"{k}={v}" for k, v in sorted(ex.hold_reasons.items()))
            print(f"{len(ex.trace)} ticks, {len(ex.trace) - held} actions, {held} held"
                  f"{f' ({why})' if why else ''}; events: {ev}")
            print(f"trace -> {path}")
            return 0
        from xr0_deploy.runtime import RealTimeRunner

        robot = ROBOTS.build(args.robot, dof=args.dof, max_delta=args.max_delta)
        ex = Executor(cfg, Safety(robot.limits))
        step = getattr(robot, "step", None)  # the simulated arm advances its physics once per tick
        runner = RealTimeRunner(ex, robot, policy, hz=args.hz, prompt=args.prompt,
                                on_tick=(lambda k, t: step(1.0 / args.hz)) if step else None)
        print(runner.run(args.ticks).summary())
        return 0


@COMMANDS.register("serve")
class Serve:
    """Serve a checkpoint over websocket + msgpack-numpy (openpi protocol, plus prefix_actions and rtc)."""

    @staticmethod
    def add_arguments(p):
        p.add_argument("checkpoint", help="xr0 checkpoint file or export directory, or sim:tiny")
        p.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 exposes it to the network)")
        p.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed)")
        p.add_argument("--api-key", default=os.environ.get("XR0_API_KEY"),
                       help="require this key in the Api-Key (or `Authorization: Api-Key`) header; or XR0_API_KEY")
        p.add_argument("--max-message-mb", type=float, default=16.0, help="larger requests close the connection")
        p.add_argument("--steps", type=int, default=5, help="flow-matching steps")
        p.add_argument("--device", default="cpu")
        p.add_argument("--chunk-len", type=int, default=10, help="chunk length of sim:tiny")
        p.add_argument("--seed", type=int, default=0)
        _fast_args(p)

    @staticmethod
    def run(args):
        from xr0_deploy.local import load_local
        from xr0_deploy.server import PolicyServer

        policy = load_local(args.checkpoint, steps=args.steps, device=args.device, chunk_len=args.chunk_len,
                            seed=args.seed, fast=args.fast, compile=args.compile)
        server = PolicyServer(policy, policy.metadata(), host=args.host, port=args.port, api_key=args.api_key,
                              max_message_bytes=int(args.max_message_mb * 2**20))
        if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
            print(f"xr0 serve: warning: listening on {args.host} without --api-key", file=sys.stderr)
        server.start()
        print(f"serving {args.checkpoint} on ws://{args.host}:{server.port}", flush=True)
        try:
            server._thread.join()
        except KeyboardInterrupt:
            server.stop()
        return 0
