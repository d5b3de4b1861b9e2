"""What a user sees from `xr0 fit`: a bar over steps with its total, a one-line summary, no warning that asks
nothing of them (the frozen VLM's eval mode, Lightning's advertisement), and real warnings kept."""
from __future__ import annotations

import re
import warnings

from torch import nn

from xr0.progress import quiet
from xr0.run import fit


def test_a_tiny_run_shows_steps_of_a_total_and_a_summary_and_no_noise(tmp_path, capfd):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit("recipes/tiny/stage2.yaml", ["stage.init_from=null", "trainer.max_steps=3", f"run.out_dir={tmp_path}"])
    out, err = capfd.readouterr()
    assert re.search(r"train: 100%.*\| 3/3 ", err), err[-2000:]  # steps out of max_steps, not Epoch 0/-2
    assert re.search(r"\[xr0\] done: 3 steps in [\d.]+ s, train/loss [\d.e+-]+; checkpoint .*last\.ckpt", out)
    assert "Tip:" not in out + err
    said = [str(w.message) for w in caught]
    assert not any("in eval mode at the start of training" in m for m in said), said


def test_a_module_left_in_eval_by_mistake_still_warns():
    class Stage(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Linear(2, 2)
            self.backbone.frozen = True  # declared frozen: its eval mode is meant
            self.head = nn.Dropout()

        def train(self, mode=True):
            super().train(mode)
            self.backbone.eval()
            self.head.eval()  # not declared: a bug Lightning should still flag
            return self

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet(Stage())
        warnings.warn("Found 2 module(s) in eval mode at the start of training. This may lead to ...")
    assert any("in eval mode" in str(w.message) for w in caught)
