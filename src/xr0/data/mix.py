"""The vision-language : robot ratio of stage-1 co-training, held by construction (report §2.2.1: VL:robot = 1:6).

A recipe gives the ratio as `data.vl_ratio: "1:6"` (VL samples : robot samples) or as a number (VL samples per
robot sample, 1/6 ≈ 0.1667). `interleave` then takes sample i from the VL stream exactly when ⌊(i+1)·f⌋ > ⌊i·f⌋,
f = vl / (vl + robot): every window of n samples holds ⌊n·f⌋ or ⌈n·f⌉ VL samples, so each batch carries the ratio
as closely as its size allows and the running total is exact to one sample — not a random draw per sample.
"""
from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from typing import Any


def parse_vl_ratio(value: float | str | None) -> Fraction | None:
    """`"1:6"` → 1/6, `0.25` → 1/4 (VL samples per robot sample); None stays None. Raises ValueError saying how to
    write it."""
    if value is None:
        return None
    try:
        if isinstance(value, str) and ":" in value:
            vl, robot = (Fraction(p.strip()) for p in value.split(":", 1))
            ratio = vl / robot
        else:
            ratio = Fraction(value).limit_denominator(10_000)
    except (ValueError, ZeroDivisionError, TypeError):
        raise ValueError(f"vl_ratio: {value!r} is not a ratio; write VL:robot as \"1:6\" (the paper) or a number of VL "
                         f"samples per robot sample (0.1667)") from None
    if ratio < 0:
        raise ValueError(f"vl_ratio: {value!r} is negative; write VL:robot as \"1:6\" (0 turns VL off)")
    return ratio


def vl_count(index: int, batch_size: int, ratio: Fraction) -> int:
    """VL samples to add to robot batch number `index` (of `batch_size` robot samples) so that after k batches
    exactly ⌊k·batch_size·ratio⌋ VL samples have been drawn."""
    per = batch_size * ratio
    return int((index + 1) * per) - int(index * per)


def interleave(robot: Iterator[Any], vl: Iterator[Any], ratio: Fraction) -> Iterator[Any]:
    """One stream of samples from a robot stream and a VL stream at VL:robot = ratio (see the module docstring)."""
    f = ratio / (1 + ratio)  # VL fraction of all samples
    i = 0
    while True:
        try:
            yield next(vl) if int((i + 1) * f) > int(i * f) else next(robot)
        except StopIteration:  # a finite source ran out: so does the mixture
            return
        i += 1
