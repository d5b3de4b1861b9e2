"""Points of the post-training ablation grid, and the recipe overrides that train each.

Axes (each a plain stage-3 recipe key, so any stage-3 recipe can be ablated): training `mode` (sync | async:
`stage.mode`, with `stage.prefix_sampler`), `mask` (causal | lambda with its window: `stage.mask`), `rope_offset`
(`stage.head.rope_offset`), `reweight` (off | batch | sample: `stage.reweight`; true/false are batch/off) and
`prefix_dropout` (`stage.mask.prefix_dropout`). The named variants are points of this grid: the recipe's own
`_variants` table when it has one (the recipe is the source of truth), else BUILTIN.

A point trains from its own copy of the recipe with `stage.mask` replaced as a whole (`point_recipe`), plus dotlist
overrides for the scalar keys: a dotlist override merges a mapping into the existing one, so `stage.mask={name:
causal}` over a Λ mask would keep its `window` and fail validation.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

AXES = ("mode", "mask", "rope_offset", "reweight", "prefix_dropout")
REWEIGHT = ("off", "batch", "sample")
ORDER = {"mode": ("sync", "async"), "reweight": REWEIGHT, "prefix_dropout": ("off", "on")}  # effect = later − earlier


@dataclass(frozen=True)
class Point:
    """One post-training configuration; `window` belongs to the mask axis (lambda(w))."""

    mode: str = "async"
    mask: str = "lambda"
    window: int = 4
    rope_offset: int = 10
    reweight: str = "batch"
    prefix_dropout: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.mode not in ("sync", "async"):
            problems.append(f"mode {self.mode!r}: use sync or async")
        if self.mask not in ("causal", "lambda"):
            problems.append(f"mask {self.mask!r}: use causal or lambda")
        if self.reweight not in REWEIGHT:
            problems.append(f"reweight {self.reweight!r}: use one of {list(REWEIGHT)}")
        if self.rope_offset < 0 or self.window < 0:
            problems.append("rope_offset and window must be >= 0")
        if self.mode == "sync" and (self.reweight != "off" or self.prefix_dropout):
            problems.append("a sync point trains without a prefix: reweight must be off and prefix_dropout off")
        if problems:
            raise ValueError("ablation point: " + "; ".join(problems))

    def level(self, axis: str) -> str:
        """The point's level on an axis, as tables print it."""
        if axis == "mask":
            return f"lambda(w={self.window})" if self.mask == "lambda" else "causal"
        if axis == "prefix_dropout":
            return "on" if self.prefix_dropout else "off"
        return str(getattr(self, axis))

    def key(self) -> str:
        """A file-system-safe id, e.g. `async-lambda4-o10-rw_batch` (`+pd`: prefix dropout)."""
        mask = f"lambda{self.window}" if self.mask == "lambda" else "causal"
        return f"{self.mode}-{mask}-o{self.rope_offset}-rw_{self.reweight}" + ("+pd" if self.prefix_dropout else "")

    def mask_node(self) -> dict[str, Any]:
        """The whole `stage.mask` of this point."""
        node: dict[str, Any] = {"name": self.mask}
        if self.mask == "lambda":
            node["window"] = self.window
        node["prefix_dropout"] = self.prefix_dropout
        return node

    def stage_values(self, prefix_sampler: str = "{name: prefix}") -> dict[str, Any]:
        """The scalar axes as stage keys (the mask is `mask_node`)."""
        import yaml

        return {"stage.mode": self.mode, "stage.head.rope_offset": self.rope_offset, "stage.reweight": self.reweight,
                "stage.prefix_sampler": None if self.mode == "sync" else yaml.safe_load(prefix_sampler)}

    def overrides(self, prefix_sampler: str = "{name: prefix}") -> list[str]:
        """Stage-3 overrides of the scalar axes (explicit on each, whatever `_variant` says); the mask comes from
        `point_recipe`."""
        rw = {"off": "false", "batch": "true"}.get(self.reweight, self.reweight)  # booleans load before and after
        return [f"stage.mode={self.mode}", f"stage.head.rope_offset={self.rope_offset}", f"stage.reweight={rw}",
                f"stage.prefix_sampler={'null' if self.mode == 'sync' else prefix_sampler}"]


BUILTIN = {
    "sync": Point(mode="sync", mask="causal", rope_offset=0, reweight="off"),
    "training_rtc": Point(mask="causal", rope_offset=0, reweight="off"),  # Black et al. 2025
    "lambda": Point(),  # report §2.2.2: Λ mask, RoPE offset 10, re-weighting
    "lambda_no_offset": Point(rope_offset=0),
    "lambda_no_reweight": Point(reweight="off"),
    "causal_offset": Point(mask="causal", reweight="off"),
}


def point_recipe(recipe: str, point: Point, path: Path) -> str:
    """Write `recipe` (its `inherit` chain merged, interpolations kept) with `stage.mask` replaced by the point's, to
    `path`; returns the path. Train it with `point.overrides()`."""
    from omegaconf import OmegaConf

    from xr0.config import load_recipe
    from xr0.fault import atomic_write

    cfg = load_recipe(recipe)
    OmegaConf.update(cfg, "stage.mask", point.mask_node(), merge=False)
    for key, value in point.stage_values().items():
        OmegaConf.update(cfg, key, value, merge=False)
    text = OmegaConf.to_yaml(cfg)
    if "_variants" in cfg:  # every axis is now a plain key: the table selects nothing and goes (validate says so)
        cfg.pop("_variants")
        variant = cfg.pop("_variant", None)
        text = OmegaConf.to_yaml(cfg).replace("${_variant}", point.key() if variant is not None else "")
    text = f"# {point.key()}: written by `xr0 ablate` from {Path(recipe).resolve()}\n" + text
    atomic_write(path, lambda f: f.write(text.encode()))
    return str(path)


def _reweight_level(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "batch" if value else "off"
    return str(value)


def from_entry(entry: dict[str, Any], default_mode: str = "async") -> Point:
    """A recipe `_variants` entry {mode, mask, rope_offset, reweight, prefix_dropout, prefix_sampler} → a Point."""
    mask = dict(entry.get("mask") or {"name": "causal"})
    dropout = entry.get("prefix_dropout", mask.get("prefix_dropout", False))
    return Point(mode=str(entry.get("mode", default_mode)), mask=str(mask.get("name", "causal")),
                 window=int(mask.get("window", 4)), rope_offset=int(entry.get("rope_offset", 10)),
                 reweight=_reweight_level(entry.get("reweight", False)), prefix_dropout=bool(dropout))


def recipe_points(recipe: str) -> tuple[dict[str, Point], str]:
    """The named points (the recipe's `_variants` table over BUILTIN) and the prefix sampler its async variants use."""
    from omegaconf import OmegaConf

    from xr0.config import load_recipe

    cfg = load_recipe(recipe)
    table = OmegaConf.to_container(cfg["_variants"], resolve=False) if "_variants" in cfg else {}
    stage_mode = cfg.get("stage", {}).get("mode", "async")
    default_mode = stage_mode if stage_mode in ("sync", "async") else "async"  # an interpolation: the entries say
    points, sampler = dict(BUILTIN), "{name: prefix}"
    for name, entry in (table or {}).items():
        if not isinstance(entry, dict):
            continue
        try:
            points[str(name)] = from_entry(entry, default_mode)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{recipe}: _variants.{name}: {exc}") from None
        if entry.get("prefix_sampler"):
            sampler = OmegaConf.to_yaml(entry["prefix_sampler"]).strip().replace("\n", ", ")
            sampler = "{" + sampler + "}" if not sampler.startswith("{") else sampler
    return points, sampler


def parse_assignment(text: str) -> dict[str, list[str]]:
    """`mask=causal,lambda rope_offset=0,10`-style text (one axis per item) → {axis: levels}."""
    out: dict[str, list[str]] = {}
    for item in text.split():
        axis, sep, levels = item.partition("=")
        if not sep or axis not in AXES + ("window",):
            raise ValueError(f"'{item}': expected AXIS=LEVEL[,LEVEL...] with AXIS one of {', '.join(AXES)}, window")
        out[axis] = [v for v in levels.split(",") if v]
    return out


def with_levels(base: Point, assignment: dict[str, str]) -> Point:
    """`base` with some axes set from text levels (`mask=lambda4` also sets the window)."""
    kw: dict[str, Any] = {}
    for axis, level in assignment.items():
        level = str(level).strip()
        if axis == "mask" and level.startswith("lambda") and level[6:].strip("()w=").isdigit():
            kw["mask"], kw["window"] = "lambda", int(level[6:].strip("()w="))
        elif axis in ("rope_offset", "window"):
            kw[axis] = int(level)
        elif axis == "prefix_dropout":
            kw[axis] = level.lower() in ("on", "true", "1", "yes")
        elif axis == "reweight":
            kw[axis] = _reweight_level({"true": True, "false": False}.get(level.lower(), level))
        else:
            kw[axis] = level
    if kw.get("mode") == "sync":  # a sync point has no prefix: nothing to re-weight or drop
        kw.setdefault("reweight", "off")
        kw.setdefault("prefix_dropout", False)
    return replace(base, **kw)


def factorial(base: Point, axes: dict[str, list[str]]) -> list[Point]:
    """Every combination of the given levels, the other axes as in `base` (combinations a sync point cannot train,
    such as sync with re-weighting, are left out)."""
    names = list(axes)
    out = []
    for combo in itertools.product(*(axes[a] for a in names)):
        try:
            out.append(with_levels(base, dict(zip(names, combo))))
        except ValueError:
            continue
    return out


def select(recipe: str, variants: list[str], factorial_axes: str | None, points: list[str], base: str = "lambda"
           ) -> tuple[dict[str, Point], str]:
    """The chosen points, named (variant name, or the point's key), without duplicates, and the async sampler."""
    named, sampler = recipe_points(recipe)
    unknown = [v for v in variants if v not in named]
    if unknown:
        raise ValueError(f"unknown variant {unknown[0]!r}; known: {', '.join(named)}")
    if base not in named:
        raise ValueError(f"--base {base!r}: not a variant ({', '.join(named)})")
    chosen: list[Point] = [named[v] for v in variants]
    if factorial_axes:
        chosen += factorial(named[base], parse_assignment(factorial_axes))
    for text in points:
        chosen.append(with_levels(named[base], {a: ls[0] for a, ls in parse_assignment(text.replace(",", " ")
                                                                                          ).items()}))
    names_of = {p: n for n, p in reversed(list(named.items()))}  # the first name a point has in the table
    out: dict[str, Point] = {}
    for p in chosen:
        out.setdefault(names_of.get(p, p.key()), p)
    if not out:
        raise ValueError("no ablation point chosen: pass --variants, --factorial or --point")
    return out, sampler


def differs_only_in(a: Point, b: Point, axis: str) -> bool:
    """Whether two points differ on `axis` and nowhere else (the mask axis includes its window)."""
    fa = {f.name: getattr(a, f.name) for f in fields(Point)}
    fb = {f.name: getattr(b, f.name) for f in fields(Point)}
    own = {"mask", "window"} if axis == "mask" else {axis}
    return any(fa[k] != fb[k] for k in own) and all(fa[k] == fb[k] for k in fa if k not in own)
