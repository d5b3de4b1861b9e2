from pathlib import Path

import numpy as np
from xr0_embodiment_example import ExampleArm

import xr0.embodiments
from xr0.config import load_recipe, validate


def test_example_arm_conforms():
    xr0.embodiments.check(ExampleArm())


def test_registered_through_the_entry_point():
    emb = xr0.embodiments.get("example_arm")
    assert isinstance(emb, ExampleArm) and emb.action_mask().sum() == 7
    a = np.linspace(-1, 1, 7, dtype=np.float32)
    assert np.allclose(emb.from_canonical(emb.to_canonical(a)), a)


def test_recipe_using_it_validates():
    recipe = Path(__file__).parents[1] / "recipes" / "post_train_example_arm.yaml"
    tree = validate(load_recipe(recipe))
    assert tree["embodiment"] == "example_arm"
