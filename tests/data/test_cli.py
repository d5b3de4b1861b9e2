"""`xr0 data write|stats|inspect` on generated episodes."""
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from helpers import episodes

from xr0.cli import main
from xr0.data import load_card, load_stats


def test_write_stats_inspect(tmp_path, capsys):
    src = tmp_path / "eps"
    src.mkdir()
    for i, ep in enumerate(episodes(n_eps=2, steps=6, size=12)):
        np.savez(src / f"ep{i}.npz", state=ep["state"], actions=ep["actions"], instruction=np.array(ep["instruction"]),
                 **{f"image.{c}": v for c, v in ep["images"].items()})
    assert main(["data", "write", str(src), "--embodiment", "libero_franka", "--name", "cli", "--out",
                 str(tmp_path / "out"), "--maxcount", "5"]) == 0
    card = tmp_path / "out" / "cli.yaml"
    written = load_stats(load_card(card).stats_path)
    Path(load_card(card).stats_path).unlink()
    assert main(["data", "stats", str(card)]) == 0  # recomputed by streaming the shards
    again = load_stats(load_card(card).stats_path)
    for part in ("actions", "state"):
        for k in ("mean", "std", "q01", "q99"):
            assert np.allclose(written[part][k], again[part][k], atol=1e-5), (part, k)
    capsys.readouterr()
    sheet = tmp_path / "sheet.png"
    assert main(["data", "inspect", str(card), "--sheet", str(sheet)]) == 0
    out = capsys.readouterr().out
    assert "shards      3" in out and "samples     12" in out and '"instruction": "task 0"' in out
    assert Image.open(sheet).size[0] > 2 * 64  # two camera tiles side by side


def test_inspect_missing_card_is_a_clear_error(capsys):
    assert main(["data", "inspect", "no_such_card"]) == 2
    assert "data card 'no_such_card' not found" in capsys.readouterr().err
