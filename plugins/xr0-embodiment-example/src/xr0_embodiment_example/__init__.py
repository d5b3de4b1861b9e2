"""An xr0 embodiment plugin, as a lab writes one: importing this module registers `example_arm`."""
from dataclasses import dataclass

from xr0.embodiments import Embodiment
from xr0.registry import EMBODIMENTS

JOINTS = tuple(f"joint{i}" for i in range(6))


@EMBODIMENTS.register("example_arm")
@dataclass(frozen=True)
class ExampleArm(Embodiment):
    """Example 6-DoF arm + gripper at 30 Hz: relative joint actions, absolute gripper, two cameras, chunk 30."""

    name: str = "example_arm"
    action_names: tuple = (*JOINTS, "gripper")
    state_names: tuple = (*JOINTS, "gripper")
    cameras: tuple = ("scene", "wrist")
    control_hz: float = 30.0
    chunk: int = 30
    action_low: tuple = (-3.14,) * 6 + (0.0,)
    action_high: tuple = (3.14,) * 6 + (1.0,)
    relative: tuple = (True,) * 6 + (False,)


UR_JOINTS = ("shoulder_pan", "shoulder_lift", "elbow", "wrist_1", "wrist_2", "wrist_3")


@EMBODIMENTS.register("lab_arm")
@dataclass(frozen=True)
class LabArm(Embodiment):
    """A UR5e-like arm as a lab brings it (README "Add a robot"): 15 Hz; actions = 6 joint targets (trained relative
    to the observed joints) + an absolute gripper command in [0, 1]; an 8-D state (joints, gripper opening, gripper
    force in N); three cameras of their own native sizes; chunk 15 (1 s)."""

    name: str = "lab_arm"
    action_names: tuple = (*UR_JOINTS, "gripper")
    state_names: tuple = (*UR_JOINTS, "gripper", "gripper_force")
    cameras: tuple = ("scene", "wrist", "side")
    camera_sizes: tuple = ((240, 320), (120, 160), (240, 320))  # (H, W): 320×240, 160×120, 320×240
    control_hz: float = 15.0
    chunk: int = 15
    action_low: tuple = (-6.28,) * 6 + (0.0,)
    action_high: tuple = (6.28,) * 6 + (1.0,)
    relative: tuple = (True,) * 6 + (False,)
    relative_state_index: tuple = (0, 1, 2, 3, 4, 5, 6)  # joint i against state i; the gripper is not relative
