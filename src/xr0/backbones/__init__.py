"""VLM backbones: adapters that hand the DiT a VLM's KV cache (docs/method.md §1.1), each implementing
xr0.backbones.protocol.Backbone. Importing this package registers them."""
from xr0.backbones import paligemma, qwen3vl  # noqa: F401
from xr0.backbones.configs import qwen3vl_4b_config, tiny_qwen3vl_config  # noqa: F401
