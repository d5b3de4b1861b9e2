"""The ablation's points (axes, named variants, factorials) and its report (tables, factor effects, power) on cells
whose numbers are set by hand; the demo's refusal to clear a foreign folder. The end-to-end run is in
test_metaworld_pipeline.py (it needs collected data)."""
from pathlib import Path

import numpy as np
import pytest
from xr0_metaworld.ablate import contrasts, plot, report
from xr0_metaworld.demo import MARKER, prepare_out
from xr0_metaworld.points import (
    BUILTIN,
    Point,
    differs_only_in,
    factorial,
    parse_assignment,
    point_recipe,
    recipe_points,
    select,
)

from xr0.config import load_recipe, resolve

RECIPE = str(Path(__file__).resolve().parents[1] / "recipes" / "metaworld_tiny" / "stage3.yaml")


def test_named_variants_are_points_and_each_trains_what_it_says(tmp_path):
    named, sampler = recipe_points(RECIPE)
    assert {"sync", "training_rtc", "lambda", "lambda_no_offset", "lambda_no_reweight", "causal_offset"} <= set(named)
    assert named["training_rtc"] == Point(mask="causal", rope_offset=0, reweight="off")
    assert named["lambda"] == Point(mask="lambda", window=4, rope_offset=10, reweight="batch")
    assert sampler == "{name: prefix}"
    for name in ("training_rtc", "lambda_no_offset", "sync"):
        p = named[name]
        stage = resolve(load_recipe(point_recipe(RECIPE, p, tmp_path / f"{name}.yaml"), p.overrides(sampler)))["stage"]
        assert stage["mask"] == p.mask_node()  # replaced as a whole: no Λ window left on a causal mask
        assert stage["mode"] == p.mode and stage["head"]["rope_offset"] == p.rope_offset
        assert stage["mask"]["name"] == p.mask and stage["mask"]["prefix_dropout"] is False
        assert bool(stage["reweight"]) == (p.reweight == "batch")
        assert (stage["prefix_sampler"] is None) == (p.mode == "sync")
    tiny = str(Path(__file__).resolve().parents[3] / "recipes" / "tiny" / "stage3.yaml")  # a concrete Λ mask node
    mask = resolve(load_recipe(point_recipe(tiny, named["training_rtc"], tmp_path / "tiny.yaml")))["stage"]["mask"]
    assert mask == {"name": "causal", "prefix_dropout": False}
    dropout = Point(prefix_dropout=True, reweight="sample")
    assert dropout.mask_node() == {"name": "lambda", "window": 4, "prefix_dropout": True}
    assert "stage.reweight=sample" in dropout.overrides()
    with pytest.raises(ValueError, match="sync point trains without a prefix"):
        Point(mode="sync", reweight="batch")


def test_factorial_points_are_named_when_a_variant_matches_and_skip_what_cannot_train():
    pts, _ = select(RECIPE, [], "mask=causal,lambda rope_offset=0,10", [])
    assert set(pts) == {"lambda", "lambda_no_offset", "async-causal-o0-rw_batch", "async-causal-o10-rw_batch"}
    assert len(factorial(BUILTIN["lambda"], parse_assignment("mode=sync,async reweight=off,batch"))) == 3
    pts, _ = select(RECIPE, ["training_rtc", "lambda"], None, ["mask=causal,rope_offset=0,reweight=off"])
    assert list(pts) == ["training_rtc", "lambda"]  # the --point is training_rtc again: one point, its name
    assert differs_only_in(BUILTIN["lambda"], BUILTIN["lambda_no_offset"], "rope_offset")
    assert not differs_only_in(BUILTIN["lambda"], BUILTIN["training_rtc"], "mask")  # three axes apart
    with pytest.raises(ValueError, match="unknown variant 'lamda'"):
        select(RECIPE, ["lamda"], None, [])
    with pytest.raises(ValueError, match="AXIS=LEVEL"):
        parse_assignment("offset=0,10")


def _cell(success, reaction=None):
    eps = [{"success": bool(s), "boundary_jerk": 0.03, "reaction": np.nan if r is None else r,
            "post_success": bool(s), "perturbed": True} for s, r in zip(success, reaction or [None] * len(success))]
    rt = [e["reaction"] for e in eps if np.isfinite(e["reaction"])]
    return {"success": float(np.mean(success)), "throughput_per_min": 10.0, "boundary_jerk": 0.03,
            "reaction_ticks": float(np.mean(rt)) if rt else float("nan"), "reacted": len(rt) / len(eps),
            "post_success": float(np.mean(success)), "episodes_detail": eps}


def test_report_tables_effects_and_power_by_hand(tmp_path):
    points = {"lambda": BUILTIN["lambda"], "lambda_no_offset": BUILTIN["lambda_no_offset"]}
    cells = {("lambda", 0, "async", 2): _cell([1, 1, 1, 0], [2, 3, 2, None]),
             ("lambda", 1, "async", 2): _cell([1, 0, 1, 0], [2, None, 4, None]),
             ("lambda_no_offset", 0, "async", 2): _cell([1, 0, 0, 0], [5, None, None, None]),
             ("lambda_no_offset", 1, "async", 2): _cell([0, 0, 1, 0], [None, None, 6, None])}
    refs = {"expert": [_cell([1, 1, 1, 1], [0, 0, 0, 0])] * 2, "zero": [_cell([0, 0, 0, 0])] * 2}
    md = report(points, cells, refs, ["async"], [2], [0, 1], ["reach-v3"], 4, perturb_at=10, perturb="goal", reps=500)
    # success per seed: lambda 75%, 50% → 62.5 ± 12.5; lambda_no_offset 25%, 25%
    assert "| lambda | async | 62 ± 12 |" in md and "| lambda_no_offset | async | 25 ± 0 |" in md
    assert "| scripted expert | closed loop, no latency | 100 ± 0 |" in md
    # rope_offset 10 − 0 on success: 5/8 − 2/8 = +37.5 points; on reaction (episodes that reacted): lambda's
    # 2, 3, 2, 2, 4 → 2.6 against 5, 6 → 5.5: −2.9 ticks
    row = next(line for line in md.splitlines() if line.startswith("| rope_offset | 10 − 0 | async |"))
    assert "| 1 | +37.5 [" in row and "| -2.9 [" in row  # one matched pair of cells (one delay)
    assert "32 episodes per cell" not in md and "8 episodes per cell" in md  # 2 seeds × 4 episodes × 1 task
    assert contrasts(points, ["sync", "async"], [2, 4])[0][3] == [(("lambda_no_offset", "sync", 2), ("lambda", "sync", 2)),
                                                               (("lambda_no_offset", "sync", 4), ("lambda", "sync", 4))]
    assert plot(cells, list(points), ["async"], [2], [0, 1], ["success", "reaction"], tmp_path / "p.png"
                ).stat().st_size > 1000


def test_demo_clears_only_its_own_output(tmp_path):
    mine = tmp_path / "demo"
    prepare_out(mine)
    (mine / "old.txt").write_text("x")
    prepare_out(mine)  # carries the marker: cleared
    assert not (mine / "old.txt").exists() and (mine / MARKER).is_file()
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not written by `xr0 demo`"):
        prepare_out(foreign)
    assert (foreign / "mine.txt").read_text() == "keep"
