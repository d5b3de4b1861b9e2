"""The two head contracts: a stage takes one kind, `xr0 validate` refuses the other kind by name before anything is
built, and the built head is checked where it is used."""
import pytest

from xr0.config import RecipeError, load_recipe, validate
from xr0.heads.choice_policy import ChoicePolicyHead
from xr0.heads.dit import DiT
from xr0.heads.protocol import ChoiceHead, FlowHead, kind_of, require


def test_each_head_is_of_its_kind():
    assert kind_of(DiT) == "flow" and kind_of(ChoicePolicyHead) == "choice" and kind_of(object) is None
    dit, choice = DiT(width=16, depth=1, num_heads=2, head_dim=8, chunk=4), ChoicePolicyHead(chunk=4)
    assert isinstance(dit, FlowHead) and not isinstance(dit, ChoiceHead)
    assert isinstance(choice, ChoiceHead) and not isinstance(choice, FlowHead)
    assert dit.special_tokens == ("sink", "state")
    with pytest.raises(ValueError, match="stage vlm_cotrain needs a choice head .*DiT is a flow head"):
        require(dit, "choice", "stage vlm_cotrain")


@pytest.mark.parametrize("recipe, head, message", [
    ("stage2.yaml", "{name: choice_policy, chunk: 4}", "'choice_policy' is a choice head; stage dit_flow takes a flow"),
    ("stage3.yaml", "{name: choice_policy, chunk: 4}", "'choice_policy' is a choice head; stage post_train takes a flow"),
    ("stage1.yaml", "{name: dit, chunk: 4}", "'dit' is a flow head; stage vlm_cotrain takes a choice"),
])
def test_validate_refuses_the_other_kind_by_name(recipe, head, message):
    with pytest.raises(RecipeError, match=f"stage: head: {message}"):
        validate(load_recipe(f"recipes/tiny/{recipe}", [f"_head={head}", "stage.head=${_head}"]))  # replaced whole


def test_the_built_head_is_checked_where_it_is_used():
    from xr0.policy import Policy
    from xr0.registry import BACKBONES, MASKS, SAMPLERS
    from xr0.stages.vlm_cotrain import VLMCoTrain

    vlm = BACKBONES.build("qwen3vl")
    with pytest.raises(ValueError, match="the policy .* needs a flow head .*ChoicePolicyHead is a choice head"):
        Policy(vlm, ChoicePolicyHead(chunk=4), MASKS.build("causal"), SAMPLERS.build("beta"))
    with pytest.raises(ValueError, match="stage vlm_cotrain needs a choice head"):
        VLMCoTrain(vlm, DiT(width=16, depth=1, num_heads=2, chunk=4))
