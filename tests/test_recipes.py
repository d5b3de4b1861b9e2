"""Every YAML under recipes/ loads and validates; every stock recipe runs a few steps on CPU with a tiny
config given as dotlist overrides (the same overrides a user can type after `xr0 fit RECIPE`).

Recipes that name a stock data card (data_cards/, shards written by `xr0 data from-lerobot`) are validated
twice here, where nothing is imported: as they are, which must fail with the card's fill command, and with
synthetic data swapped in, which must pass. tests/data/test_lerobot_cards.py imports each card's layout and
trains its recipe for real."""
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from xr0.config import RECIPES_DIR, RecipeError, load_recipe, resolve, validate
from xr0.data import load_card

# a file or folder whose name starts with `_` is a base to inherit, not a recipe
RECIPES = sorted(p for p in RECIPES_DIR.rglob("*.yaml")
                 if not any(part.startswith("_") for part in p.relative_to(RECIPES_DIR).parts))
TINY_RECIPES = [p for p in RECIPES if p.parent.name == "tiny"]
# templates a lab completes (???) or that need an imported release: validated with their blanks filled, not run
NEEDS_INPUT = {p for p in RECIPES if "???" in p.read_text() or "_release" in p.read_text()}
STOCK = [p for p in RECIPES if p not in TINY_RECIPES and p not in NEEDS_INPUT]

TINY_DATA = "{name: synthetic, chunk: '${_chunk}', batch_size: 2}"  # the recipe's own chunk length
SYNTHETIC = [f"_tiny_data={TINY_DATA}", "data=${_tiny_data}"]  # replaces the data node (a dict would merge)


def stock_card(path: Path):
    """The stock card a recipe trains on, if its shards come from an import (a card with a fill_command)."""
    data = resolve(load_recipe(path, fill_blanks(path))).get("data") or {}
    if isinstance(data, dict) and data.get("name") == "webdataset" and isinstance(data.get("card"), str):
        card = load_card(data["card"], check_files=False)
        return card if card.fill_command else None
    return None


def fill_blanks(path: Path) -> list[str]:
    """Overrides for `???` values of template recipes."""
    raw = load_recipe(path)  # with its inherit chain
    out = []
    keys = set(raw.keys())  # `in` is False for a ??? value, keys() lists it
    if "data" in keys and OmegaConf.is_missing(raw, "data"):
        out.append(f"data={TINY_DATA}")
    if "embodiment" in keys and OmegaConf.is_missing(raw, "embodiment"):
        out.append("embodiment=null")
    return out


def tiny_overrides(tree: dict, out_dir: Path) -> list[str]:
    """Shrink a stock recipe to CPU size: tiny VLM, 2-layer DiT, synthetic data, 2 steps, no init_from."""
    stage = tree["stage"]["name"]
    family = tree["stage"]["backbone"]["name"]  # the tiny model of the recipe's own VLM family
    ov = ["_chunk=4", f"_tiny_vlm={{name: {family}, tiny: {{}}}}", "stage.backbone=${_tiny_vlm}", f"_tiny_data={TINY_DATA}",
          "data=${_tiny_data}", "stage.init_from=null", "stage.plot_every_n_steps=1",
          "trainer.max_steps=2", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.num_nodes=1",
          "trainer.precision=32", "trainer.strategy=auto", "trainer.accumulate_grad_batches=1",
          "trainer.enable_progress_bar=false", "run.checkpoint_every_n_steps=2", f"run.out_dir={out_dir}"]
    if stage == "vlm_cotrain":
        ov += ["stage.head.num_candidates=2"]
    else:
        ov += ["stage.head.width=32", "stage.head.depth=2", "stage.head.head_dim=32"]
    return ov


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(RECIPES_DIR)))
def test_recipe_validates(path, tmp_path, monkeypatch):
    monkeypatch.setenv("XR0_DATA", str(tmp_path))  # an empty data folder: nothing imported
    blanks = fill_blanks(path)
    card = stock_card(path)
    if card is not None:
        with pytest.raises(RecipeError) as err:
            validate(load_recipe(path, blanks))
        msg = str(err.value)
        assert f"data: card: data card {card.path}" in msg
        assert f"no shard files match {tmp_path}/{card.name}/{card.name}-*.tar" in msg
        assert f"write them with `{card.fill_command}`" in msg
        blanks += SYNTHETIC
    tree = validate(load_recipe(path, blanks))
    assert tree["stage"]["name"] in {"vlm_cotrain", "dit_flow", "post_train"}
    assert tree.get("description"), f"{path}: give the recipe a one-line description"


def test_ablation_pair_is_one_flag_apart():
    lam = resolve(load_recipe(RECIPES_DIR / "post_train_async_lambda.yaml"))
    rtc = resolve(load_recipe(RECIPES_DIR / "post_train_training_rtc.yaml"))
    assert lam["stage"]["mode"] == rtc["stage"]["mode"] == "async"
    assert lam["stage"]["mask"]["name"] == "lambda" and rtc["stage"]["mask"]["name"] == "causal"
    assert (lam["stage"]["head"]["rope_offset"], rtc["stage"]["head"]["rope_offset"]) == (10, 0)
    assert (lam["stage"]["reweight"], rtc["stage"]["reweight"]) == ("batch", False)  # false = off
    flipped = resolve(load_recipe(RECIPES_DIR / "post_train_async_lambda.yaml", ["_variant=training_rtc"]))
    assert flipped["stage"] == rtc["stage"]


METAWORLD_STAGE3 = RECIPES_DIR.parent / "plugins" / "xr0-metaworld" / "recipes" / "metaworld_tiny" / "stage3.yaml"
VARIANT_RECIPES = [RECIPES_DIR / "post_train_async_lambda.yaml", RECIPES_DIR / "tiny" / "stage3.yaml", METAWORLD_STAGE3]
# the named variants as points of the grid: (mode, mask, window, rope_offset, reweight, prefix_dropout)
GRID_POINTS = {
    "sync": ("sync", "causal", None, 0, "off", False),
    "training_rtc": ("async", "causal", None, 0, "off", False),
    "lambda": ("async", "lambda", 4, 10, "batch", False),
    "lambda_no_offset": ("async", "lambda", 4, 0, "batch", False),
    "lambda_no_reweight": ("async", "lambda", 4, 10, "off", False),
    "causal_offset": ("async", "causal", None, 10, "off", False),
}


def _point(stage: dict) -> tuple:
    from xr0.policy import reweight_mode

    mask = stage["mask"]
    return (stage["mode"], mask["name"], mask.get("window"), stage["head"]["rope_offset"],
            reweight_mode(stage["reweight"]), mask.get("prefix_dropout", False))


@pytest.mark.parametrize("path", VARIANT_RECIPES, ids=lambda p: p.parent.name + "/" + p.name)
def test_named_variants_are_points_of_the_grid(path):
    for name, point in GRID_POINTS.items():
        stage = resolve(load_recipe(path, [f"_variant={name}"]))["stage"]
        assert _point(stage) == point, name
        assert (stage["prefix_sampler"] is None) == (point[0] == "sync")
    # each axis is its own key: set explicitly, it wins over the variant, typed in any order
    stage = resolve(load_recipe(path, ["stage.mask.prefix_dropout=true", "stage.reweight=sample",
                                       "_variant=causal_offset"]))["stage"]
    assert _point(stage) == ("async", "causal", None, 10, "sample", True)


def test_a_variant_that_selects_nothing_is_a_one_line_validate_error(tmp_path, capsys):
    from xr0.cli import main

    tiny3, tiny2 = RECIPES_DIR / "tiny" / "stage3.yaml", RECIPES_DIR / "tiny" / "stage2.yaml"
    nothing = tmp_path / "no_reader.yaml"  # a table, but no stage key reads it
    nothing.write_text(f"inherit: {tiny2}\n_variant: a\n_variants: {{a: {{mode: sync}}, b: {{mode: async}}}}\n")
    short = tmp_path / "short_row.yaml"  # a row without a key the stage reads
    short.write_text(f"inherit: {tiny3}\n_variants: {{odd: {{mode: async, mask: {{name: causal}}}}}}\n")
    cases = [
        (tiny3, ["_variant=lambda_typo"], ("_variant: 'lambda_typo' is not a variant of this recipe; choose one of "
                                           "sync, training_rtc, lambda, lambda_no_offset, lambda_no_reweight, "
                                           "causal_offset")),
        (tiny2, ["_variant=training_rtc"], "_variant: 'training_rtc' selects nothing: this recipe has no `_variants` table"),
        (tiny3, ["_variant="], "_variant: unset, but stage.mode reads `_variants.${_variant}`"),
        (nothing, [], "_variant: 'a' selects nothing: no stage key reads"),
        (short, [], "_variants.odd: has no 'rope_offset', which stage.head.rope_offset reads"),
    ]
    for recipe, sets, message in cases:
        assert main(["validate", str(recipe)] + [a for s in sets for a in ("--set", s)]) == 1
        out = capsys.readouterr().out.strip().splitlines()
        assert out[0].startswith(f"INVALID {recipe}: {message}"), (out, message)
        assert len(out) == (3 if recipe == short else 1)  # one line per problem (short_row: 3 keys missing)
    assert main(["validate", str(tiny3), "--set", "_variant=training_rtc"]) == 0
    assert capsys.readouterr().out.strip() == f"ok      {tiny3}"


def test_paper_chunk_sizes():
    chunks = {name: resolve(load_recipe(RECIPES_DIR / f"{name}.yaml"))["stage"]["head"]["chunk"]
              for name in ("post_train_libero", "post_train_calvin", "post_train_simpler", "post_train_bimanual_30hz")}
    assert chunks == {"post_train_libero": 10, "post_train_calvin": 10, "post_train_simpler": 4,
                      "post_train_bimanual_30hz": 30}


@pytest.mark.parametrize("path", STOCK, ids=lambda p: p.name)
def test_stock_recipe_runs_tiny(path, tmp_path):
    from xr0.run import fit

    import yaml

    tree = validate(load_recipe(path, SYNTHETIC if stock_card(path) else []))
    out = fit(str(path), tiny_overrides(tree, tmp_path / "run"))
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 and ckpt["xr0_stage"] == tree["stage"]["name"]
    assert ckpt["optimizer_states"][0]["state"], "the optimiser took its steps"
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert saved == ckpt["xr0_recipe"]  # the recipe beside the checkpoints is the one inside them
    family = tree["stage"]["backbone"]["name"]  # the tiny model of the recipe's own VLM family
    assert saved["stage"]["backbone"] == {"name": family, "tiny": {}} and saved["trainer"]["max_steps"] == 2
    if tree["stage"]["name"] != "vlm_cotrain":  # flow stages: the DiT trained is the tiny one, on the recipe's chunk
        assert saved["stage"]["head"]["depth"] == 2 and saved["stage"]["head"]["chunk"] == 4  # `_chunk=4`
        assert ckpt["xr0_processor"]["chunk"] == 4  # the processor serving will use is the trained one


def test_tiny_chain_1_2_3(tmp_path):
    """The `make demo` chain: stage 1 → stage 2 (init_from) → stage 3 (init_from), then load_policy."""
    from xr0.checkpoint import load_policy
    from xr0.run import fit

    common = ["trainer.max_steps=3", "run.checkpoint_every_n_steps=3"]
    s1 = fit(str(RECIPES_DIR / "tiny/stage1.yaml"), common + [f"run.out_dir={tmp_path}/s1"])
    s2 = fit(str(RECIPES_DIR / "tiny/stage2.yaml"),
             common + [f"run.out_dir={tmp_path}/s2", f"stage.init_from={s1}/checkpoints/last.ckpt"])
    s3 = fit(str(RECIPES_DIR / "tiny/stage3.yaml"),
             common + [f"run.out_dir={tmp_path}/s3", f"stage.init_from={s2}/checkpoints/last.ckpt"])
    loaded = load_policy(s3 / "checkpoints" / "last.ckpt")
    assert loaded.stage == "post_train" and loaded.recipe["stage"]["mode"] == "async"
    assert loaded.stats is not None
    ck2 = torch.load(s2 / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    ck1 = torch.load(s1 / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    vlm1 = {k: v for k, v in ck1.items() if k.startswith("backbone.")}
    assert vlm1 and all(torch.equal(ck2[f"policy.{k}"], v) for k, v in vlm1.items())  # stage 2: VLM untouched


METAWORLD = RECIPES_DIR.parent / "plugins" / "xr0-metaworld" / "recipes" / "metaworld_tiny"


def test_stage2_pretrains_without_the_rope_offset():
    """The released base layout (docs/method.md §2.2); an offset-10 arm overrides it (stage.head.rope_offset=10)."""
    for path in (RECIPES_DIR / "pretrain_stage2.yaml", RECIPES_DIR / "tiny" / "stage2.yaml", METAWORLD / "stage2.yaml"):
        assert resolve(load_recipe(path))["stage"]["head"]["rope_offset"] == 0, path


def test_stage1_recipes_co_train_at_one_to_six():
    from fractions import Fraction

    from xr0.data.mix import parse_vl_ratio

    for path in (RECIPES_DIR / "pretrain_stage1.yaml", RECIPES_DIR / "tiny" / "stage1.yaml", METAWORLD / "stage1.yaml"):
        tree = resolve(load_recipe(path))
        assert parse_vl_ratio(tree["data"]["vl_ratio"]) == Fraction(1, 6), path
        assert tree["stage"].get("vl_weight", 1.0) == 1.0  # one VL sample weighs as one robot sample
