"""Nothing poisoned or mis-declared gets served (issue 18): an export whose metadata declares another head size
is refused before the head is allocated, non-finite weights or statistics are refused at load, and the
declared shapes are compared with the weight file on the meta device."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from xr0.checkpoint import CheckpointMismatch, load_policy
from xr0.export import export_checkpoint


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    from xr0.run import fit

    root = tmp_path_factory.mktemp("guards")
    out = fit("recipes/tiny/stage2.yaml", ["stage.init_from=null", "trainer.max_steps=1", f"run.out_dir={root / 'run'}"])
    return export_checkpoint(out / "checkpoints" / "last.ckpt", root / "export")


def _copy(src, dst, meta_edit=None, weight_edit=None):
    import shutil

    shutil.copytree(src, dst)
    if meta_edit:
        meta = json.loads((dst / "xr0.json").read_text())
        meta_edit(meta)
        (dst / "xr0.json").write_text(json.dumps(meta))
    if weight_edit:
        w = load_file(str(dst / "model.safetensors"))
        weight_edit(w)
        save_file(w, str(dst / "model.safetensors"))
    return dst


def test_the_intact_export_loads_with_its_processor(export_dir):
    loaded = load_policy(export_dir)
    assert loaded.processor is not None and loaded.processor.chunk == loaded.policy.head.chunk


def test_a_declared_16384_wide_head_is_refused_before_it_is_built(export_dir, tmp_path, monkeypatch):
    def widen(meta):
        meta["xr0_recipe"]["stage"]["head"]["width"] = 16384

    bad = _copy(export_dir, tmp_path / "wide", meta_edit=widen)
    from xr0.heads.dit import DiT

    built = []
    real_init = DiT.__init__
    monkeypatch.setattr(DiT, "__init__", lambda self, *a, **k: (built.append(torch.empty(0).device),
                                                                real_init(self, *a, **k))[1])
    with pytest.raises(CheckpointMismatch, match=r"recipe's head does not fit its weights.*\(1, 16384\) vs weights \(1, 32\)"):
        load_policy(bad)
    assert built == [torch.device("meta")]  # the only DiT built was the shape probe, on the meta device


def test_non_finite_weights_and_statistics_are_refused_at_load(export_dir, tmp_path):
    def poison(w):
        k = next(k for k in w if k.endswith("head.sink"))
        w[k][0, 0] = float("nan")

    with pytest.raises(CheckpointMismatch, match="1 weight tensors hold NaN or inf"):
        load_policy(_copy(export_dir, tmp_path / "nan_w", weight_edit=poison))

    def nan_stats(meta):
        meta["xr0_processor"]["action_std"][0][0] = float("nan")

    with pytest.raises(ValueError, match="action std statistics hold NaN"):
        load_policy(_copy(export_dir, tmp_path / "nan_s", meta_edit=nan_stats))

    def huge_std(meta):
        meta["xr0_processor"]["action_std"][0][0] = 1e30

    with pytest.raises(ValueError, match="statistics reach 1e\\+30"):
        load_policy(_copy(export_dir, tmp_path / "huge", meta_edit=huge_std))
