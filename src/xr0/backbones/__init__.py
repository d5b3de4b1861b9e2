"""VLM backbones: adapters that hand the DiT a VLM's KV cache (docs/method.md §1.1)."""
from xr0.backbones import qwen3vl  # noqa: F401
from xr0.backbones.configs import qwen3vl_4b_config, tiny_qwen3vl_config  # noqa: F401
