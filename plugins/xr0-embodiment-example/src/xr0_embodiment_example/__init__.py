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
