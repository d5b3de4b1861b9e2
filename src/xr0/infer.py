"""The fast inference path: `FastPolicy.predict_chunk` computes what `Policy.predict_chunk` computes, faster.

- The prompt (tokens, positions, masks, vision tables: whatever the backbone needs besides the pixels) is planned
  once per (instructions, views, image size) and reused: the backbone's declared static prefill
  (`Backbone.static_prefill()`, xr0.backbones.protocol; e.g. xr0.backbones.qwen3vl_static). A backbone that
  declares none cannot run here: FastPolicy says so, and `xr0 serve` then serves `Policy.predict_chunk`.
- The VLM runs once per chunk and every DiT step reuses its K/V, RoPE and mask (DiT.prepare / DiT.step).
- Shapes are static and nothing syncs with the host between the images going in and the chunk coming out,
  so on CUDA the whole chunk — vision, prefill, the Euler loop — is captured once per plan as CUDA graphs and
  replayed: one launch instead of thousands of kernel launches from Python.
- `compile=True` additionally runs the chunk through `torch.compile` (fused elementwise kernels) before capture.

tests/test_infer.py holds FastPolicy equal to Policy on CPU; `xr0 bench infer` times both in the same run.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

PARTS = ("vision", "prefill", "dit")


class Graphed:
    """fn(**inputs) captured as one CUDA graph on `device`: replay copies new inputs into the captured buffers.
    Inputs that are another graph's outputs (`shared`) are read in place: chained graphs pass tensors without
    copies. The graph reads parameters by address: moving or re-assigning them afterwards needs a new FastPolicy
    (an in-place load_state_dict is fine)."""

    def __init__(self, fn: Callable[..., Any], inputs: dict[str, Tensor], device: torch.device,
                 shared: tuple[str, ...] = (), warmup: int = 3):
        self.device = device
        self.inputs = {k: (v if k in shared else v.clone()) for k, v in inputs.items()}
        with torch.cuda.device(device):  # streams and capture on the policy's GPU, not the current one
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up off the capture stream (cuBLAS workspaces, compile, autotune)
                for _ in range(warmup):
                    fn(**self.inputs)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            # thread_local: a camera thread's CUDA work during a capture must not abort it
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self.output = fn(**self.inputs)

    def __call__(self, **inputs: Tensor) -> Any:
        with torch.cuda.device(self.device):
            for k, v in inputs.items():
                if v is not self.inputs[k]:
                    self.inputs[k].copy_(v, non_blocking=True)
            self.graph.replay()
        return self.output


def static_prefill(policy):
    """The policy's backbone's declared static prefill (xr0.backbones.protocol), or None."""
    return policy.backbone.static_prefill()


class FastPolicy:
    """Wraps a Policy for inference: same interface as Policy for predict_chunk, context and velocity (the deploy
    plugin's RTC path uses the last two, unchanged). A chunk is three parts — vision, prefill, DiT loop — chained;
    on CUDA each is a CUDA graph reading the previous one's outputs in place. The backbone's declared static
    prefill supplies the first two."""

    def __init__(self, policy, cuda_graph: bool | None = None, compile: bool = False, max_plans: int = 8):
        self.static = static_prefill(policy)
        if self.static is None:
            raise ValueError(f"backbone {type(policy.backbone).__name__} declares no static prefill plan "
                             f"(its static_prefill() returns None), so FastPolicy cannot run it; use "
                             f"Policy.predict_chunk (xr0 serve --fast off)")
        self.policy, self.head = policy.eval(), policy.head
        self.device = next(policy.parameters()).device
        self.cuda_graph = self.device.type == "cuda" if cuda_graph is None else cuda_graph
        if self.cuda_graph and self.device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs the policy on a CUDA device, it is on {self.device}")
        self.compile, self.max_plans = compile, max_plans
        self._plans: OrderedDict[tuple, dict[str, Any]] = OrderedDict()

    # ---------------------------------------------------------------- the policy interface
    def context(self, batch: dict[str, Any]):
        return self.policy.context(batch)

    def velocity(self, *args, **kwargs) -> Tensor:
        return self.policy.velocity(*args, **kwargs)

    @torch.inference_mode()  # always: captured buffers made in inference mode cannot be written outside it
    def predict_chunk(self, batch: dict[str, Any], prefix: Tensor | None = None, steps: int | None = None,
                      noise: Tensor | None = None) -> Tensor:
        """Actions (B,T,A), as Policy.predict_chunk: prefix (B,P,A) are committed actions kept fixed."""
        if self.cuda_graph and torch.is_autocast_enabled("cuda"):
            raise RuntimeError("FastPolicy's CUDA graphs cannot run under torch.autocast (its cast-weight cache is "
                               "freed after the capture): cast the policy instead, e.g. policy.to(torch.bfloat16)")
        inputs, plan = self._inputs(batch, prefix, noise)
        out = chain(self._parts(plan, steps or self.policy.flow_steps, inputs), inputs)
        return out.clone() if self.cuda_graph else out  # a graph's output buffer is overwritten by the next replay

    @torch.inference_mode()
    def parts(self, batch: dict[str, Any], steps: int | None = None) -> dict[str, Callable[[], Any]]:
        """Callables that rerun vision, prefill and the DiT loop of this batch's chunk one at a time (replays of
        the same graphs predict_chunk chains), for the benchmark's breakdown."""
        inputs, plan = self._inputs(batch, None, None)
        steps = steps or self.policy.flow_steps
        parts = self._parts(plan, steps, inputs)
        seen = parts["vision"](images=inputs["images"], image_mask=inputs["image_mask"])
        keys, values = parts["prefill"](**_named("x", seen))
        args = {"vision": {"images": inputs["images"], "image_mask": inputs["image_mask"]},
                "prefill": _named("x", seen),
                "dit": {**_named("k", keys), **_named("v", values),
                        **{k: inputs[k] for k in DIT_INPUTS}}}
        return {p: (lambda f=parts[p], a=args[p]: _in_inference(f, a)) for p in PARTS}

    def tokens(self, batch: dict[str, Any]) -> int:
        """VLM tokens per sample of this batch's planned prompt (the K/V length the DiT reads)."""
        return self.static.tokens(self._plan(batch)["prompt"])

    # ---------------------------------------------------------------- the three parts
    def _parts(self, plan: dict[str, Any], steps: int, inputs: dict[str, Tensor]) -> dict[str, Callable[..., Any]]:
        """The part functions of a plan, built on first use (vision and prefill once per plan, the DiT loop once per
        step count): compiled if asked, and on CUDA each captured as a graph reading the previous one's outputs."""
        prompt = plan["prompt"]
        if "vision" not in plan:
            vision = lambda images, image_mask: list(self.static.vision(prompt, images, image_mask))
            prefill = lambda **seen: self.static.prefill(prompt, _unnamed("x", seen), self.head.depth)
            vision, prefill = (torch.compile(vision, dynamic=False), torch.compile(prefill, dynamic=False)) \
                if self.compile else (vision, prefill)
            if self.cuda_graph:
                vision = Graphed(vision, {"images": inputs["images"], "image_mask": inputs["image_mask"]}, self.device)
                pre_in = _named("x", vision.output)
                prefill = Graphed(prefill, pre_in, self.device, shared=tuple(pre_in))
            plan["vision"], plan["prefill"] = vision, prefill
        if ("dit", steps) not in plan:
            dit = lambda **kw: self._dit(prompt, steps, _unnamed("k", kw), _unnamed("v", kw), kw["state"],
                                         kw["action_mask"], kw["noise"], kw["prefix"], kw["prefix_len"])
            dit = torch.compile(dit, dynamic=False) if self.compile else dit
            if self.cuda_graph:
                keys, values = plan["prefill"].output
                kv = {**_named("k", keys), **_named("v", values)}
                dit = Graphed(dit, {**kv, **{k: inputs[k] for k in DIT_INPUTS}}, self.device, shared=tuple(kv))
            plan[("dit", steps)] = dit
        return {"vision": plan["vision"], "prefill": plan["prefill"], "dit": plan[("dit", steps)]}

    # ---------------------------------------------------------------- internals
    def _plan(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The plan of this batch's prompt layout (LRU, max_plans kept): planned once, then its parts built once."""
        _, v, _, h, w = batch["images"].shape
        key = (tuple(batch["instruction"]), v, h, w)
        plan = self._plans.get(key)
        if plan is None:
            plan = {"prompt": self.static.plan(list(batch["instruction"]), v, h, w)}
            self._plans[key] = plan
            while len(self._plans) > self.max_plans:
                self._plans.popitem(last=False)
        self._plans.move_to_end(key)
        return plan

    def _inputs(self, batch: dict[str, Any], prefix: Tensor | None, noise: Tensor | None):
        images, state = batch["images"], batch["state"]
        b, v, _, h, w = images.shape
        t, a_dim = self.head.chunk, batch["action_mask"].shape[-1]
        plan = self._plan(batch)
        dev, dtype = self.device, state.dtype
        prefix_full = torch.zeros(b, t, a_dim, device=dev, dtype=dtype)
        prefix_len = torch.zeros(b, dtype=torch.long, device=dev)
        if prefix is not None and prefix.shape[1] > 0:
            if prefix.shape[1] > t:
                raise ValueError(f"prefix of {prefix.shape[1]} actions is longer than the chunk ({t})")
            prefix_full[:, : prefix.shape[1]] = prefix.to(dev, dtype)
            prefix_len.fill_(prefix.shape[1])
        mask = batch.get("image_mask")
        inputs = {"images": images.to(dev, torch.float32),
                  "image_mask": (torch.ones(b, v, dtype=torch.bool) if mask is None else mask).to(dev),
                  "state": state.to(dev), "action_mask": batch["action_mask"].to(dev),
                  "noise": (torch.randn(b, t, a_dim, device=dev, dtype=dtype) if noise is None else noise.to(dev)),
                  "prefix": prefix_full, "prefix_len": prefix_len}
        return inputs, plan

    def _dit(self, prompt, steps, keys, values, state, action_mask, noise, prefix, prefix_len):
        ctx = self.static.context(prompt, keys, values)
        # prefix_len 0 everywhere is the no-prefix case: no row is kept, no token is offset (same numbers)
        return self.policy.sample(ctx, {"state": state, "action_mask": action_mask}, prefix, prefix_len, steps, noise)


DIT_INPUTS = ("state", "action_mask", "noise", "prefix", "prefix_len")


def chain(parts: dict[str, Callable[..., Any]], inputs: dict[str, Tensor]) -> Tensor:
    """One chunk: vision → prefill → DiT loop, each part fed the previous one's outputs."""
    seen = parts["vision"](images=inputs["images"], image_mask=inputs["image_mask"])
    keys, values = parts["prefill"](**_named("x", seen))
    return parts["dit"](**_named("k", keys), **_named("v", values), **{k: inputs[k] for k in DIT_INPUTS})


def _named(prefix: str, tensors: list[Tensor]) -> dict[str, Tensor]:
    return {f"{prefix}{i}": t for i, t in enumerate(tensors)}


def _unnamed(prefix: str, named: dict[str, Tensor]) -> list[Tensor]:
    return [named[f"{prefix}{i}"] for i in range(sum(k.startswith(prefix) and k[len(prefix):].isdigit() for k in named))]


def _in_inference(fn: Callable[..., Any], args: dict[str, Any]) -> Any:
    with torch.inference_mode():
        return fn(**args)
