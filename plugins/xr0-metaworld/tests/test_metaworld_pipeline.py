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


@pytest.fixture(scope="module")
def chain(data, tmp_path_factory):
    from xr0_metaworld.demo import train_chain

    return train_chain(tmp_path_factory.mktemp("runs"), data, (4, 6, 4), extra=["_image=28", "data.batch_size=8"])


def test_fit_three_stages_then_eval(chain, tmp_path, capsys):
    runs = chain
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
    assert (out / "chunks" / "last.ckpt_rtc_d2_reach-v3_ep0.png").is_file()  # the chunk against the expert
    assert "| reaction (ticks) | reacted | success after move |" in capsys.readouterr().out
    assert res["episodes"][0]["perturbed"] in (True, False) and "reaction" in res["episodes"][0]
    assert main(["sim", "eval", "zero", "--episodes", "1", "--max-steps", "20", "--out", str(out)]) == 0
    assert json.loads((out / "zero_async_d2.json").read_text())["row"]["success"] == 0.0


def test_image_mode_collects_the_state_without_goal_and_object(tmp_path):
    out = tmp_path / "img"
    assert main(["sim", "collect", "--tasks", "push-v3", "--episodes", "1", "--seed", "5", "--out", str(out),
                 "--image-size", "28", "--no-vl", "--obs", "image", "--perturb-at", "20"]) == 0
    card = load_card(str(out / "metaworld.yaml"))
    assert card.embodiment == "metaworld_sawyer_image" and "--perturb-at 20" in card.source
    dm = WebDatasetData(card=str(out / "metaworld.yaml"), batch_size=2, num_workers=0, image_size=28, chunk=8)
    batch = dm.account(next(iter(dm.train_dataloader())))
    assert (batch["state"][:, 4:] == 0).all()  # 4 state dims: hand xyz and gripper, padded to 32
    # a checkpoint of that robot is evaluated in image mode (its embodiment says so), perturbation included
    from xr0.run import fit

    run = fit("plugins/xr0-metaworld/recipes/metaworld_tiny/stage2.yaml",
              [f"_data={out}", "embodiment=metaworld_sawyer_image", "stage.init_from=null", "trainer.max_steps=2",
               "_image=28", "data.batch_size=4", f"run.out_dir={tmp_path / 'img_s2'}"])
    ev = tmp_path / "img_eval"
    assert main(["sim", "eval", str(run / "checkpoints" / "last.ckpt"), "--tasks", "push-v3", "--episodes", "1",
                 "--max-steps", "12", "--perturb-at", "4", "--sheets", "0", "--out", str(ev)]) == 0
    res = json.loads((ev / "last.ckpt_async_d2.json").read_text())
    assert res["row"]["obs"] == "image" and res["episodes"][0]["perturbed"]


ABLATE = ["--variants", "training_rtc", "lambda", "--modes", "sync", "async", "--delays", "2", "--seeds", "0",
          "--episodes", "1", "--max-steps", "20", "--perturb-at", "8", "--chunk", "8", "--reps", "200",
          "--set", "_image=28", "--set", "data.batch_size=4", "--set", "data.shuffle_buffer=50"]


def test_ablate_trains_each_layout_then_resumes_without_redoing_anything(data, chain, tmp_path, capsys):
    import yaml

    out = tmp_path / "ablate"
    recipe = "plugins/xr0-metaworld/recipes/metaworld_tiny/stage3.yaml"
    from xr0_metaworld.ablate import recipe_offset

    s1, s2 = (str(chain[k] / "checkpoints" / "last.ckpt") for k in ("stage1", "stage2"))
    given = recipe_offset(s2)
    other = 10 if given == 0 else 0
    cmd = ["ablate", recipe, "--data", str(data), "--out", str(out), "--stage1", s1, "--stage2", s2,
           "--steps", "2", "2", "2"] + ABLATE
    assert main(cmd) == 0
    md = capsys.readouterr().out
    md = md[md.index("## ablation"):]  # after the trainings' own lines
    train = out / "train"
    # one stage 2 per RoPE layout the points use (the given one for its own layout, one trained for the other);
    # each stage 3 starts from the one of its own layout
    assert sorted(p.name for p in train.iterdir()) == ["async-causal-o0-rw_off_s0", "async-lambda4-o10-rw_batch_s0",
                                                       f"stage2_o{other}"]
    layouts = {given: str(out / "stage2" / f"o{given}.ckpt"),
               other: str(train / f"stage2_o{other}" / "checkpoints" / "last.ckpt")}
    assert yaml.safe_load((train / f"stage2_o{other}" / "recipe.yaml").read_text())["stage"]["head"]["rope_offset"] \
        == other
    for run, off in (("async-causal-o0-rw_off_s0", 0), ("async-lambda4-o10-rw_batch_s0", 10)):
        stage = yaml.safe_load((train / run / "recipe.yaml").read_text())["stage"]
        assert stage["init_from"] == layouts[off] and stage["head"]["rope_offset"] == off
    assert "| training_rtc | async |" in md and "| scripted expert | closed loop, no latency |" in md
    assert "### reaction time after the move" in md and "| exec mode | async − sync | – | 2 |" in md
    assert "| mask |" not in md  # training_rtc and lambda differ in three axes: no single-factor contrast
    assert (out / "ablation.png").is_file() and "Power (two-sided" in md
    # a second run finds every cell: nothing trained or evaluated again
    files = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.suffix in (".ckpt", ".json") and "tb" not in p.parts}
    assert main(cmd) == 0
    assert capsys.readouterr().out == md  # nothing trained: nothing else printed, the same report
    assert all(p.stat().st_mtime_ns == t for p, t in files.items())
    # a training killed before it finished (no done.json): only it is trained again, and its cells re-evaluated
    (train / "async-lambda4-o10-rw_batch_s0" / "done.json").unlink()
    assert main(cmd) == 0
    capsys.readouterr()
    changed = {str(p.relative_to(out)) for p, t in files.items() if not p.exists() or p.stat().st_mtime_ns != t}
    run, cells = "train/async-lambda4-o10-rw_batch_s0", "cells/reach-v3_e1_te4_max20_goal@8/async-lambda4-o10-rw_batch_s0"
    assert changed == {f"{run}/done.json", f"{run}/checkpoints/last.ckpt", f"{cells}_sync_d2.json",
                       f"{cells}_async_d2.json"}
    # other training options into the same folder are refused, in one line
    assert main(cmd[:-len(ABLATE) - 3] + ["3", "2", "2"] + ABLATE) == 2
    assert "trained with steps = [2, 2, 2]" in capsys.readouterr().err
