"""Rules across a recipe's components, checked by `xr0 validate` once each component is well-formed: one source
per fact. A recipe names its chunk length and its embodiment once (the stock recipes use `_chunk` and
`embodiment:` and interpolate them); these checks refuse a recipe where two places disagree, since the checkpoint
would carry one value while the data or the model used the other."""
from __future__ import annotations

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
