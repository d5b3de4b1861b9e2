"""The analytic cost model (xr0.flops plus each backbone's declared `cost`) against torch's FlopCounterMode on the
tiny policy of every backbone family.

On a CPU, SDPA dispatches to aten._scaled_dot_product_flash_attention_for_cpu, for which FlopCounterMode has
no formula (measured: with the default backend it reports only mm/addmm/convolution, so every attention is
missing). The counts below force the math backend, which runs attention as plain matmuls that it does count.
"""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from xr0 import flops
from xr0.backbones.configs import qwen3vl_4b_config
from xr0.bench import build_policy, make_batch

B = 2


@pytest.fixture(scope="module", params=["qwen3vl", "paligemma"])
def tiny(request):
    torch.manual_seed(0)
    policy, s = build_policy("tiny", "cpu", torch.float32, request.param)
    batch = make_batch(s, B, "cpu", torch.float32)
    inputs = policy.backbone.prepare(batch["images"], batch["image_mask"], batch["instruction"])
    return policy, s, batch, inputs


def counted(fn) -> int:
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def cost(tiny):
    policy, s, _, inputs = tiny
    return policy.backbone.cost(B * s["views"], *s["hw"], inputs["input_ids"].shape[1], B, 4, policy.head.depth)


def test_vision_matches_flop_counter(tiny):
    policy, _, _, inputs = tiny
    measured = counted(lambda: policy.backbone.encode_images(inputs))
    assert cost(tiny)["vision"].flops == pytest.approx(measured, rel=0.02)


def test_prefill_matches_flop_counter(tiny):
    policy, _, batch, inputs = tiny
    vision = counted(lambda: policy.backbone.encode_images(inputs))
    measured = counted(lambda: policy.context(batch)) - vision
    assert cost(tiny)["prefill"].flops == pytest.approx(measured, rel=0.02)


def dit_call(tiny):
    """One DiT velocity call on a fixed (no-grad) VLM context, as a thunk."""
    policy, s, batch, _ = tiny
    with torch.no_grad():
        ctx = policy.context(batch)
    x, tau = torch.randn(B, s["chunk"], 32), torch.rand(B, s["chunk"])
    return lambda: policy.velocity(ctx, batch, x, tau)


def test_dit_matches_flop_counter(tiny):
    policy, _, _, inputs = tiny
    measured = counted(dit_call(tiny))
    model = flops.dit_cost(policy.head, inputs["input_ids"].shape[1], B, steps=1, dtype_bytes=4)
    assert model.flops == pytest.approx(measured, rel=0.02)
    assert flops.dit_cost(policy.head, 10, B, steps=5, dtype_bytes=2).flops == \
        pytest.approx(5 * flops.dit_cost(policy.head, 10, B, steps=1, dtype_bytes=2).flops)


def test_dit_training_costs_three_forwards(tiny):
    """The 3F convention holds for the DiT: its backward on the frozen VLM's K/V is ~2 forwards."""
    policy = tiny[0]
    velocity = dit_call(tiny)
    fwd = counted(velocity)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        velocity().square().mean().backward()
    policy.zero_grad(set_to_none=True)
    assert fc.get_total_flops() == pytest.approx(3 * fwd, rel=0.05)


def test_train_flops_follow_the_formula(tiny):
    policy, s, _, inputs = tiny
    seq, (h, w), views = inputs["input_ids"].shape[1], s["hw"], s["views"]
    parts = flops.infer_cost(policy, views, h, w, seq, steps=1, batch=B)
    vlm, dit = parts["vision"].flops + parts["prefill"].flops, parts["dit"].flops
    assert parts["total"].flops == pytest.approx(vlm + dit)
    stage2 = flops.train_flops(policy, B, seq, views, h, w, "dit_flow", training_repeat=4)
    stage3 = flops.train_flops(policy, B, seq, views, h, w, "post_train")
    reweighted = flops.train_flops(policy, B, seq, views, h, w, "post_train", reweight=True, flow_steps=5)
    assert stage2 == pytest.approx(vlm + 12 * dit)
    assert stage3 == pytest.approx(3 * vlm + 3 * dit)
    assert reweighted == pytest.approx(stage3 + 5 * dit)
    assert flops.train_flops(policy, 2 * B, seq, views, h, w, "post_train") == pytest.approx(2 * stage3)
    with pytest.raises(ValueError, match="stage"):
        flops.train_flops(policy, B, seq, views, h, w, "vlm_cotrain")


def test_paper_prefill_is_two_flops_per_weight_per_token_plus_attention():
    text = qwen3vl_4b_config().text_config
    seq, hd, heads = 1000, text.head_dim, text.num_attention_heads
    cost = flops.prefill_cost(text, seq, 1, dtype_bytes=1, kv_layers_kept=0)
    embed = seq * text.hidden_size + text.hidden_size  # the rows read + the final norm
    attn = text.num_hidden_layers * heads * 4 * seq * seq * hd
    assert cost.flops - attn == pytest.approx(2 * (cost.bytes - embed) * seq, rel=0.01)  # norms are ~0.01%


def test_peaks_and_roofline():
    assert flops.peak_for("NVIDIA H100 80GB HBM3") == (989.4, 3.35)
    assert flops.peak_for("NVIDIA H100 PCIe") == (756.0, 2.0)
    assert flops.peak_for("NVIDIA H200") == (989.4, 4.8)
    assert flops.peak_for("NVIDIA A100-SXM4-80GB") == (312.0, 2.039)
    assert flops.peak_for("NVIDIA GeForce RTX 4090") == (165.2, 1.008)
    assert flops.peak_for("cpu (2 threads)") is None
    peak = (1000.0, 2.0)  # 1e15 FLOP/s, 2e12 B/s
    assert flops.roofline_ms(flops.Cost(1e15, 1.0), peak) == pytest.approx(1000.0)  # compute-bound
    assert flops.roofline_ms(flops.Cost(1.0, 4e12), peak) == pytest.approx(2000.0)  # bandwidth-bound
    c = flops.Cost(1.0, 2.0) + flops.Cost(3.0, 4.0)
    assert (c.flops, c.bytes) == (4.0, 6.0) and c.scaled(2) == flops.Cost(8.0, 12.0)
