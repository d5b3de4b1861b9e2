"""xr0-deploy: run xr0 policies on robots (docs/method.md §3). Importing it registers `xr0 serve` and `xr0 deploy`."""
from xr0_deploy import commands, sim  # noqa: F401  (registers the CLI verbs and the `sim_arm` embodiment)

__version__ = "0.1.0"
