"""FastPolicy (planned prompt, prepared DiT, CUDA graphs on a GPU) computes what Policy.predict_chunk computes, for
every backbone family through its declared static prefill; a backbone that declares none is refused by name."""
import pytest
import torch

from xr0.bench import build_policy
from xr0.infer import FastPolicy, chain
from xr0.registry import MASKS

TEXTS = ["pick up the red cube", "open the drawer slowly and then close it again please"]


def batch(b=2, v=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(b, 32, dtype=torch.bool)
    mask[:, :7] = True
    return {"images": torch.rand(b, v, 3, 56, 56, generator=g), "image_mask": torch.ones(b, v, dtype=torch.bool),
            "instruction": TEXTS[:b], "state": torch.randn(b, 32, generator=g), "action_mask": mask}


@pytest.fixture(scope="module", params=[("qwen3vl", "causal"), ("qwen3vl", "lambda"), ("paligemma", "lambda")],
                ids=lambda p: "-".join(p))
def policy(request):
    torch.manual_seed(0)
    p, _ = build_policy("tiny", "cpu", torch.float32, request.param[0])
    p.mask = MASKS.build(request.param[1])
    for blk in p.head.blocks:  # adaLN-zero starts every block as the identity: give the DiT something to do
        torch.nn.init.normal_(blk.adaln_table, std=0.5)
    torch.nn.init.normal_(p.head.t_proj.weight, std=0.05)
    torch.nn.init.normal_(p.head.out_mlp[-1].weight, std=0.1)
    return p


@pytest.mark.parametrize("b", [1, 2], ids=["batch1-no-padding", "batch2-padded"])
@pytest.mark.parametrize("prefix_steps", [0, 3])
def test_fast_equals_policy(policy, prefix_steps, b):
    data = batch(b)
    noise = torch.randn(b, policy.head.chunk, 32, generator=torch.Generator().manual_seed(5))
    prefix = torch.randn(b, prefix_steps, 32) if prefix_steps else None
    ref = policy.predict_chunk(data, prefix=prefix, steps=5, noise=noise)
    out = FastPolicy(policy).predict_chunk(data, prefix=prefix, steps=5, noise=noise)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert ref[:, :, 7:].abs().max() == 0 and ref.abs().max() > 0
    if prefix is not None:
        torch.testing.assert_close(out[:, :prefix_steps], prefix * data["action_mask"][:, None])


def test_parts_compose_to_the_chunk(policy):
    fast, data = FastPolicy(policy), batch()
    parts = fast.parts(data, steps=3)
    embeds = parts["vision"]()[0]  # image embeddings first, one row per image token
    keys, _ = parts["prefill"]()
    assert embeds.shape[0] > 0 and embeds.shape[0] % (2 * 2) == 0 and len(keys) == policy.head.depth
    assert keys[0].shape[2] == fast.tokens(data)
    assert parts["dit"]().shape == (2, policy.head.chunk, 32)
    # predict_chunk is these parts chained: the same chunk for the same noise
    noise = torch.randn(2, policy.head.chunk, 32)
    with torch.inference_mode():  # as predict_chunk runs
        inputs, plan = fast._inputs(data, None, noise)
        chained = chain(fast._parts(plan, 3, inputs), inputs)
    torch.testing.assert_close(chained, fast.predict_chunk(data, steps=3, noise=noise))


def test_plans_are_reused_and_bounded(policy):
    fast = FastPolicy(policy, max_plans=2)
    for texts in (["a", "b"], ["c", "d"], ["a", "b"], ["e", "f"]):
        fast.predict_chunk({**batch(), "instruction": texts}, steps=1)
    assert [k[0] for k in fast._plans] == [("a", "b"), ("e", "f")]
    fast.predict_chunk({**batch(), "instruction": ["e", "f"]}, steps=3)
    # vision and prefill are built once per plan, the DiT loop once per step count
    assert set(fast._plans[next(reversed(fast._plans))]) == {"prompt", "vision", "prefill", ("dit", 1), ("dit", 3)}


def test_the_chunk_runs_on_the_meta_device(policy):
    """Vision, prefill and the whole Euler loop with every tensor on the meta device: nothing is made on the host
    and nothing reads a value back (.item, .tolist, nonzero, boolean indexing all fail there), which is what a
    CUDA graph capture needs."""
    import copy

    fast = FastPolicy(policy)
    data = batch()
    inputs, plan = fast._inputs(data, torch.randn(2, 3, 32), None)
    meta = copy.deepcopy(policy).to("meta")
    fast_meta = FastPolicy(meta)
    move = lambda v: (v.to("meta") if torch.is_tensor(v) else {k: x.to("meta") for k, x in v.items()}  # noqa: E731
                      if isinstance(v, dict) else v)
    prompt = type(plan["prompt"])(**{k: move(v) for k, v in vars(plan["prompt"]).items()})
    meta_inputs = {k: v.to("meta") for k, v in inputs.items()}
    out = chain(fast_meta._parts({"prompt": prompt}, 5, meta_inputs), meta_inputs)
    assert out.device.type == "meta" and out.shape == (2, policy.head.chunk, 32)


def test_cuda_graph_needs_cuda(policy):
    with pytest.raises(ValueError, match="CUDA device"):
        FastPolicy(policy, cuda_graph=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (run by the device benchmark)")
@pytest.mark.parametrize("family", ["qwen3vl", "paligemma"])
def test_cuda_graph_replay_equals_eager(family):
    torch.manual_seed(0)
    p, _ = build_policy("tiny", "cuda", torch.float32, family)
    data = {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in batch().items()}
    noise = torch.randn(2, p.head.chunk, 32, device="cuda")
    fast = FastPolicy(p)
    for prefix in (None, torch.randn(2, 3, 32, device="cuda"), None):  # one graph serves every prefix length
        ref = p.predict_chunk(data, prefix=prefix, steps=5, noise=noise)
        for _ in range(2):  # capture (first call), then replay
            torch.testing.assert_close(fast.predict_chunk(data, prefix=prefix, steps=5, noise=noise), ref,
                                       atol=1e-4, rtol=1e-4)
    plan = next(iter(fast._plans.values()))
    assert len(fast._plans) == 1 and set(plan) == {"prompt", "vision", "prefill", ("dit", 5)}  # one set of graphs
    fast.predict_chunk(data, steps=3, noise=noise)
    assert ("dit", 3) in plan  # another step count adds a DiT graph only
    # the benchmark's layout: bf16, batch 1, no padding (causal SDPA without a mask)
    p16 = p.to(torch.bfloat16)
    one = {k: v[:1] for k, v in data.items()}
    one["state"] = one["state"].bfloat16()
    ref = p16.predict_chunk(one, steps=5, noise=noise[:1].bfloat16())
    torch.testing.assert_close(FastPolicy(p16).predict_chunk(one, steps=5, noise=noise[:1].bfloat16()), ref)


def test_a_backbone_without_a_static_prefill_is_refused_by_name(policy, monkeypatch):
    monkeypatch.setattr(policy.backbone, "static_prefill", lambda: None)  # declares no fast path
    with pytest.raises(ValueError, match="declares no static prefill plan .* use Policy.predict_chunk"):
        FastPolicy(policy)
