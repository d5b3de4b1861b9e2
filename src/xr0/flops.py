"""Analytic cost model of the policy: FLOPs and bytes from the configs (nothing runs).

The backbone counts its own vision tower and prefill (`Backbone.cost`, a declared capability of
xr0.backbones.protocol; `prefill_cost` below serves any GQA decoder with a gated MLP); this module adds the DiT.

FLOPs count matmuls only, 2·m·n·k each (convolutions the same way, as patch × kernel matmuls); norms,
activations, RoPE and softmax are elementwise and left out, as torch's FlopCounterMode also leaves them.
Attention is counted as the full rectangle it computes: scores 2·q·k·d plus AV 2·q·k·d per head. The VLM's
causal prefill is counted as the full S×S rectangle too, because SDPA with a boolean (padding) mask runs
the whole rectangle. Bytes are the weights read once (params × dtype_bytes) plus the inputs and the K/V a
part writes or reads; activations are left out (they mostly stay on-chip or are re-read from L2), so the
byte side of the roofline is a lower bound.

Training FLOPs per optimizer step (`train_flops`), the PaLM / Megatron MFU convention:
    F_part  = forward FLOPs of a part at the step's batch
    trained part: 3·F (forward, backward for the activations, backward for the weights)
    frozen part under no_grad: 1·F
    stage dit_flow   (frozen VLM):  F_vision + F_prefill + 3·F_dit·training_repeat
    stage post_train (full model):  3·(F_vision + F_prefill) + 3·F_dit·training_repeat
                                    (+ flow_steps·F_dit with reweight: a no-grad Euler sampling)
    MFU = train_flops / step time / peak dense bf16 FLOP/s
Activation-checkpointing recompute is not counted: it is hardware FLOPs, not model FLOPs, so turning
checkpointing on lowers the MFU of the same work.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Peak dense (no sparsity) bf16 tensor FLOP/s with fp32 accumulate, and memory bandwidth, per device name
# substring (the longest match wins). Vendor datasheets: NVIDIA H100 Tensor Core GPU datasheet (SXM5
# 989.4 TFLOP/s, 3.35 TB/s; PCIe 756 TFLOP/s, 2.0 TB/s), NVIDIA H200 datasheet (989 TFLOP/s, 4.8 TB/s),
# NVIDIA A100 datasheet (312 TFLOP/s, 80GB SXM 2.039 TB/s), NVIDIA Ada Lovelace architecture whitepaper
# appendix (RTX 4090: 165.2 TFLOP/s with fp32 accumulate, 1.008 TB/s), NVIDIA L40S datasheet (362 TFLOP/s,
# 864 GB/s). Sparsity figures (2× these) are not reachable by dense training.
PEAKS: dict[str, tuple[float, float]] = {
    "H100": (989.4, 3.35),
    "H100 PCIe": (756.0, 2.0),
    "H200": (989.4, 4.8),
    "A100": (312.0, 2.039),
    "RTX 4090": (165.2, 1.008),
    "L40S": (362.0, 0.864),
}


@dataclass
class Cost:
    flops: float
    bytes: float

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.flops + other.flops, self.bytes + other.bytes)

    def scaled(self, k: float) -> Cost:
        return Cost(self.flops * k, self.bytes * k)


def matmul(m: float, n: float, k: float) -> float:
    """FLOPs of an (m × k) @ (k × n) matmul."""
    return 2.0 * m * n * k


def prefill_cost(text_config: Any, seq_len: int, batch: int, dtype_bytes: int, kv_layers_kept: int,
                 norm_params: int | None = None) -> Cost:
    """Language-model forward over seq_len tokens with GQA and a gated MLP (SwiGLU, GeGLU), without the lm_head.
    norm_params: weights of one layer's norms (None: Qwen3's two RMSNorms plus q/k norms, 2·hidden + 2·head_dim)."""
    c = text_config
    hd = c.head_dim
    hidden, inter, q, kv = c.hidden_size, c.intermediate_size, c.num_attention_heads * hd, c.num_key_value_heads * hd
    t = batch * seq_len
    proj = matmul(t, hidden, q) + 2 * matmul(t, hidden, kv) + matmul(t, q, hidden)
    attn = batch * c.num_attention_heads * 2 * matmul(seq_len, seq_len, hd)
    layer = proj + attn + 3 * matmul(t, hidden, inter)
    bias = (q + 2 * kv + hidden) if getattr(c, "attention_bias", False) else 0
    norms = 2 * hidden + 2 * hd if norm_params is None else norm_params
    layer_params = hidden * (q + 2 * kv) + q * hidden + bias + 3 * hidden * inter + norms
    params = c.num_hidden_layers * layer_params + min(t, c.vocab_size) * hidden + hidden
    kv_written = kv_layers_kept * 2 * t * kv
    return Cost(c.num_hidden_layers * layer, (params + kv_written) * dtype_bytes)


def dit_cost(head: Any, vlm_tokens: int, batch: int, steps: int, dtype_bytes: int,
             vlm_kv_heads: int | None = None) -> Cost:
    """`steps` calls of the xr0 DiT (its special tokens + chunk tokens, each layer over vlm_tokens + its own keys).
    Bytes per call: every DiT weight plus the VLM K/V it reads (vlm_kv_heads wide; None: the DiT's own head count)."""
    w, t, a, b = head.width, head.chunk, head.action_dim, batch
    n = len(head.special_tokens) + t
    inner = head.num_heads * head.head_dim
    mlp = head.blocks[0].mlp.gate.out_features  # mlp_ratio · width (the DiT keeps no mlp_ratio attribute)
    state_dim = head.state_mlp[0].in_features
    embed = (matmul(b, state_dim, w) + matmul(b, w, w) + matmul(b * t, a, w) + matmul(b * t, w, w)
             + matmul(b * n, head.t_embed_dim, w) + matmul(b * n, w, w) + matmul(b * n, w, 6 * w))
    attn = b * head.num_heads * 2 * matmul(n, vlm_tokens + n, head.head_dim)
    block = matmul(b * n, w, 3 * inner) + matmul(b * n, inner, w) + 3 * matmul(b * n, w, mlp) + attn
    out = matmul(b * t, w, a) + matmul(b * t, a, a)
    params = sum(p.numel() for p in head.parameters())
    vlm_kv = head.depth * 2 * b * (vlm_kv_heads or head.num_heads) * vlm_tokens * head.head_dim
    return Cost(embed + head.depth * block + out, (params + vlm_kv) * dtype_bytes).scaled(steps)


def infer_cost(policy: Any, n_views: int, h: int, w: int, vlm_tokens: int, steps: int, batch: int = 1,
               dtype_bytes: int = 2) -> dict[str, Cost]:
    """One `predict_chunk`: vision tower, VLM prefill (K/V of the DiT's layers kept) — the backbone's declared
    `cost` — and `steps` DiT calls."""
    backbone, head = policy.backbone, policy.head
    vlm = backbone.cost(batch * n_views, h, w, vlm_tokens, batch, dtype_bytes, head.depth)
    if vlm is None:
        raise ValueError(f"backbone {type(backbone).__name__} declares no analytic cost (its cost() returns None); "
                         f"xr0.flops cannot count it")
    parts = {"vision": vlm["vision"], "prefill": vlm["prefill"],
             "dit": dit_cost(head, vlm_tokens, batch, steps, dtype_bytes, backbone.num_kv_heads)}
    parts["total"] = parts["vision"] + parts["prefill"] + parts["dit"]
    return parts


STAGES = ("dit_flow", "post_train")


def train_flops(policy: Any, batch: int, vlm_tokens: int, n_views: int, h: int, w: int, stage: str,
                training_repeat: int = 1, reweight: bool = False, flow_steps: int = 5) -> float:
    """Model FLOPs of one optimizer step (the formula is in the module docstring)."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    parts = infer_cost(policy, n_views, h, w, vlm_tokens, steps=1, batch=batch)
    vlm = parts["vision"].flops + parts["prefill"].flops
    dit = parts["dit"].flops
    if stage == "dit_flow":
        return vlm + 3 * dit * training_repeat
    return 3 * vlm + 3 * dit * training_repeat + (flow_steps * dit if reweight else 0.0)


def peak_for(device_name: str) -> tuple[float, float] | None:
    """(peak dense bf16 TFLOP/s, memory TB/s) of a device name, or None when unknown (a CPU)."""
    hits = [k for k in PEAKS if k.lower() in device_name.lower()]
    return PEAKS[max(hits, key=len)] if hits else None


def roofline_ms(cost: Cost, peak: tuple[float, float]) -> float:
    """The least time the cost can take on a device: compute- or bandwidth-bound, whichever is slower."""
    tflops, tbps = peak
    return max(cost.flops / (tflops * 1e12), cost.bytes / (tbps * 1e12)) * 1e3
