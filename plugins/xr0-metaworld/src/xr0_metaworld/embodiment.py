"""The Sawyer arm of Meta-World as an xr0 embodiment."""
from dataclasses import dataclass

from xr0.embodiments import Embodiment
from xr0.registry import EMBODIMENTS

# Meta-World steps at 80 Hz (frame_skip 5 × 2.5 ms). Actions are already deltas (end-effector xyz moves
# of 1 cm per unit, and a gripper effort), so nothing is made relative to the state.
SAWYER_HZ = 80.0
STATE_NAMES = ("hand_x", "hand_y", "hand_z", "gripper_open", "obj_x", "obj_y", "obj_z", "goal_x", "goal_y", "goal_z")


@EMBODIMENTS.register("metaworld_sawyer")
@dataclass(frozen=True)
class MetaWorldSawyer(Embodiment):
    """Meta-World Sawyer: 4-D action (Δxyz, gripper effort) at 80 Hz, 10-D state (hand, gripper, object, goal), one camera."""

    name: str = "metaworld_sawyer"
    action_names: tuple = ("dx", "dy", "dz", "grip")
    state_names: tuple = STATE_NAMES
    cameras: tuple = ("corner2",)
    control_hz: float = SAWYER_HZ
    chunk: int = 16  # stored per sample; recipes read any chunk up to this
    action_low: tuple = (-1.0,) * 4
    action_high: tuple = (1.0,) * 4


@EMBODIMENTS.register("metaworld_sawyer_image")
@dataclass(frozen=True)
class MetaWorldSawyerImage(MetaWorldSawyer):
    """Meta-World Sawyer, goal and object seen only in the images: 4-D state (hand xyz, gripper opening)."""

    name: str = "metaworld_sawyer_image"
    state_names: tuple = STATE_NAMES[:4]
