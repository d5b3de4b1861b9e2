"""Import of a tiny release in the released naming, the key map both ways, errors by name, and the round trip
import -> export -> import."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from xr0.cli import main
from xr0.export import read_export
from xr0.release import keymap as K
from xr0.release.exporter import export_release
from xr0.release.importer import import_release
from xr0.release.layout import ReleaseError, iter_tensors


def _load_fixture_module():
    # pytest runs in importlib mode, so the sibling conftest is loaded by path under a unique name
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("xr0_release_test_fixture", Path(__file__).with_name("conftest.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


conftest = _load_fixture_module()


def _release_tensors(root):
    return dict(iter_tensors(root))


def test_every_tensor_lands_where_the_map_says(release, tmp_path):
    rep = import_release(release, tmp_path / "imp", robot_type="libero_all")
    tensors, _ = read_export(tmp_path / "imp")
    src = _release_tensors(release)
    for name, t in src.items():
        assert torch.equal(tensors[K.to_xr0(name)[0]], t), name
    # spot checks written out, so a wrong row in the table cannot pass by agreeing with itself
    assert torch.equal(tensors["head.blocks.1.attn.qkv.bias"], src["dit.layers.1.attn.qkv_proj.bias"])
    assert torch.equal(tensors["head.blocks.0.attn_norm_out.weight"], src["dit.layers.0.middle_layernorm.weight"])
    assert torch.equal(tensors["head.t_proj.weight"], src["t_projector.layers.0.weight"])
    assert torch.equal(tensors["head.sink"], src["sink.weight"])
    assert torch.equal(tensors["backbone.model.model.language_model.layers.2.self_attn.k_proj.weight"],
                       src["vlm.model.language_model.layers.2.self_attn.k_proj.weight"])
    # the tied lm_head the release omits is materialised for xr0's state_dict
    assert rep.added == ["backbone.model.lm_head.weight"]
    assert torch.equal(tensors["backbone.model.lm_head.weight"],
                       src["vlm.model.language_model.embed_tokens.weight"])
    assert len(tensors) == len(src) + 1
    assert tensors["head.sink"].dtype == torch.bfloat16  # the release dtype is kept


def test_embodiments_and_statistics_come_from_the_processor(release, tmp_path):
    import_release(release, tmp_path / "imp", robot_type="bridge_delta")
    _, meta = read_export(tmp_path / "imp")
    assert sorted(meta["xr0_embodiments"]) == sorted(conftest.ROBOTS)
    ac = conftest.action_config()
    for robot, n_valid in conftest.ROBOTS.items():
        emb = meta["xr0_embodiments"][robot]
        assert emb["chunk"] == conftest.T
        assert emb["action_mask"] == [True] * n_valid + [False] * (conftest.A - n_valid)
        assert emb["stats"]["actions"]["mean"] == ac[robot]["mean"]
        assert emb["stats"]["actions"]["std"] == ac[robot]["std"]
        assert emb["stats"]["state"] is None  # the release feeds raw state
    assert meta["xr0_embodiment"] == "bridge_delta"
    assert meta["xr0_stats"] == meta["xr0_embodiments"]["bridge_delta"]["stats"]
    stage = meta["xr0_recipe"]["stage"]  # the released inference path, rebuildable by load_policy / xr0 serve
    assert stage["mask"] == {"name": "causal"} and stage["mode"] == "sync" and stage["init_from"] is None
    head = stage["head"]
    assert head["rope_offset"] == 0 and head["prefix_tau"] == "shared"
    assert (head["width"], head["depth"], head["head_dim"]) == (conftest.D, conftest.L, conftest.HD)
    assert stage["backbone"]["prompt"] == "release" and stage["backbone"]["preprocessor"]["patch_size"] == 14
    vlm = json.loads((tmp_path / "imp" / "vlm_config.json").read_text())
    assert vlm["text_config"] == conftest.VLM_CONFIG["text_config"] and vlm["model_type"] == "qwen3_vl"


def test_robot_type_choice(tmp_path):
    one = conftest.write_release(tmp_path / "one", robots=["libero_all"])
    assert import_release(one, tmp_path / "a").embodiment == "libero_all"  # only one: chosen
    several = conftest.write_release(tmp_path / "several")
    assert import_release(several, tmp_path / "b").embodiment is None
    with pytest.raises(ReleaseError, match="'nope' is not in preprocessor_config.json.*libero_all"):
        import_release(several, tmp_path / "c", robot_type="nope")


def test_keymap_is_a_bijection_on_released_names():
    tensors = conftest.released_tensors()
    xr0_names = set()
    for name in tensors:
        x, _ = K.to_xr0(name)
        assert K.to_release(x)[0] == name
        xr0_names.add(x)
    assert len(xr0_names) == len(tensors)
    expected, optional = K.expected_release_shapes(conftest.CONFIG)
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {k: v for k, v in expected.items() if k not in optional}
    assert optional == {"vlm.lm_head.weight"}


@pytest.mark.parametrize("change, message", [
    (lambda t: t.update({"dit.layers.0.attn.extra.weight": torch.zeros(2)}), "no row in xr0/release/keymap.py"
     r".*dit\.layers\.0\.attn\.extra\.weight"),
    (lambda t: t.pop("dit.layers.1.attn.k_norm.weight"), r"missing keys \(1\): dit\.layers\.1\.attn\.k_norm\.weight"),
    (lambda t: t.pop("vlm.model.visual.merger.norm.bias"), r"missing keys.*vlm\.model\.visual\.merger\.norm\.bias"),
    (lambda t: t.update({"t_projector.layers.0.bias": torch.zeros(5)}),
     r"t_projector\.layers\.0\.bias has shape \(5,\), config\.json implies \(96,\)"),
    (lambda t: t.update({"dit.layers.7.adaln_table": torch.zeros(6, conftest.D)}),
     r"keys the config does not have.*dit\.layers\.7\.adaln_table"),
])
def test_bad_release_is_reported_by_key_name(tmp_path, change, message):
    tensors = conftest.released_tensors()
    change(tensors)
    root = conftest.write_release(tmp_path / "bad", tensors)
    with pytest.raises(K.KeyMapError, match=message):
        import_release(root, tmp_path / "imp")
    assert not (tmp_path / "imp" / "model.safetensors").exists()


def test_recomputed_buffers_are_tolerated(tmp_path):
    tensors = conftest.released_tensors()
    tensors["rotary_emb.inv_freq"] = torch.ones(4)
    rep = import_release(conftest.write_release(tmp_path / "r", tensors), tmp_path / "imp")
    assert rep.ignored == ["rotary_emb.inv_freq"]
    assert "rotary_emb.inv_freq" not in read_export(tmp_path / "imp")[0]


def test_round_trip_import_export_import(release, tmp_path):
    import_release(release, tmp_path / "imp1", robot_type="libero_all")
    export_release(tmp_path / "imp1", tmp_path / "rel", max_shard_gb=1e-4)  # tiny shards: exercise the index
    assert (tmp_path / "rel" / "model.safetensors.index.json").is_file()
    # the exported directory is the release again: same names, same tensors, same config and statistics
    src, back = _release_tensors(release), _release_tensors(tmp_path / "rel")
    assert set(back) == set(src)
    assert all(torch.equal(back[k], src[k]) for k in src)
    assert json.loads((tmp_path / "rel" / "config.json").read_text()) == conftest.CONFIG
    pre = json.loads((tmp_path / "rel" / "preprocessor_config.json").read_text())
    assert pre["action_config"] == conftest.action_config() and pre["patch_size"] == 14
    assert (tmp_path / "rel" / "modeling_mibot.py").is_file()  # remote code carried from release_files/
    import_release(tmp_path / "rel", tmp_path / "imp2", robot_type="libero_all")
    t1, m1 = read_export(tmp_path / "imp1")
    t2, m2 = read_export(tmp_path / "imp2")
    assert set(t1) == set(t2) and all(torch.equal(t1[k], t2[k]) for k in t1)
    assert m1["xr0_embodiments"] == m2["xr0_embodiments"]


def test_export_adds_the_trained_embodiment(release, tmp_path):
    import_release(release, tmp_path / "imp", robot_type="libero_all")
    meta_path = tmp_path / "imp" / "xr0.json"
    meta = json.loads(meta_path.read_text())
    mean = [[0.5] * 6 + [0.0] * 26] * conftest.T
    std = [[2.0] * 32] * conftest.T  # padded dims with spread: must be forced below the release threshold
    meta["xr0_embodiment"] = "my_arm"
    meta["xr0_processor"] = None  # a model without a processor: the statistics and embodiment records are used
    meta["xr0_stats"] = {"actions": {"mean": mean, "std": std}, "state": None}
    meta["xr0_embodiments"]["my_arm"] = {"action_mask": [True] * 6 + [False] * 26}
    meta_path.write_text(json.dumps(meta))
    export_release(tmp_path / "imp", tmp_path / "rel")
    ac = json.loads((tmp_path / "rel" / "preprocessor_config.json").read_text())["action_config"]
    assert set(ac) == set(conftest.ROBOTS) | {"my_arm"}
    assert ac["my_arm"]["mean"] == mean
    assert ac["my_arm"]["std"][0] == [2.0] * 6 + [0.0] * 26
    meta["xr0_stats"]["state"] = {"mean": [0.0] * 32, "std": [1.0] * 32}
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ReleaseError, match="xr0_stats.state: .*raw state"):
        export_release(tmp_path / "imp", tmp_path / "rel2")


def test_export_writes_the_trained_chunk_from_the_processor(release, tmp_path):
    """A model post-trained with chunk 3 on a release of action_length 4 exports 3 rows of statistics (the
    released code generates as many steps as its statistics have rows), with its own mask."""
    import numpy as np

    from xr0.embodiments import Embodiment
    from xr0.processor import ImageSpec, Processor

    import_release(release, tmp_path / "imp", robot_type="libero_all")
    meta_path = tmp_path / "imp" / "xr0.json"
    meta = json.loads(meta_path.read_text())
    arm = Embodiment(name="my_arm", action_names=tuple("abcdef"), state_names=tuple("abcdef"), cameras=("base",),
                     control_hz=10.0, chunk=3, action_low=(-1.0,) * 6, action_high=(1.0,) * 6)
    mean = np.arange(3 * 32, dtype=np.float32).reshape(3, 32) / 100
    std = np.full((3, 32), 2.0, np.float32)
    meta["xr0_processor"] = Processor(arm, ImageSpec(size=(56, 56)), 3, mean, std).to_dict()
    meta_path.write_text(json.dumps(meta))
    export_release(tmp_path / "imp", tmp_path / "rel")
    ac = json.loads((tmp_path / "rel" / "preprocessor_config.json").read_text())["action_config"]["my_arm"]
    assert np.asarray(ac["mean"]).shape == (3, 32) and np.allclose(ac["mean"], mean)
    assert ac["std"][2] == [2.0] * 6 + [0.0] * 26  # padded dims below the release's validity threshold
    meta["xr0_processor"]["state_mean"] = [0.0] * 32
    meta["xr0_processor"]["state_std"] = [1.0] * 32
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ReleaseError, match="normalised states.*state_norm: none"):
        export_release(tmp_path / "imp", tmp_path / "rel2")


def test_export_refuses_tensors_the_release_cannot_hold(release, tmp_path):
    import_release(release, tmp_path / "imp")
    tensors, _meta = read_export(tmp_path / "imp")
    tensors["head.choice_scores.weight"] = torch.zeros(2)
    from safetensors.torch import save_file

    save_file(tensors, str(tmp_path / "imp" / "model.safetensors"))
    with pytest.raises(K.KeyMapError, match=r"head\.choice_scores\.weight"):
        export_release(tmp_path / "imp", tmp_path / "rel")


def test_export_reads_a_post_train_checkpoint(release, tmp_path):
    """Stages 2/3 keep the model under `policy.`; a Lightning checkpoint exports like an export directory."""
    import_release(release, tmp_path / "imp", robot_type="libero_all")
    tensors, meta = read_export(tmp_path / "imp")
    ckpt = {"state_dict": {"policy." + k: v for k, v in tensors.items()}, **meta}
    torch.save(ckpt, tmp_path / "last.ckpt")
    export_release(tmp_path / "last.ckpt", tmp_path / "rel", template=release)
    src, back = _release_tensors(release), _release_tensors(tmp_path / "rel")
    assert set(back) == set(src) and all(torch.equal(back[k], src[k]) for k in src)
    ckpt["state_dict"]["policy.backbone.model.model.language_model.layers.0.mlp.up_proj.lora_A.default.weight"] = \
        torch.zeros(2, 2)
    torch.save(ckpt, tmp_path / "lora.ckpt")
    with pytest.raises(ReleaseError, match="LoRA adapter weights.*merge"):
        export_release(tmp_path / "lora.ckpt", tmp_path / "rel2", template=release)
    # another VLM family cannot go into the released (Qwen3-VL) format: said before any tensor is mapped
    del ckpt["state_dict"]["policy.backbone.model.model.language_model.layers.0.mlp.up_proj.lora_A.default.weight"]
    ckpt["xr0_recipe"] = {**ckpt["xr0_recipe"], "stage": {**ckpt["xr0_recipe"]["stage"],
                                                          "backbone": {"name": "paligemma", "tiny": {}}}}
    torch.save(ckpt, tmp_path / "pg.ckpt")
    with pytest.raises(ReleaseError, match="its VLM is 'paligemma'.*holds a Qwen3-VL.*xr0 export"):
        export_release(tmp_path / "pg.ckpt", tmp_path / "rel3", template=release)


def test_cli(release, tmp_path, capsys):
    assert main(["import-release", str(release), str(tmp_path / "imp"), "--robot-type", "libero_all"]) == 0
    out = capsys.readouterr().out
    assert "embodiments (one per released robot_type): bridge_delta, libero_all, pretrain_arm" in out
    assert main(["export-release", str(tmp_path / "imp"), str(tmp_path / "rel")]) == 0
    assert load_file(str(tmp_path / "rel" / "model.safetensors"))["sink.weight"].shape == (1, conftest.D)
    assert main(["import-release", str(tmp_path / "missing"), str(tmp_path / "x")]) == 2
    assert "release directory not found" in capsys.readouterr().err


def test_keymap_matches_the_dit_head():
    """HEADS `dit` built at the release's sizes has exactly the state_dict the key map makes of the release."""
    from xr0.registry import HEADS

    d = conftest
    head = HEADS.get("dit")(width=d.D, depth=d.L, num_heads=d.D // d.HD, head_dim=d.HD, chunk=d.T,
                            action_dim=d.A, state_dim=d.S)
    built = {K.XR0_HEAD_PREFIX + k: tuple(v.shape) for k, v in head.state_dict().items()}
    mapped = {K.to_xr0(k)[0]: v for k, v in d.released_dit_shapes().items()}  # the fixture's hand-written names
    assert mapped == built
    assert len(built) == 11 + 13 * d.L  # every released DiT tensor, nothing more


def test_import_then_init_from_a_post_train_stage(release, tmp_path):
    import_release(release, tmp_path / "imp", robot_type="libero_all")
    stage, tree = conftest.tiny_post_train(tmp_path / "imp")
    assert tree["stage"]["init_from"] == str(tmp_path / "imp")
    src = _release_tensors(release)
    own = stage.state_dict()
    # a DiT tensor and a VLM tensor, named by hand on both sides
    assert torch.equal(own["policy.head.blocks.1.mlp.down.weight"], src["dit.layers.1.mlp.down_proj.weight"].float())
    assert torch.equal(own["policy.head.out_mlp.0.weight"], src["action_output_layer.layers.0.weight"].float())
    assert torch.equal(own["policy.backbone.model.model.visual.blocks.1.attn.qkv.weight"],
                       src["vlm.model.visual.blocks.1.attn.qkv.weight"].float())
    # and every other released tensor too
    for name, t in src.items():
        assert torch.equal(own["policy." + K.to_xr0(name)[0]], t.float()), name
    # the round trip through the real stage: its state_dict exports back to the release bit for bit (bf16)
    ckpt = {"state_dict": {k: v.to(torch.bfloat16) for k, v in own.items()}, **read_export(tmp_path / "imp")[1]}
    torch.save(ckpt, tmp_path / "last.ckpt")
    assert main(["export", str(tmp_path / "last.ckpt"), str(tmp_path / "rel"), "--format", "release"]) == 0
    back = _release_tensors(tmp_path / "rel")
    assert set(back) == set(src) and all(torch.equal(back[k], src[k]) for k in src)


def test_import_does_not_fit_a_stage_of_other_sizes(release, tmp_path):
    from xr0.checkpoint import CheckpointMismatch

    import_release(release, tmp_path / "imp", robot_type="libero_all")
    with pytest.raises(CheckpointMismatch, match=r"head\.sink: checkpoint \(1, 16\) vs model \(1, 32\)"):
        conftest.tiny_post_train(tmp_path / "imp", ["stage.head.width=32", "stage.head.num_heads=4"])


def test_cli_export_format_release_and_alias(release, tmp_path, capsys):
    assert main(["import-release", str(release), str(tmp_path / "imp"), "--robot-type", "libero_all"]) == 0
    assert main(["export", str(tmp_path / "imp"), str(tmp_path / "a"), "--format", "release",
                 "--template", str(release)]) == 0
    assert main(["export-release", str(tmp_path / "imp"), str(tmp_path / "b")]) == 0
    a, b = _release_tensors(tmp_path / "a"), _release_tensors(tmp_path / "b")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    capsys.readouterr()
    assert main(["export", str(tmp_path / "imp"), str(tmp_path / "c"), "--template", str(release)]) == 2
    assert "--template only applies to --format release" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nope"), str(tmp_path / "d"), "--format", "release"]) == 2
