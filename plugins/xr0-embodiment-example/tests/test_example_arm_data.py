"""The plugin's data card validates, and one batch of its shards goes through the xr0 pipeline."""
from pathlib import Path

import numpy as np

import xr0.embodiments
from xr0.config import load_recipe, validate
from xr0.data import load_card, load_stats
from xr0.data.module import WebDatasetData

CARDS = Path(__file__).parents[1] / "data_cards"
RECIPE = Path(__file__).parents[1] / "recipes" / "post_train_example_arm.yaml"


def test_card_validates_and_is_found_by_name():
    card = load_card("example_arm_demo")  # by name: the data_cards/ folder beside an installed plugin
    assert card.path == (CARDS / "example_arm_demo.yaml").resolve()
    assert card.embodiment == "example_arm" and card.cameras == ("scene", "wrist") and card.chunk == 30


def test_one_batch_through_the_pipeline():
    dm = WebDatasetData(card="example_arm_demo", batch_size=4, num_workers=0, image_size=24, chunk=30)
    batch = dm.account(next(iter(dm.train_dataloader())))
    emb = xr0.embodiments.get("example_arm")
    assert batch["images"].shape == (4, 2, 3, 24, 24) and batch["image_mask"].all()
    assert batch["state"].shape == (4, 32) and batch["actions"].shape == (4, 30, 32)
    assert batch["action_mask"][0].tolist() == emb.action_mask().tolist()
    assert batch["embodiment"] == ["example_arm"] * 4
    assert batch["instruction"][0] == "wave the arm, then close the gripper"
    # the episode has 24 steps, so no sample's 30-step chunk is complete
    assert not batch["chunk_mask"][:, -1].any()
    stats = load_stats(load_card("example_arm_demo").stats_path)
    mean, std = stats["actions"]["mean"][:30], np.where(stats["actions"]["std"][:30] < 1e-6, 1, stats["actions"]["std"][:30])
    rel = emb.from_canonical(batch["actions"][0].numpy() * std + mean)
    assert np.all(np.abs(rel[batch["chunk_mask"][0].numpy(), :6]) < 1.0)  # joint deltas of a 0.5-amplitude sine
    assert dm.stats is not None and dm.embodiment == "example_arm" and dm.skipped == 0


def test_plugin_recipe_with_the_card_validates():
    tree = validate(load_recipe(RECIPE, ["data.name=webdataset", "data.card=example_arm_demo", "data.chunk=30"]))
    assert tree["data"]["card"] == "example_arm_demo"
