"""CI's small end to end: `xr0 sim collect` → stages 1 → 2 → 3 (a few steps) → `xr0 sim eval`, all on CPU."""
import json

import numpy as np
import pytest

from xr0.cli import main
from xr0.data import load_card, load_stats
from xr0.data.module import WebDatasetData


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("mw") / "data"
    assert main(["sim", "collect", "--tasks", "reach-v3", "--episodes", "2", "--seed", "5", "--out", str(out),
                 "--image-size", "28"]) == 0
    return out


def test_collect_is_reproducible_and_reads_back(data, tmp_path):
    again = tmp_path / "again"
    assert main(["sim", "collect", "--tasks", "reach-v3", "--episodes", "2", "--seed", "5", "--out", str(again),
                 "--image-size", "28", "--no-vl"]) == 0
    assert (again / "metaworld-000000.tar").read_bytes() == (data / "metaworld-000000.tar").read_bytes()
    card = load_card(str(data / "metaworld.yaml"))
    assert card.embodiment == "metaworld_sawyer" and card.chunk == 16 and card.num_samples > 40
    stats = load_stats(card.stats_path)
    assert np.all(np.abs(stats["actions"]["mean"][0, :4]) <= 1.0)
    dm = WebDatasetData(card=str(data / "metaworld.yaml"), batch_size=4, num_workers=0, image_size=28, chunk=8)
    batch = dm.account(next(iter(dm.train_dataloader())))
    assert batch["images"].shape == (4, 1, 3, 28, 28) and batch["actions"].shape == (4, 8, 32)
    assert batch["instruction"][0] == "reach the red goal with the gripper"
    vl = [json.loads(x) for x in _members(data / "metaworld_vl-000000.tar", ".json")]
    assert len(vl) == 8 and all(v["prompt"] and v["answer"] for v in vl)


def _members(tar_path, suffix):
    import tarfile

    with tarfile.open(tar_path) as tf:
        return [tf.extractfile(m).read() for m in tf.getmembers() if m.name.endswith(suffix)]


def test_fit_three_stages_then_eval(data, tmp_path):
    from xr0_metaworld.demo import train_chain

    runs = train_chain(tmp_path / "runs", data, (4, 6, 4), extra=["_image=28", "data.batch_size=8"])
    ckpt = runs["stage3"] / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and any((runs["stage2"] / "tb").rglob("events.*"))
    out = tmp_path / "eval"
    for mode in ("async", "rtc"):
        assert main(["sim", "eval", str(ckpt), "--episodes", "1", "--max-steps", "20", "--latency-steps", "2",
                     "--mode", mode, "--perturb-at", "10", "--sheets", "1", "--out", str(out)]) == 0
    res = json.loads((out / "last.ckpt_async_d2.json").read_text())
    ep = res["episodes"][0]
    assert res["row"]["episodes"] == 1 and isinstance(ep["success"], bool)
    assert res["row"]["success"] == float(ep["success"])  # the rate is the episodes' mean
    # a success ends the episode at the tick it happened; a failure runs all 20 steps and has no tick
    if ep["success"]:
        assert 1 <= ep["success_at"] == ep["steps"] <= 20
    else:
        assert ep["success_at"] is None and ep["steps"] == 20
    assert res["episodes"][0]["held"] == 2  # the first chunk's latency, then seamless
    assert (out / "sheets" / "last.ckpt_rtc_d2_reach-v3_ep0.png").is_file()
    assert main(["sim", "eval", "zero", "--episodes", "1", "--max-steps", "20", "--out", str(out)]) == 0
    assert json.loads((out / "zero_async_d2.json").read_text())["row"]["success"] == 0.0
