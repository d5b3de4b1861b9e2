"""xr0 heads (filled in by its issue)."""
