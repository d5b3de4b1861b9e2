"""The ablation's aggregation and table (pure functions), and the demo's refusal to clear a foreign folder."""
import pytest
from xr0_metaworld.ablate import aggregate, plot, table
from xr0_metaworld.demo import MARKER, prepare_out


def _row(variant, mode, d, seed, success):
    return {"variant": variant, "exec_mode": mode, "latency": d, "seed": seed, "success": success}


def test_mean_and_std_over_seeds_per_variant_mode_delay(tmp_path):
    rows = [_row("lambda", "async", 2, 0, 1.0), _row("lambda", "async", 2, 1, 0.5),
            _row("sync", "sync", 2, 0, 0.25), _row("sync", "sync", 2, 1, 0.25)]
    agg = aggregate(rows)
    assert agg[("lambda", "async", 2)] == (0.75, 0.25, 2)
    md = table(rows, [0, 2])
    assert "| sync | sync | – | 25 ± 0 |" in md and "| lambda | async | – | 75 ± 25 |" in md
    assert md.index("| sync |") < md.index("| lambda |")  # the VARIANTS order, not alphabetical
    assert plot(rows, [0, 2], tmp_path / "p.png").stat().st_size > 1000


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
