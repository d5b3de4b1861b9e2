import json

import pytest
import torch

from xr0.cli import main
from xr0.export import read_export


def test_export_roundtrip(tmp_path):
    ckpt = {"state_dict": {"a.weight": torch.randn(3, 2), "b": torch.arange(4)}, "global_step": 7,
            "xr0_recipe": {"stage": {"name": "dit_flow"}}, "xr0_stats": {"actions": {"mean": [0.0]}},
            "xr0_embodiment": "sim_arm", "optimizer_states": [{"state": {}}]}
    ckpt["state_dict"]["tied"] = ckpt["state_dict"]["a.weight"]  # shared storage must export too
    torch.save(ckpt, tmp_path / "m.ckpt")
    assert main(["export", str(tmp_path / "m.ckpt"), str(tmp_path / "out")]) == 0
    tensors, meta = read_export(tmp_path / "out")
    assert set(tensors) == {"a.weight", "b", "tied"}
    assert torch.equal(tensors["a.weight"], ckpt["state_dict"]["a.weight"])
    assert meta["xr0_recipe"] == ckpt["xr0_recipe"] and meta["xr0_embodiment"] == "sim_arm"
    assert meta["global_step"] == 7
    assert "optimizer_states" not in json.dumps(meta)


def test_export_rejects_unsafe_or_missing_files(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"state_dict": {}, "x": Evil()}, tmp_path / "evil.ckpt")
    with pytest.raises(ValueError, match="not a readable"):
        from xr0.export import export_checkpoint

        export_checkpoint(tmp_path / "evil.ckpt", tmp_path / "o")
    assert "pwned" not in capsys.readouterr().out
    assert main(["export", str(tmp_path / "nope.ckpt"), str(tmp_path / "o")]) == 2
    with pytest.raises(FileNotFoundError, match="not an xr0 export"):
        read_export(tmp_path)
