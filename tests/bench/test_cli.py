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
