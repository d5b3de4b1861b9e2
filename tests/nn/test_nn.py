"""DiT building blocks against their definitions and the Hugging Face Qwen3-VL RoPE convention."""
from __future__ import annotations

import math

import torch
from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb

from xr0.nn import MLP2, SwiGLU, apply_rope, timestep_embedding


def test_timestep_embedding_is_cos_then_sin_of_tau_times_1000():
    tau = torch.tensor([0.0, 0.25, 1.0])
    emb = timestep_embedding(tau, 8)
    assert emb.shape == (3, 8)
    for i, t in enumerate(tau.tolist()):
        for j in range(4):
            f = math.exp(-math.log(10000) * j / 4)
            assert math.isclose(emb[i, j].item(), math.cos(1000 * t * f), abs_tol=1e-4)
            assert math.isclose(emb[i, 4 + j].item(), math.sin(1000 * t * f), abs_tol=1e-4)
    assert timestep_embedding(torch.rand(2, 5), 256).shape == (2, 5, 256)  # per-token τ
    assert timestep_embedding(torch.rand(3), 7).shape == (3, 7)  # odd width padded


def test_apply_rope_matches_transformers_qwen3vl():
    q, k = torch.randn(2, 4, 5, 16), torch.randn(2, 4, 5, 16)
    ang = torch.rand(2, 5, 8) * 10
    emb = torch.cat([ang, ang], -1)
    cos, sin = emb.cos(), emb.sin()
    ref_q, ref_k = apply_rotary_pos_emb(q, k, cos, sin)
    assert torch.allclose(apply_rope(q, cos, sin), ref_q, atol=1e-6)
    assert torch.allclose(apply_rope(k, cos, sin), ref_k, atol=1e-6)
    # a rotation: norms are kept, and relative offsets alone decide q·k
    assert torch.allclose(apply_rope(q, cos, sin).norm(dim=-1), q.norm(dim=-1), atol=1e-5)


def test_mlps_have_the_released_structure():
    mlp = MLP2(32, 16, 7)
    assert [type(m).__name__ for m in mlp] == ["Linear", "GELU", "Linear"]
    assert all(m.bias is None for m in (mlp[0], mlp[2])) and mlp(torch.randn(3, 32)).shape == (3, 7)
    sw = SwiGLU(8, 32)
    x = torch.randn(2, 8)
    ref = sw.down(torch.nn.functional.silu(sw.gate(x)) * sw.up(x))
    assert torch.allclose(sw(x), ref) and sw.gate.weight.shape == (32, 8)
