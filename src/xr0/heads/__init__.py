"""Action heads: the DiT flow-matching expert and the stage-1 choice-policy head."""
from xr0.heads import choice_policy, dit  # noqa: F401
