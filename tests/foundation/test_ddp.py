"""Two processes (DDP over gloo on CPU) train a tiny stage: disjoint data, identical final parameters."""
import json
import subprocess
import sys
from pathlib import Path


def test_two_process_ddp_reads_disjoint_data_and_ends_identical(tmp_path):
    script = Path(__file__).with_name("ddp_run.py")
    res = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2 and r0["step"] == r1["step"] == 4
    assert r0["seen"] and r1["seen"]
    assert not set(r0["seen"]) & set(r1["seen"]), "each rank must read its own part of the data"
    assert r0["param_sum"] == r1["param_sum"] and r0["param_abs"] == r1["param_abs"]
    assert "global batch = 2 per device × 2 devices × 1 nodes × 1 accumulation = 4" in res.stdout


def test_fsdp_preset_wraps_the_blocks_the_model_declares():
    from lightning.pytorch.strategies import FSDPStrategy

    from xr0 import config
    from xr0.config import load_recipe, validate
    from xr0.heads.dit import Block
    from xr0.strategies import make_strategy, wrap_modules

    root = Path(__file__).parents[2]
    tree = validate(load_recipe(root / "recipes" / "tiny" / "stage3.yaml", ["stage.init_from=null"]))
    module = config.build(tree["stage"], "stage")
    wrap = wrap_modules(module)
    assert Block in wrap and any(c.__name__ == "Qwen3VLTextDecoderLayer" for c in wrap)
    assert isinstance(make_strategy("fsdp", module, activation_checkpointing=True), FSDPStrategy)
    assert make_strategy("deepspeed_zero2", module) == "deepspeed_stage_2"
    assert make_strategy("ddp", module) == "ddp"
