"""One source per fact: `xr0 validate` refuses recipes whose chunk lengths or embodiments disagree."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "data"))
from helpers import episodes

from xr0.config import RecipeError, load_recipe, validate
from xr0.data import write_episodes


def _validate(*overrides):
    return validate(load_recipe("recipes/tiny/stage2.yaml", list(overrides)))


def test_head_and_data_chunks_must_agree():
    _validate("_chunk=3")  # one source, interpolated: fine
    with pytest.raises(RecipeError, match="stage.head.chunk is 4 but data.chunk is 6"):
        _validate("data.chunk=6")


def test_the_embodiment_is_named_once(tmp_path):
    with pytest.raises(RecipeError, match="embodiment is 'calvin' but data.embodiment is 'libero_franka'"):
        _validate("embodiment=calvin", "data.embodiment=libero_franka")
    card = write_episodes(episodes(n_eps=1, steps=6, size=8), tmp_path, "libero_franka", "r", progress=False)
    data = f"data={{name: webdataset, card: {card}, chunk: 4}}"
    _validate("embodiment=libero_franka", data)
    with pytest.raises(RecipeError, match="embodiment is 'calvin' but data card 'r' holds 'libero_franka' data"):
        _validate("embodiment=calvin", data)
    with pytest.raises(RecipeError, match=r"chunk: 12 > the 10 future actions stored per sample in card 'r'"):
        _validate("embodiment=libero_franka", "_chunk=12", data.replace("chunk: 4", "chunk: 12"))
