"""xr0 samplers (filled in by its issue)."""
