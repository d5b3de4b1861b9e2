"""Names as files and TensorBoard tags take them (slugs), and titles drawn with their proper names.

A label such as `xr0 tiny (stage 3, Λ)` is what a table or a title shows; a file or a tag gets its slug,
`xr0_tiny_stage_3_lambda`: ASCII letters, digits, `.`, `-` and `_` only, so shells, URLs and TensorBoard's tag
filter take it as it is. Titles keep the proper name and are drawn with a font that has Greek letters (Pillow's
default font draws Λ as an empty box).
"""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Any


def spell_out(text: str, sep: str = "") -> str:
    """Greek letters as their names (Λ → lambda, Δ → delta; `sep` on both sides), accents dropped (é → e); other
    text unchanged."""
    out = []
    for c in text:
        name = unicodedata.name(c, "")
        if name.startswith("GREEK") and " LETTER " in name:
            word = name.split(" LETTER ")[1].split()[0].lower()  # OMEGA WITH TONOS → omega
            out.append(sep + {"lamda": "lambda"}.get(word, word) + sep)  # Unicode spells it LAMDA
        else:
            out.append(unicodedata.normalize("NFKD", c))
    return "".join(out)


def slug(text: str) -> str:
    """A file- and tag-safe name: `xr0 tiny (stage 3, Λ)` → `xr0_tiny_stage_3_lambda`."""
    ascii_text = spell_out(text, sep="_").encode("ascii", "ignore").decode()
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", ascii_text)
    return re.sub(r"__+", "_", s).strip("._") or "_"  # never a hidden file, never `..`, never empty


def title_font(size: int = 11) -> Any:
    """Matplotlib's DejaVu Sans (Latin and Greek; matplotlib is a dependency), or None where it is missing."""
    import matplotlib
    from PIL import ImageFont

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    return ImageFont.truetype(str(path), size) if path.is_file() else None


def draw_title(draw: Any, xy: tuple[int, int], text: str, size: int = 11) -> None:
    """Draw `text` on a PIL ImageDraw with a font that has its letters, or spelled out with Pillow's default."""
    font = title_font(size)
    draw.text(xy, text if font is not None else spell_out(text), fill="black", font=font)
