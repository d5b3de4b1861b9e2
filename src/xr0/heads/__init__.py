"""xr0 heads (filled in by its issue)."""
from xr0.heads import choice_policy  # noqa: F401,E402
