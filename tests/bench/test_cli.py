"""`xr0 bench infer|train --scale tiny` run on CPU (a smoke test of the code path; no timings asserted)."""
import json

from xr0.cli import main


def test_bench_infer_tiny(tmp_path, capsys):
    assert main(["bench", "infer", "--scale", "tiny", "--device", "cpu", "--iters", "3", "--warmup", "1",
                 "--out", str(tmp_path / "infer.json")]) == 0
    res = json.loads((tmp_path / "infer.json").read_text())
    assert res["kind"] == "infer" and res["steps"] == 5 and res["vlm_tokens"] > 0
    for part in ("vision_ms", "prefill_ms", "dit_steps_ms", "total_ms"):
        assert res[part]["n"] == 3 and res[part]["p50_ms"] > 0
    assert "[xr0 bench infer] tiny" in capsys.readouterr().out


def test_bench_train_tiny(tmp_path):
    assert main(["bench", "train", "--scale", "tiny", "--device", "cpu", "--iters", "2", "--warmup", "1",
                 "--stage", "dit_flow", "--out", str(tmp_path / "train.json")]) == 0
    res = json.loads((tmp_path / "train.json").read_text())
    assert res["stage"] == "dit_flow" and res["samples_per_s"] > 0
