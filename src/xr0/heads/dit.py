"""The DiT action expert (docs/method.md §1.2): a flow-matching transformer that reads the VLM's KV cache; it
implements xr0.heads.protocol.FlowHead.

Tokens: [SINK, state, a_0 … a_{T-1}]. DiT layer i attends to [K/V of VLM layer L-K+i ; its own K/V]
(the backbone hands over the last K layers, K = depth), so the VLM never sees DiT tokens (one-way MoT).

Released layout: the Xiaomi-Robotics-0 checkpoint's remote code (modeling_mibot.py, MiBoTForActionGeneration)
has the same structure module for module; src/xr0/release/keymap.py holds the one table between its names
(sink, state_projector, action_projector, action_output_layer, t_embedder.mlp, t_projector,
dit.layers.i.{input,middle,post,final}_layernorm, attn.qkv_proj, …) and the names below. Rename a parameter
here → change the xr0 column there (tests/heads/test_dit.py checks that every row resolves).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xr0.nn import MLP2, SwiGLU, apply_rope, timestep_embedding
from xr0.registry import HEADS
from xr0.types import ACTION_DIM, VLMContext

EPS = 1e-6
PREFIX_TAU = ("one", "shared")


@dataclass
class DiTInputs:
    """What every flow step on one VLM context shares (DiT.prepare)."""

    keys: list[Tensor]  # per DiT layer (B, H, S, hd): the VLM layer's rotated keys, expanded to the DiT's heads
    values: list[Tensor]
    cos: Tensor  # (B, n, hd) RoPE of the DiT tokens
    sin: Tensor
    mask: Tensor  # (B, 1, n, S+n) bool: DiT rows over [VLM tokens ; DiT tokens]


class Attention(nn.Module):
    """Queries of the DiT tokens over [VLM K/V of one layer ; own K/V]; qkv bias, per-head q/k RMSNorm, RoPE."""

    def __init__(self, width: int, num_heads: int, head_dim: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.qkv = nn.Linear(width, 3 * num_heads * head_dim, bias=True)
        self.out = nn.Linear(num_heads * head_dim, width, bias=False)
        self.q_norm = nn.RMSNorm(head_dim, eps=EPS)
        self.k_norm = nn.RMSNorm(head_dim, eps=EPS)

    def forward(self, x: Tensor, vlm_k: Tensor, vlm_v: Tensor, cos: Tensor, sin: Tensor, mask: Tensor) -> Tensor:
        """vlm_k, vlm_v (B,H,S,hd) already expanded to this layer's heads (DiT.prepare); mask (B,1,N,S+N)."""
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).unbind(2)  # 3×(B,N,H,hd)
        q, k = self.q_norm(q).transpose(1, 2), self.k_norm(k).transpose(1, 2)  # (B,H,N,hd)
        q, k, v = apply_rope(q, cos, sin), apply_rope(k, cos, sin), v.transpose(1, 2)  # (B,H,N,hd)
        k = torch.cat([vlm_k.to(k.dtype), k], dim=2)  # (B,H,S+N,hd)
        v = torch.cat([vlm_v.to(v.dtype), v], dim=2)  # (B,H,S+N,hd)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B,H,N,hd)
        return self.out(o.transpose(1, 2).reshape(b, n, -1))  # (B,N,D)


class Block(nn.Module):
    """One DiT layer: adaLN-modulated attention and SwiGLU, each with an RMSNorm before and after its residual."""

    def __init__(self, width: int, num_heads: int, head_dim: int, mlp_ratio: int):
        super().__init__()
        self.attn_norm_in = nn.RMSNorm(width, eps=EPS)
        self.attn = Attention(width, num_heads, head_dim)
        self.attn_norm_out = nn.RMSNorm(width, eps=EPS)
        self.mlp_norm_in = nn.RMSNorm(width, eps=EPS)
        self.mlp = SwiGLU(width, mlp_ratio * width)
        self.mlp_norm_out = nn.RMSNorm(width, eps=EPS)
        self.adaln_table = nn.Parameter(torch.zeros(6, width))  # per-layer offsets of the shared modulation

    def forward(self, x: Tensor, mod: Tensor, vlm_k: Tensor, vlm_v: Tensor, cos: Tensor, sin: Tensor,
                mask: Tensor) -> Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = (mod + self.adaln_table).unbind(dim=2)  # 6×(B,N,D)
        h = self.attn_norm_in(x) * (1 + scale_a) + shift_a  # (B,N,D)
        x = self.attn_norm_out(x + gate_a * self.attn(h, vlm_k, vlm_v, cos, sin, mask))  # (B,N,D)
        h = self.mlp_norm_in(x) * (1 + scale_m) + shift_m  # (B,N,D)
        return self.mlp_norm_out(x + gate_m * self.mlp(h))  # (B,N,D)


@HEADS.register("dit")
class DiT(nn.Module):
    """DiT action expert on the VLM KV cache: adaLN on τ, SINK token, RoPE continuing the VLM positions."""

    special_tokens = ("sink", "state")  # before the actions; the masks are built over these (xr0.masks)

    def __init__(self, width: int = 1024, depth: int = 16, num_heads: int = 8, head_dim: int | None = None,
                 mlp_ratio: int = 4, chunk: int = 30, action_dim: int = ACTION_DIM, state_dim: int = ACTION_DIM,
                 rope_offset: int = 10, prefix_tau: str = "one", t_embed_dim: int = 256):
        """head_dim: the per-head width, which must equal the VLM's (its K/V are concatenated with the DiT's own);
        null (the default) takes the backbone's when the policy binds the head, so a recipe names it once."""
        super().__init__()
        if prefix_tau not in PREFIX_TAU:
            raise ValueError(f"head.prefix_tau must be one of {PREFIX_TAU}, got {prefix_tau!r}")
        for key, val in (("width", width), ("depth", depth), ("num_heads", num_heads), ("mlp_ratio", mlp_ratio),
                         ("chunk", chunk)):
            if val < 1:
                raise ValueError(f"head.{key} must be >= 1, got {val}")
        if rope_offset < 0:
            raise ValueError(f"head.rope_offset must be >= 0 (0 turns it off), got {rope_offset}")
        self.width, self.depth, self.num_heads, self.mlp_ratio = width, depth, num_heads, mlp_ratio
        self.head_dim: int | None = None
        self.chunk, self.action_dim, self.rope_offset, self.prefix_tau = chunk, action_dim, rope_offset, prefix_tau
        self.t_embed_dim = t_embed_dim
        self.sink = nn.Parameter(torch.zeros(1, width))
        self.state_mlp = MLP2(state_dim, width, width)
        self.action_mlp = MLP2(action_dim, width, width)
        self.t_mlp = nn.Sequential(nn.Linear(t_embed_dim, width, bias=False), nn.SiLU(),
                                   nn.Linear(width, width, bias=False))
        self.t_proj = nn.Linear(width, 6 * width)  # no SiLU before it (released layout)
        self.blocks = nn.ModuleList()  # built by `bind`, once head_dim is known
        self.out_mlp = MLP2(width, action_dim, action_dim)  # hidden width = action dim (released layout)
        if head_dim is not None:
            self.bind(head_dim)

    def bind(self, head_dim: int) -> DiT:
        """Build the blocks for VLM K/V of this head_dim (the policy passes the backbone's); once, and initialise every
        parameter. Binding again to another head_dim is an error naming both."""
        if self.head_dim is not None:
            if head_dim != self.head_dim:
                raise ValueError(f"head.head_dim={self.head_dim} must equal the VLM's head_dim={head_dim}: the DiT "
                                 f"concatenates the VLM's K/V with its own; set head.head_dim: {head_dim} (or null: "
                                 f"it then follows the VLM)")
            return self
        if head_dim < 1 or head_dim % 2:
            raise ValueError(f"head.head_dim must be a positive even number (RoPE rotates pairs), got {head_dim}")
        self.head_dim = head_dim
        self.blocks.extend(Block(self.width, self.num_heads, head_dim, self.mlp_ratio) for _ in range(self.depth))
        self.reset_parameters()
        return self

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.sink, std=0.02)
        # adaLN-zero (DiT): gates start at 0, so every block starts as the identity and training is stable
        nn.init.zeros_(self.t_proj.weight)
        nn.init.zeros_(self.t_proj.bias)
        for blk in self.blocks:
            nn.init.zeros_(blk.adaln_table)
        nn.init.zeros_(self.out_mlp[-1].weight)

    def check_backbone(self, num_layers: int, num_kv_heads: int, head_dim: int) -> None:
        """Raise a clear error when the VLM cannot feed this DiT."""
        if self.head_dim is None:
            raise ValueError("the DiT is not bound to a VLM yet (head.head_dim: null): call head.bind(head_dim)")
        self.bind(head_dim)  # a bound head of another head_dim raises here
        if self.depth > num_layers:
            raise ValueError(f"head.depth={self.depth} exceeds the VLM's {num_layers} layers "
                             f"(DiT layer i reads VLM layer L-K+i); set head.depth <= {num_layers}")
        if self.num_heads % num_kv_heads:
            raise ValueError(f"head.num_heads={self.num_heads} must be a multiple of the VLM's {num_kv_heads} "
                             f"KV heads (grouped attention over its K/V)")

    def forward(self, ctx: VLMContext, state: Tensor, actions: Tensor, tau: Tensor, mask: Tensor,
                noisy: Tensor) -> Tensor:
        """Velocity (B,T,A). state (B,S), actions (B,T,A) clean prefix + noisy rest, tau (B,T) or (B,),
        mask (n, n) or (B, n, n) over the DiT tokens (n = 2 special + T), noisy (B,T) bool: tokens that get the RoPE offset."""
        return self.step(self.prepare(ctx, mask, noisy), state, actions, tau)

    def prepare(self, ctx: VLMContext, mask: Tensor, noisy: Tensor) -> DiTInputs:
        """Everything a flow step reuses from one context: VLM K/V per layer (expanded to the DiT's heads), the
        RoPE of the DiT tokens and the attention mask. Euler sampling calls this once, then `step` per τ."""
        b, t = noisy.shape
        ns = len(self.special_tokens)
        n = ns + t
        if len(ctx.keys) != self.depth:
            raise ValueError(f"the VLM context holds {len(ctx.keys)} layers but head.depth={self.depth}: "
                             f"call backbone.context(inputs, num_layers={self.depth})")
        self.check_backbone(len(ctx.keys), ctx.keys[0].shape[1], ctx.keys[0].shape[-1])
        dev = ctx.keys[0].device
        offset = torch.cat([noisy.new_zeros(b, ns), noisy], dim=1).long() * self.rope_offset  # (B,n)
        pos = ctx.next_position[:, None] + torch.arange(n, device=dev)[None] + offset  # (B,n)
        cos, sin = ctx.rope(pos)  # (B,n,hd)
        dit_mask = mask.to(dev).bool().expand(b, n, n)  # (B,n,n)
        vlm_mask = ctx.attention_mask.bool()[:, None, :].expand(b, n, -1)  # (B,n,S): every valid VLM token
        full_mask = torch.cat([vlm_mask, dit_mask], dim=2)[:, None]  # (B,1,n,S+n)
        rep = self.num_heads // ctx.keys[0].shape[1]  # grouped VLM KV heads → the DiT's heads
        keys = [k if rep == 1 else k.repeat_interleave(rep, dim=1) for k in ctx.keys]  # each (B,H,S,hd)
        values = [v if rep == 1 else v.repeat_interleave(rep, dim=1) for v in ctx.values]
        return DiTInputs(keys, values, cos, sin, full_mask)

    def step(self, inputs: DiTInputs, state: Tensor, actions: Tensor, tau: Tensor) -> Tensor:
        """One velocity evaluation on prepared inputs: actions (B,T,A), tau (B,T) or (B,) → (B,T,A)."""
        b, t, _ = actions.shape
        ns = len(self.special_tokens)
        n = ns + t
        tau = tau[:, None].expand(b, t) if tau.dim() == 1 else tau  # (B,T)
        # SINK and state carry the sample's noise level: the smallest action τ (prefix tokens may carry 1)
        tau_tok = torch.cat([tau.min(dim=1, keepdim=True).values.expand(b, ns), tau], dim=1)  # (B,n)
        x = torch.cat([self.sink.expand(b, 1, -1), self.state_mlp(state)[:, None],
                       self.action_mlp(actions)], dim=1)  # (B,n,D)
        t_emb = self.t_mlp(timestep_embedding(tau_tok, self.t_embed_dim).to(x.dtype))  # (B,n,D)
        mod = self.t_proj(t_emb).view(b, n, 6, self.width)  # (B,n,6,D)
        cos, sin = inputs.cos.to(x.dtype), inputs.sin.to(x.dtype)
        for block, k, v in zip(self.blocks, inputs.keys, inputs.values):
            x = block(x, mod, k, v, cos, sin, inputs.mask)  # (B,n,D)
        return self.out_mlp(x[:, ns:])  # (B,T,A)

    def fsdp_wrap_modules(self) -> set[type]:
        return {Block}
