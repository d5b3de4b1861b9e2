"""Stock recipes validate with a webdataset data card; a bad card or embodiment is reported with its key path."""
from pathlib import Path

import pytest

from xr0 import embodiments
from xr0.config import RecipeError, load_recipe, validate
from xr0.registry import EMBODIMENTS

RECIPES = Path(__file__).parents[2] / "recipes"


@pytest.fixture(scope="module")
def card(tmp_path_factory):
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
    from helpers import episodes

    from xr0.data import write_episodes

    return write_episodes(episodes(n_eps=1, steps=4, size=8), tmp_path_factory.mktemp("c"), "libero_franka", "lib",
                          progress=False)


def test_stock_recipe_with_a_card_validates(card):
    tree = validate(load_recipe(RECIPES / "post_train_libero.yaml", ["data.name=webdataset", f"data.card={card}"]))
    assert tree["data"]["name"] == "webdataset"


def test_missing_card_is_reported_with_its_path():
    with pytest.raises(RecipeError, match=r"data: card: data card 'no_such_card' not found"):
        validate(load_recipe(RECIPES / "post_train_libero.yaml", ["data.name=webdataset", "data.card=no_such_card"]))


def test_unknown_embodiment_in_a_card(card, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(card).read_text().replace("embodiment: libero_franka", "embodiment: libero_frank"))
    with pytest.raises(RecipeError, match=r"data: cards\[1\]: data card .*bad.yaml is invalid:\n.*embodiment: unknown "
                                          r"embodiment 'libero_frank'. Did you mean 'libero_franka'"):
        validate(load_recipe(RECIPES / "post_train_libero.yaml",
                             ["data.card=null", f"data.cards=[{card},{bad}]", "data.weights=[1,1]"]))


def test_card_with_missing_keys_and_shards(card, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nshards: gone-{000..003}.tar\nembodiment: libero_franka\nfpss: 30\n")
    with pytest.raises(RecipeError) as err:
        validate(load_recipe(RECIPES / "post_train_libero.yaml", ["data.name=webdataset", f"data.card={bad}"]))
    msg = str(err.value)
    assert "fpss: unknown key. Did you mean 'fps'?" in msg and "chunk: required" in msg and "stats: required" in msg


def test_chunk_longer_than_stored(card):
    with pytest.raises(RecipeError, match=r"data: chunk: 30 > the 10 future actions stored"):
        validate(load_recipe(RECIPES / "post_train_libero.yaml",
                             ["data.name=webdataset", f"data.card={card}", "data.chunk=30"]))


@pytest.mark.parametrize("name", ["libero_franka", "calvin", "simpler_widowx", "bimanual_30hz"])
def test_stock_embodiments_conform(name):
    embodiments.check(embodiments.get(name))
    assert name in EMBODIMENTS
