"""File and tag names are slugs; titles keep the proper name and draw its Greek letters."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from xr0.names import draw_title, slug, spell_out


def test_slugs_are_ascii_without_spaces_and_keep_what_was_safe():
    assert slug("xr0 tiny (stage 3, Λ)") == "xr0_tiny_stage_3_lambda"
    assert slug("Δt_c=2 café") == "delta_t_c_2_cafe"
    assert slug("last.ckpt_rtc_d2_reach-v3_ep0") == "last.ckpt_rtc_d2_reach-v3_ep0"
    assert slug("../up") == "up" and slug("日本") == "_"  # never a path out, never empty
    assert spell_out("stage 3, Λ") == "stage 3, lambda"  # a title without a Greek font


def _drawn(text: str) -> np.ndarray:
    img = Image.new("L", (40, 16), 255)
    draw_title(ImageDraw.Draw(img), (2, 0), text)
    return np.asarray(img)


def test_a_title_draws_lambda_as_a_letter_not_an_empty_box():
    box = _drawn("\ue000")  # a private-use code point: no font has it, so it is the missing-glyph box
    assert (_drawn("Λ") < 128).any() and not np.array_equal(_drawn("Λ"), box)
    assert not np.array_equal(_drawn("Λ"), _drawn("A"))
