"""`xr0 bench train` drives the real stage modules: JSON fields, FLOPs per stage, parameters that move."""
import json
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from xr0.bench import train
from xr0.bench.train import build_stage, fit_steps, synthetic_batch
from xr0.cli import main
from xr0.stages.common import OptimConfig, configure_optimizers


@pytest.fixture(autouse=True)
def one_thread():
    """On a small shared CPU, OpenMP threads spin-wait against other processes: one thread keeps these fast."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run(tmp_path, stage):
    out = tmp_path / f"{stage}.json"
    assert main(["bench", "train", "--scale", "tiny", "--device", "cpu", "--stage", stage, "--batch", "2",
                 "--iters", "2", "--warmup", "1", "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_both_stages_write_sane_json(tmp_path, capsys):
    stage2, stage3 = run(tmp_path, "dit_flow"), run(tmp_path, "post_train")
    for res in (stage2, stage3):
        assert res["kind"] == "train" and res["scale"] == "tiny" and res["batch"] == 2
        assert res["precision"] == "32-true" and res["fused_adamw"] is False
        assert res["step_ms"]["n"] == 2 and res["samples_per_s"] > 0
        assert res["model_flops_per_step"] > 0 and res["achieved_tflops"] > 0 and res["mfu"] is None
        assert res["vlm_tokens"] > 0 and res["activation_checkpointing"]["backbone"] is False
    assert stage3["model_flops_per_step"] > stage2["model_flops_per_step"]  # the VLM trains in stage 3
    assert stage3["trainable_params"] > stage2["trainable_params"]
    assert "MFU n/a" in capsys.readouterr().out


@pytest.mark.parametrize("stage", ["dit_flow", "post_train"])
def test_the_stage_optimizer_steps(stage):
    module, s = build_stage("tiny", stage)
    trainable = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in module.named_parameters() if not p.requires_grad}
    ms, fused = fit_steps(module, synthetic_batch(s, 2, "cpu"), steps=2, warmup=1, device="cpu")
    assert len(ms) == 1 and not fused
    after = dict(module.named_parameters())
    moved = [n for n, p in trainable.items() if not torch.equal(p, after[n])]
    assert len(moved) > len(trainable) // 2  # AdamW moves every parameter with a gradient
    assert all(torch.equal(p, after[n]) for n, p in frozen.items())
    assert any(".backbone." in f".{n}" for n in moved) == (stage == "post_train")


def test_activation_checkpointing_is_reported(tmp_path):
    out = tmp_path / "ac.json"
    assert main(["bench", "train", "--device", "cpu", "--stage", "post_train", "--iters", "1", "--warmup", "0",
                 "--activation-checkpointing", "--out", str(out)]) == 0
    ac = json.loads(out.read_text())["activation_checkpointing"]
    assert ac["backbone"] is True and ac["dit"] is False and "DiT" in ac["note"]


def test_auto_batch_needs_cuda(capsys):
    assert main(["bench", "train", "--device", "cpu", "--batch", "auto"]) == 2
    assert "--batch auto" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "train", "--device", "cpu", "--batch", "0"])


def test_fused_adamw_knob():
    module = torch.nn.Linear(4, 4)
    opt = configure_optimizers(module, OptimConfig(total_steps=10))["optimizer"]
    assert opt.defaults["fused"] is False  # None: fused only when every trainable parameter is on CUDA
    with pytest.raises(ValueError, match="optim.fused: true needs"):
        configure_optimizers(module, OptimConfig(total_steps=10, fused=True))
    # a loss scaler (16-mixed) unscales inside a fused step: clipping before it is impossible, say so
    module._trainer = SimpleNamespace(max_steps=10, gradient_clip_val=1.0,
                                      precision_plugin=MixedPrecision("16-mixed", "cpu"))
    with pytest.raises(ValueError, match="gradient_clip_val"):
        configure_optimizers(module, OptimConfig(fused=True))
    assert configure_optimizers(module, OptimConfig())["optimizer"].defaults["fused"] is False
    # bf16-mixed has no scaler: a fused optimizer with clipping is fine (clip_gradients clips it)
    module._trainer.precision_plugin = MixedPrecision("bf16-mixed", "cpu")
    with pytest.raises(ValueError, match="needs every trainable parameter on CUDA"):
        configure_optimizers(module, OptimConfig(fused=True))


def test_clip_gradients_clips_a_fused_optimizer_under_bf16():
    """Lightning's mixed-precision plugin raises on clipping any fused optimizer; without a scaler the stages clip
    the (already unscaled) gradients themselves, by norm or by value."""
    from xr0.stages.common import clip_gradients

    for algorithm, check in (("norm", lambda g: torch.linalg.vector_norm(g) <= 0.1 + 1e-6),
                             ("value", lambda g: g.abs().max() <= 0.01 + 1e-9)):
        layer = torch.nn.Linear(8, 8)
        layer.trainer = SimpleNamespace(precision_plugin=MixedPrecision("bf16-mixed", "cpu"))
        (layer(torch.randn(4, 8)) * 100).sum().backward()
        opt = torch.optim.AdamW(layer.parameters(), fused=True)  # torch has a fused AdamW on CPU too
        clip_gradients(layer, opt, 0.1 if algorithm == "norm" else 0.01, algorithm)
        grads = torch.cat([p.grad.flatten() for p in layer.parameters()])
        assert check(grads), algorithm


def test_auto_batch_keeps_the_largest_that_ran(monkeypatch):
    tried = []

    def fake_fit(module, data, *args):
        tried.append(len(data["instruction"]))
        if tried[-1] > 8:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return [1.0], True

    monkeypatch.setattr(train, "fit_steps", fake_fit)
    monkeypatch.setattr(train, "synthetic_batch", lambda s, b, device: {"instruction": [""] * b})
    assert train.largest_batch(torch.nn.Linear(1, 1), {}, "cuda", None) == 8
    assert tried == [1, 2, 4, 8, 16]
