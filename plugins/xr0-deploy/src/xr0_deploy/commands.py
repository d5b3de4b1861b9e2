"""CLI verbs: `xr0 serve CKPT` and `xr0 deploy simulate|run`."""
from __future__ import annotations

import argparse
import inspect
import os
import sys
from pathlib import Path

from xr0.registry import COMMANDS, ROBOTS  # robot drivers come from plugins (robot SDKs stay out of training)


@ROBOTS.register("sim_arm")
def _sim_arm(embodiment=None, clock=None, max_delta: float | None = None):
    """Simulated position-controlled arm shaped like `embodiment` (dims, limits, cameras at their sizes)."""
    from xr0.embodiments import get
    from xr0_deploy.sim import SimArm

    return SimArm.for_embodiment(embodiment or get("sim_arm"), clock=clock, max_delta=max_delta)


def policy_embodiment(policy):
    """The embodiment a policy serves: a local policy's processor, or a remote server's metadata."""
    proc = getattr(policy, "processor", None)
    if proc is not None:
        return proc.embodiment
    meta = getattr(policy, "metadata", None)
    if not meta and hasattr(policy, "connect"):
        policy.connect()
        meta = policy.metadata
    if not meta or "action_names" not in meta:
        raise ValueError("the policy server sent no embodiment in its metadata (not an xr0 server?): pass --hz and "
                         "a robot driver that knows its own shape")
    from xr0.embodiments import Embodiment

    return Embodiment(name=meta["embodiment"], action_names=tuple(meta["action_names"]),
                      state_names=tuple(meta["state_names"]), cameras=tuple(meta["cameras"]),
                      control_hz=float(meta["control_hz"]), chunk=int(meta["chunk_len"]),
                      action_low=tuple(meta["action_low"]), action_high=tuple(meta["action_high"]),
                      camera_sizes=tuple(tuple(meta["image_size"]) for _ in meta["cameras"]) if meta.get("image_size")
                      else ())


def _held_summary(ex) -> str:
    """`held 12 (inference_failed 9: RequestError: state: ..., wait_inference 3)`: every held tick by reason."""
    if not ex.hold_reasons:
        return "held 0"
    parts = [f"{k} {n}" + (f": {ex.hold_details[k]}" if ex.hold_details.get(k) else "")
             for k, n in sorted(ex.hold_reasons.items(), key=lambda kv: -kv[1])]
    return f"held {sum(ex.hold_reasons.values())} (" + "; ".join(parts) + ")"


def _trace_meta(emb, args, policy) -> dict:
    return {"embodiment": emb.name, "action_names": list(emb.action_names), "action_low": list(emb.action_low),
            "action_high": list(emb.action_high), "hz": args.hz, "mode": args.mode,
            "latency_steps": getattr(args, "latency_steps", None), "policy": args.policy,
            "chunk_len": getattr(policy, "chunk_len", None)}


def _policy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", default="sim:tiny",
                   help="sim:tiny (tiny random policy), an xr0 checkpoint, or ws://host:port of `xr0 serve`")
    p.add_argument("--api-key", default=os.environ.get("XR0_API_KEY"), help="for ws:// policies (or XR0_API_KEY)")
    p.add_argument("--steps", type=int, default=5, help="flow-matching steps (local policies)")
    p.add_argument("--chunk-len", type=int, default=10, help="chunk length of sim:tiny")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise-seed", type=int, default=None,
                   help="local policies: reseed the flow noise on every call (the released inference uses 42)")
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
    p.add_argument("--max-delta", type=float, default=None, help="per-tick action change bound")
    p.add_argument("--prompt", default="")
    p.add_argument("--hz", type=float, default=None, help="control rate (default: the embodiment's control_hz)")
    p.add_argument("--plot", default=None, metavar="PNG", help="also draw the trace (see `xr0 deploy plot`)")


def open_policy(args):
    """The ChunkPolicy an argument names (remote, checkpoint or simulated)."""
    if args.policy.startswith(("ws://", "wss://")):
        from xr0_deploy.client import RemotePolicy

        return RemotePolicy(args.policy, api_key=args.api_key)
    from xr0_deploy.local import load_local

    return load_local(args.policy, steps=args.steps, chunk_len=args.chunk_len, seed=args.seed, fast=args.fast,
                      compile=args.compile, noise_seed=args.noise_seed)


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
        sub = p.add_subparsers(dest="deploy_command", metavar="{simulate,run,plot}", required=True)
        s = sub.add_parser("simulate", help="simulated arm + policy with a simulated delay; writes the trace")
        _policy_args(s)
        _executor_args(s)
        s.add_argument("--latency-steps", type=int, required=True, help="d: inference latency in ticks (>= 1)")
        s.add_argument("--ticks", type=int, default=90)
        s.add_argument("--trace", default="deploy_trace.jsonl", help="JSON-lines trace output")
        s.add_argument("--drop-camera", action="append", default=[], metavar="CAM:N",
                       help="drop every N-th frame of camera CAM (the simulated arm reports it missing)")
        r = sub.add_parser("run", help="real-time loop on a robot driver (default: the simulated arm)")
        _policy_args(r)
        _executor_args(r)
        r.add_argument("--robot", default="sim_arm", help="robot driver name (registered by embodiment plugins)")
        r.add_argument("--ticks", type=int, default=300)
        r.add_argument("--trace", default=None, help="JSON-lines trace output")
        g = sub.add_parser("plot", help="draw a trace: actions per dim coloured by chunk, inference, holds, jumps")
        g.add_argument("trace", help="a trace written by `xr0 deploy simulate|run --trace`")
        g.add_argument("--out", default=None, help="PNG to write (default: TRACE with .png)")

    @staticmethod
    def run(args):
        import warnings

        from xr0_deploy.executor import Executor, LatencyWarning
        from xr0_deploy.plot import plot_trace
        from xr0_deploy.safety import Safety
        from xr0_deploy.sim import read_trace, read_trace_meta, write_trace

        if args.deploy_command == "plot":
            out = plot_trace(read_trace(args.trace), args.out or str(Path(args.trace).with_suffix(".png")),
                             read_trace_meta(args.trace))
            print(f"plot -> {out}")
            return 0
        cfg = _executor_config(args)
        policy = open_policy(args)
        emb = policy_embodiment(policy)
        args.hz = args.hz or emb.control_hz
        if args.deploy_command == "simulate":
            from xr0_deploy.sim import SimArm, simulate

            drops = dict(_drop(d, emb.cameras) for d in args.drop_camera)
            arm = SimArm.for_embodiment(emb, _trained_sizes(policy, emb), max_delta=args.max_delta,
                                        drop_camera=drops)
            ex = Executor(cfg, Safety(arm.limits))
            with warnings.catch_warnings():
                warnings.simplefilter("always", LatencyWarning)
                # one clean line on stderr per warning (restored when the block ends)
                warnings.showwarning = lambda m, *a, **k: print(f"warning: {m}", file=sys.stderr)
                simulate(ex, policy, arm, args.ticks, args.latency_steps, hz=args.hz, prompt=args.prompt)
            path = write_trace(ex.trace, args.trace, _trace_meta(emb, args, policy))
            ev = ", ".join(f"{k}={v}" for k, v in sorted(ex.events.counts.items())) or "none"
            print(f"{emb.name} at {args.hz:g} Hz: {len(ex.trace)} ticks, {len(ex.trace) - sum(ex.hold_reasons.values())} "
                  f"actions, {_held_summary(ex)}; events: {ev}")
            print(f"trace -> {path}")
            if args.plot:
                print(f"plot -> {plot_trace(ex.trace, args.plot, _trace_meta(emb, args, policy))}")
            return 0
        from xr0_deploy.runtime import RealTimeRunner

        import time

        builder = ROBOTS.get(args.robot)
        accepts = inspect.signature(builder).parameters  # drivers that want the policy's shape or the loop's clock
        extra = {k: v for k, v in (("embodiment", emb), ("clock", time.monotonic)) if k in accepts}
        robot = ROBOTS.build(args.robot, max_delta=args.max_delta, **extra)
        ex = Executor(cfg, Safety(robot.limits))
        step = getattr(robot, "step", None)  # the simulated arm advances its physics once per tick
        runner = RealTimeRunner(ex, robot, policy, hz=args.hz, prompt=args.prompt,
                                on_tick=(lambda k, t: step(1.0 / args.hz)) if step else None)
        print(f"{emb.name} at {args.hz:g} Hz: " + runner.run(args.ticks).summary() + f"; {_held_summary(ex)}")
        if args.trace or args.plot:
            path = write_trace(ex.trace, args.trace or str(Path(args.plot).with_suffix(".jsonl")),
                               _trace_meta(emb, args, policy))
            print(f"trace -> {path}")
        if args.plot:
            print(f"plot -> {plot_trace(ex.trace, args.plot, _trace_meta(emb, args, policy))}")
        return 0


def _drop(spec: str, cameras) -> tuple[str, int]:
    cam, _, every = spec.partition(":")
    if cam not in cameras or not every.isdigit() or int(every) < 1:
        raise ValueError(f"--drop-camera {spec!r}: expected CAM:N with CAM one of {list(cameras)} and N >= 1")
    return cam, int(every)


def _trained_sizes(policy, emb) -> dict:
    size = getattr(getattr(getattr(policy, "processor", None), "image", None), "size", None)
    return {c: tuple(size) for c in emb.cameras} if size else {}


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
        p.add_argument("--seed", type=int, default=0, help="sim:tiny's weights")
        p.add_argument("--noise-seed", type=int, default=None,
                       help="reseed the flow noise on every request (the released inference uses 42); a request's "
                            "own `seed` wins")
        p.add_argument("--action-frame", choices=("absolute", "delta"), default=None,
                       help="default frame of replies and prefix_actions: absolute targets (the default) or deltas "
                            "from the observed state on the embodiment's relative dims; a request's own "
                            "`action_frame` wins")
        _fast_args(p)

    @staticmethod
    def run(args):
        from xr0_deploy.local import load_local
        from xr0_deploy.server import PolicyServer

        policy = load_local(args.checkpoint, steps=args.steps, device=args.device, chunk_len=args.chunk_len,
                            seed=args.seed, fast=args.fast, compile=args.compile, noise_seed=args.noise_seed,
                            frame=args.action_frame)
        server = PolicyServer(policy, policy.metadata(), host=args.host, port=args.port, api_key=args.api_key,
                              max_message_bytes=int(args.max_message_mb * 2**20))
        if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
            print(f"xr0 serve: warning: listening on {args.host} without --api-key", file=sys.stderr)
        server.start()
        meta = policy.metadata()
        print(f"serving {args.checkpoint} ({meta['embodiment']}, {meta['action_dim']}-D actions in the "
              f"{meta['action_frame']} frame, cameras {meta['cameras']} resized to {meta['image_size'] or 'smart'}, "
              f"chunk {meta['chunk_len']} at {meta['control_hz']:g} Hz) on ws://{args.host}:{server.port}", flush=True)
        try:
            server._thread.join()
        except KeyboardInterrupt:
            server.stop()
        return 0
