"""xr0 stages (filled in by its issue)."""
