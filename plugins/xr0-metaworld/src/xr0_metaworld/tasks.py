"""Meta-World tasks xr0 knows: the language instruction of each and its scripted expert."""
from __future__ import annotations

import difflib

# Tasks whose scripted expert succeeded 10/10 when measured on the CI machine, plus a few siblings.
INSTRUCTIONS: dict[str, str] = {
    "reach-v3": "reach the red goal with the gripper",
    "push-v3": "push the puck to the goal",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "drawer-open-v3": "open the drawer",
    "drawer-close-v3": "close the drawer",
    "button-press-topdown-v3": "press the button from the top",
    "door-open-v3": "open the door",
    "window-open-v3": "slide the window open",
}

# Tasks whose goal and object can be moved mid-episode and whose scripted expert follows the move (reactivity).
PERTURBABLE = frozenset({"reach-v3", "push-v3", "pick-place-v3"})


def check_tasks(tasks: list[str]) -> list[str]:
    """Task names → the same list, or a ValueError naming the unknown one and the closest known names."""
    for t in tasks:
        if t not in INSTRUCTIONS:
            close = difflib.get_close_matches(t, list(INSTRUCTIONS), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"unknown Meta-World task '{t}'{hint} Known: {', '.join(INSTRUCTIONS)}")
    return list(tasks)


def instruction(task: str) -> str:
    """The language instruction stored with a task's episodes and sent with its observations."""
    return INSTRUCTIONS[check_tasks([task])[0]]


def expert(task: str):
    """A fresh scripted expert (metaworld.policies) for `task`: `.get_action(obs39) -> (4,)`."""
    from metaworld.policies import ENV_POLICY_MAP

    return ENV_POLICY_MAP[check_tasks([task])[0]]()
