"""xr0 data (filled in by its issue)."""
