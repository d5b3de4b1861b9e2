"""xr0 embodiments (filled in by its issue)."""
