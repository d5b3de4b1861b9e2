"""xr0 backbones (filled in by its issue)."""
