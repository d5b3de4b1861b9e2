"""xr0 training stages: one LightningModule per file; importing a module registers its stage."""
from xr0.stages import dit_flow, post_train, vlm_cotrain  # noqa: F401
