"""The DiT action expert (SPEC §1.2): a flow-matching transformer that reads the VLM's KV cache.

Tokens: [SINK, state, a_0 … a_{T-1}]. DiT layer i attends to [K/V of VLM layer L-K+i ; its own K/V]
(the backbone hands over the last K layers, K = depth), so the VLM never sees DiT tokens (one-way MoT).
Parameter names follow the released Xiaomi-Robotics-0 checkpoint so that one table maps them
(src/xr0/release/keymap.py): sink, state_projector, action_projector, action_output_layer, t_embedder,
t_projector, layers.i.{input_norm, attn, middle_norm, post_norm, mlp, final_norm, adaln_table}.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xr0.nn import MLP2, SwiGLU, apply_rope, timestep_embedding
from xr0.registry import HEADS
from xr0.types import ACTION_DIM, VLMContext

EPS = 1e-6


class Attention(nn.Module):
    def __init__(self, width: int, num_heads: int, head_dim: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.qkv_proj = nn.Linear(width, 3 * num_heads * head_dim, bias=True)
        self.o_proj = nn.Linear(num_heads * head_dim, width, bias=False)
        self.q_norm = nn.RMSNorm(head_dim, eps=EPS)
        self.k_norm = nn.RMSNorm(head_dim, eps=EPS)

    def forward(self, x: Tensor, vlm_k: Tensor, vlm_v: Tensor, cos: Tensor, sin: Tensor, mask: Tensor) -> Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv_proj(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3×(B,H,N,hd)
        q, k = apply_rope(self.q_norm(q), cos, sin), apply_rope(self.k_norm(k), cos, sin)
        rep = self.num_heads // vlm_k.shape[1]  # grouped VLM KV heads → DiT heads
        vlm_k, vlm_v = vlm_k.repeat_interleave(rep, dim=1), vlm_v.repeat_interleave(rep, dim=1)  # (B,H,S,hd)
        k, v = torch.cat([vlm_k.to(k.dtype), k], dim=2), torch.cat([vlm_v.to(v.dtype), v], dim=2)  # (B,H,S+N,hd)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])  # (B,H,N,hd)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))  # (B,N,D)


class Block(nn.Module):
    def __init__(self, width: int, num_heads: int, head_dim: int, mlp_ratio: int):
        super().__init__()
        self.input_norm = nn.RMSNorm(width, eps=EPS)
        self.attn = Attention(width, num_heads, head_dim)
        self.middle_norm = nn.RMSNorm(width, eps=EPS)
        self.post_norm = nn.RMSNorm(width, eps=EPS)
        self.mlp = SwiGLU(width, mlp_ratio * width)
        self.final_norm = nn.RMSNorm(width, eps=EPS)
        self.adaln_table = nn.Parameter(torch.zeros(6, width))  # per-layer offsets of the shared modulation

    def forward(self, x: Tensor, mod: Tensor, vlm_k: Tensor, vlm_v: Tensor, cos, sin, mask) -> Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = (mod + self.adaln_table).unbind(dim=2)  # 6×(B,N,D)
        h = self.input_norm(x) * (1 + scale_a) + shift_a
        x = self.middle_norm(x + gate_a * self.attn(h, vlm_k, vlm_v, cos, sin, mask))
        h = self.post_norm(x) * (1 + scale_m) + shift_m
        return self.final_norm(x + gate_m * self.mlp(h))  # (B,N,D)


@HEADS.register("dit")
class DiT(nn.Module):
    """DiT action expert on the VLM KV cache: adaLN on τ, SINK token, RoPE continuing the VLM positions."""

    def __init__(self, width: int = 1024, depth: int = 16, num_heads: int = 8, head_dim: int = 128,
                 mlp_ratio: int = 4, chunk: int = 30, action_dim: int = ACTION_DIM, state_dim: int = ACTION_DIM,
                 rope_offset: int = 10, prefix_tau: str = "one", t_embed_dim: int = 256):
        super().__init__()
        if prefix_tau not in ("one", "shared"):
            raise ValueError(f"head.prefix_tau must be 'one' or 'shared', got {prefix_tau!r}")
        self.width, self.depth, self.num_heads, self.head_dim = width, depth, num_heads, head_dim
        self.chunk, self.action_dim, self.rope_offset, self.prefix_tau = chunk, action_dim, rope_offset, prefix_tau
        self.t_embed_dim = t_embed_dim
        self.sink = nn.Embedding(1, width)
        self.state_projector = MLP2(state_dim, width, width)
        self.action_projector = MLP2(action_dim, width, width)
        self.t_embedder = nn.Sequential(nn.Linear(t_embed_dim, width, bias=False), nn.SiLU(),
                                        nn.Linear(width, width, bias=False))
        self.t_projector = nn.Linear(width, 6 * width)
        self.layers = nn.ModuleList(Block(width, num_heads, head_dim, mlp_ratio) for _ in range(depth))
        self.action_output_layer = MLP2(width, action_dim, action_dim)  # hidden width = action dim (release)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.sink.weight, std=0.02)
        # adaLN-zero: gates start at 0 so each block starts close to identity (DiT)
        nn.init.zeros_(self.t_projector.weight)
        nn.init.zeros_(self.t_projector.bias)
        nn.init.zeros_(self.action_output_layer[-1].weight)

    def check_backbone(self, num_layers: int, num_kv_heads: int, head_dim: int) -> None:
        """Raise a clear error when the VLM cannot feed this DiT."""
        if head_dim != self.head_dim:
            raise ValueError(f"head.head_dim={self.head_dim} must equal the VLM's head_dim={head_dim}: the DiT "
                             f"concatenates the VLM's K/V with its own; set head.head_dim: {head_dim}")
        if self.depth > num_layers:
            raise ValueError(f"head.depth={self.depth} exceeds the VLM's {num_layers} layers (layer i reads VLM layer L-K+i)")
        if self.num_heads % num_kv_heads:
            raise ValueError(f"head.num_heads={self.num_heads} must be a multiple of the VLM's {num_kv_heads} KV heads")

    def forward(self, ctx: VLMContext, state: Tensor, actions: Tensor, tau: Tensor, mask: Tensor,
                noisy: Tensor) -> Tensor:
        """state (B,S_dim), actions (B,T,A) noisy/clean mix, tau (B,T)|(B,), mask (n,n)|(B,n,n), noisy (B,T)."""
        b, t, _ = actions.shape
        n = 2 + t
        if len(ctx.keys) != self.depth:
            raise ValueError(f"the VLM context holds {len(ctx.keys)} layers but the DiT has depth {self.depth}")
        tau = tau[:, None].expand(b, t) if tau.dim() == 1 else tau  # (B,T)
        # SINK and state carry the sample's noise level: the smallest action τ (prefix tokens carry 1)
        tau_tok = torch.cat([tau.min(dim=1, keepdim=True).values.expand(b, 2), tau], dim=1)  # (B,n)
        x = torch.cat([self.sink.weight.expand(b, 1, -1), self.state_projector(state)[:, None],
                       self.action_projector(actions)], dim=1)  # (B,n,D)
        t_emb = self.t_embedder(timestep_embedding(tau_tok, self.t_embed_dim).to(x.dtype))  # (B,n,D)
        mod = self.t_projector(t_emb).view(b, n, 6, self.width)  # (B,n,6,D)
        offset = torch.cat([torch.zeros(b, 2, dtype=torch.long, device=x.device), noisy.long() * self.rope_offset], 1)
        pos = ctx.next_position[:, None] + torch.arange(n, device=x.device)[None] + offset  # (B,n)
        cos, sin = ctx.rope(pos)  # (B,n,hd)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        dit_mask = mask.to(x.device).expand(b, n, n) if mask.dim() == 2 else mask  # (B,n,n)
        vlm_mask = ctx.attention_mask.bool()[:, None, :].expand(b, n, -1)  # (B,n,S)
        full_mask = torch.cat([vlm_mask, dit_mask], dim=2)  # (B,n,S+n)
        for layer, k, v in zip(self.layers, ctx.keys, ctx.values):
            x = layer(x, mod, k, v, cos, sin, full_mask)
        return self.action_output_layer(x[:, 2:])  # (B,T,A)

    def fsdp_wrap_modules(self) -> set[type]:
        return {Block}
