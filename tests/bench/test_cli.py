"""`xr0 bench infer --scale tiny` runs on CPU (a smoke test of the code path; no timings asserted)."""
import json

from xr0.cli import main


def test_bench_infer_tiny(tmp_path, capsys):
    assert main(["bench", "infer", "--scale", "tiny", "--device", "cpu", "--iters", "3", "--warmup", "1",
                 "--peak", "1.0", "0.05", "--out", str(tmp_path / "infer.json")]) == 0
    res = json.loads((tmp_path / "infer.json").read_text())
    assert res["kind"] == "infer" and res["steps"] == 5 and res["vlm_tokens"] > 0
    for path in ("fast", "eager"):
        for part, stats in res[path].items():
            assert stats["n"] == 3 and stats["p50_ms"] > 0, (path, part)
    assert set(res["fast"]) == {"total_ms", "vision_ms", "prefill_ms", "dit_ms"}
    assert res["speedup"] > 0 and 0 < res["roofline_fraction"]
    total = res["cost"]["total"]["gflops"]
    assert abs(total - sum(res["cost"][k]["gflops"] for k in ("vision", "prefill", "dit"))) < 1e-9 * total
    out = capsys.readouterr().out
    assert "[xr0 bench infer] tiny" in out and "eager p50" in out and "% reached" in out


def test_bench_infer_without_eager_and_peak(tmp_path):
    assert main(["bench", "infer", "--device", "cpu", "--iters", "2", "--warmup", "1", "--no-eager",
                 "--out", str(tmp_path / "i.json")]) == 0
    res = json.loads((tmp_path / "i.json").read_text())
    assert "eager" not in res and res["peak"] is None and "roofline_ms" not in res  # a CPU has no listed peak


def test_bench_infer_a_second_backbone_family(tmp_path, capsys):
    """`--backbone paligemma`: its own declared tiny size, the DiT fitted to its K/V, the fast path and the cost."""
    assert main(["bench", "infer", "--backbone", "paligemma", "--device", "cpu", "--iters", "2", "--warmup", "1",
                 "--peak", "1.0", "0.05", "--out", str(tmp_path / "pg.json")]) == 0
    res = json.loads((tmp_path / "pg.json").read_text())
    assert res["backbone"] == "paligemma" and res["image_hw"] == [56, 56] and "fast" in res and res["speedup"] > 0
    # 2 views × 16 SigLIP patches, <bos>, 30 instruction bytes, "\n": PaliGemma's prompt, no chat template
    assert res["vlm_tokens"] == 2 * 16 + 1 + 30 + 1 and res["cost"]["vision"]["gflops"] > 0
    assert "[xr0 bench infer] tiny paligemma" in capsys.readouterr().out


def test_bench_infer_falls_back_to_eager_when_no_static_prefill_is_declared(tmp_path, capsys, monkeypatch):
    from xr0.backbones.paligemma import PaliGemmaBackbone

    monkeypatch.setattr(PaliGemmaBackbone, "static_prefill", lambda self: None)
    assert main(["bench", "infer", "--backbone", "paligemma", "--device", "cpu", "--iters", "2", "--warmup", "1",
                 "--no-eager", "--out", str(tmp_path / "e.json")]) == 0
    res = json.loads((tmp_path / "e.json").read_text())
    assert "fast" not in res and res["eager"]["total_ms"]["n"] == 2  # eager timed although --no-eager was asked
    assert "declares no static prefill plan" in res["fast_note"]
    assert "declares no static prefill plan" in capsys.readouterr().out


def test_bench_names_an_undeclared_scale(capsys, monkeypatch):
    from xr0.backbones.paligemma import PaliGemmaBackbone

    monkeypatch.setattr(PaliGemmaBackbone, "scales", {"tiny": PaliGemmaBackbone.scales["tiny"]})
    assert main(["bench", "infer", "--backbone", "paligemma", "--scale", "paper", "--device", "cpu"]) == 2
    assert "backbone 'paligemma' declares no 'paper' scale (its scales: tiny)" in capsys.readouterr().err
