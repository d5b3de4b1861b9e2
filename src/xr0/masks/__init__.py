"""xr0 masks (filled in by its issue)."""
