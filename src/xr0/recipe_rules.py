"""Rules across a recipe's components, checked by `xr0 validate` once each component is well-formed: one source
per fact. A recipe names its chunk length and its embodiment once (the stock recipes use `_chunk` and
`embodiment:` and interpolate them); these checks refuse a recipe where two places disagree, since the checkpoint
would carry one value while the data or the model used the other."""
from __future__ import annotations

import re
from typing import Any


def _name(node: Any) -> str | None:
    return node.get("name") if isinstance(node, dict) else node


def cross_checks(tree: dict[str, Any]) -> list[str]:
    from xr0.processor import recipe_problems

    problems = list(recipe_problems(tree))
    stage, data = tree.get("stage") or {}, tree.get("data") or {}
    head = stage.get("head") if isinstance(stage, dict) else None
    if not isinstance(data, dict):
        return problems
    h_chunk = head.get("chunk") if isinstance(head, dict) else None
    d_chunk = data.get("chunk")
    if h_chunk is not None and d_chunk is not None and h_chunk != d_chunk:
        problems.append(f"stage.head.chunk is {h_chunk} but data.chunk is {d_chunk}: the model and its data must "
                        f"agree on the chunk length (set one `_chunk` and interpolate it into both)")
    emb, d_emb = _name(tree.get("embodiment")), data.get("embodiment")
    if emb is not None and d_emb is not None and emb != d_emb:
        problems.append(f"embodiment is '{emb}' but data.embodiment is '{d_emb}': name the robot once "
                        f"(data.embodiment: ${{embodiment}})")
    cards = [data["card"]] if data.get("card") else list(data.get("cards") or [])
    if emb is not None and cards:
        from xr0.data.cards import CardError, load_card

        for ref in cards:
            try:
                card = load_card(ref, check_files=False)
            except CardError:
                continue  # the data builder's own check names it
            if card.kind == "robot" and card.embodiment != emb:
                problems.append(f"embodiment is '{emb}' but data card '{card.name}' holds '{card.embodiment}' data: "
                                f"the checkpoint would name one robot and carry the other's statistics")
            elif card.kind == "robot" and h_chunk is not None and card.chunk is not None and h_chunk > card.chunk:
                problems.append(f"stage.head.chunk {h_chunk} > the {card.chunk} future actions card '{card.name}' "
                                f"stores per sample")
    return problems


# ---------------------------------------------------------------- ablation variants
# A stage-3 recipe may list points of the ablation grid in `_variants` (name -> the axes below) and read the one
# `_variant` names into its stage keys, e.g. `mode: ${_variants.${_variant}.mode}` (recipes/tiny/stage3.yaml).
VARIANT_AXES = ("mode", "mask", "rope_offset", "reweight", "prefix_dropout", "prefix_sampler")
_READS = re.compile(r"\$\{_variants\.\$\{_variant\}\.([A-Za-z0-9_]+)")


def _variant_reads(node: Any, path: str, out: dict[str, str]) -> None:
    """Which row fields the stage reads through `${_variants.${_variant}.FIELD}`: field -> first YAML path."""
    if isinstance(node, dict):
        for k, v in node.items():
            _variant_reads(v, f"{path}.{k}", out)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _variant_reads(v, f"{path}[{i}]", out)
    elif isinstance(node, str):
        for field in _READS.findall(node):
            out.setdefault(field, path)


def variant_problems(cfg: Any) -> list[str]:
    """A `_variant` that selects nothing, or names no row of `_variants`, is an error (one line each), checked on
    the loaded recipe before interpolation, where an unknown name would only say "interpolation failed"."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    keys = set(cfg.keys())
    try:
        variant = cfg.get("_variant") if "_variant" in keys else None
    except OmegaConfBaseException:  # ??? or a broken interpolation: the recipe names no variant yet
        variant = None
    stage = cfg.get("stage") if "stage" in keys else None
    reads: dict[str, str] = {}
    if isinstance(stage, DictConfig):
        _variant_reads(OmegaConf.to_container(stage, resolve=False), "stage", reads)
    table = cfg.get("_variants") if "_variants" in keys else None
    names = list(table.keys()) if isinstance(table, DictConfig) else []
    choose = f"choose one of {', '.join(map(str, names))}" if names else ""
    if variant is None:
        if reads:
            first = next(iter(reads.values()))
            return [f"_variant: unset, but {first} reads `_variants.${{_variant}}`; set _variant=NAME ({choose})"]
        return []
    if not isinstance(variant, str) or not variant:
        return [f"_variant: expected the name of a variant, got {variant!r}" + (f"; {choose}" if names else "")]
    if not names:
        return [(f"_variant: '{variant}' selects nothing: this recipe has no `_variants` table; set the axes as "
                 f"stage keys instead (stage.mode, stage.mask, stage.head.rope_offset, stage.reweight, "
                 f"stage.mask.prefix_dropout, stage.prefix_sampler)")]
    if variant not in names:
        return [f"_variant: '{variant}' is not a variant of this recipe; {choose}"]
    if not reads:
        return [(f"_variant: '{variant}' selects nothing: no stage key reads `${{_variants.${{_variant}}.…}}` in "
                 f"this recipe, so every variant would train the same model")]
    problems = []
    for name in names:
        row = table.get(name)
        have = set(row.keys()) if isinstance(row, DictConfig) else set()
        for field, path in reads.items():
            if field not in have:
                problems.append(f"_variants.{name}: has no '{field}', which {path} reads; give every variant the "
                                f"same keys ({', '.join(VARIANT_AXES)})")
    return problems
