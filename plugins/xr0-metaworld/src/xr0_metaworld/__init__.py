"""xr0-metaworld: the Meta-World Sawyer embodiment, `xr0 sim collect|eval`, `xr0 demo` and `xr0 ablate`.

Importing it registers the embodiment and the CLI verbs; Meta-World itself is imported only when a verb runs.
"""
from xr0_metaworld import commands, embodiment  # noqa: F401  (registration)

__version__ = "0.1.0"
