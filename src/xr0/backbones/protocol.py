"""The backbone contract, in one place: everything the stages, the policy, FastPolicy (xr0.infer), xr0.flops,
`xr0 bench`, `xr0 serve` and the processor may ask of a VLM backbone. Code outside a backbone's own module uses
these members only — never a model's attribute (`.hf`, `.model`) or its registry name.

What a backbone hands the DiT is docs/method.md §1.1: one forward with the KV cache on gives the last K layers'
keys (already rotated by the VLM's RoPE) and values, the padding mask, the next free position of each sample and
the rotary function the DiT's positions continue with. How a family lays out its positions (Qwen-VL's 3-axis M-RoPE,
PaliGemma's 1-D positions from 1), which tokens see which (causal, or a bidirectional image+prompt prefix) and how
images become tokens stay inside its module.

Two capabilities are optional and *declared*: a backbone returns None where it has none.
- `static_prefill()`: a `StaticPrefill`, the prompt planned once and a prefill with static shapes and no host syncs,
  which FastPolicy chains (and captures as CUDA graphs on a GPU). Without it, inference runs `Policy.predict_chunk`.
- `cost(...)`: the analytic FLOPs and bytes of the vision tower and the prefill (xr0.flops adds the DiT), held equal
  to torch's FlopCounterMode by tests/test_flops.py.

`check(backbone)` names what a class misses; CONTRIBUTING.md's checklist "add a VLM backbone" walks the whole path.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from torch import Tensor

from xr0.types import VLMContext

if TYPE_CHECKING:
    from xr0.flops import Cost


class StaticPrefill(Protocol):
    """The VLM half of the fast inference path for one backbone (returned by `Backbone.static_prefill()`).

    `plan` does every piece of host work once per (instructions, views, image size): tokens, positions, masks, tables.
    `vision`, `prefill` and `context` are then pure tensor work with static shapes and no host syncs (no `.item()`,
    `.tolist()`, `nonzero`, boolean-mask indexing, tensors made on the CPU), so FastPolicy can capture each as a CUDA
    graph; tests run them on the meta device, which fails on any sync. Together they must equal `Backbone.context`.
    """

    def plan(self, texts: list[str], views: int, h: int, w: int) -> Any:
        """Host work for one prompt layout: whatever `vision`, `prefill` and `context` need besides the pixels."""

    def tokens(self, plan: Any) -> int:
        """VLM tokens per sample of a planned prompt (padding included): the K/V length the DiT reads."""

    def vision(self, plan: Any, images: Tensor, image_mask: Tensor | None) -> list[Tensor]:
        """images (B,V,3,H,W) in [0,1] → the tensors the prefill consumes (image embeddings first)."""

    def prefill(self, plan: Any, vision: list[Tensor], num_layers: int) -> tuple[list[Tensor], list[Tensor]]:
        """The language model over the planned prompt → the last `num_layers` layers' rotated K and V, each
        (B, kv_heads, S, head_dim)."""

    def context(self, plan: Any, keys: list[Tensor], values: list[Tensor]) -> VLMContext:
        """The VLMContext of `Backbone.context` from the prefill's K/V and the plan."""


@runtime_checkable
class Backbone(Protocol):
    """A VLM adapter (registered in BACKBONES). Sizes the heads bind to, the three calls training and inference
    make, the processor's input spec, freezing, and the two declared capabilities."""

    hidden_size: int  # width of the VLM's hidden states (the choice head binds to it)
    num_layers: int  # language-model layers; the DiT reads the last `head.depth` of them
    num_kv_heads: int  # K/V heads of those layers (the DiT's query heads are a multiple)
    head_dim: int  # per-head width of those K/V (the DiT's head_dim must equal it)
    frozen: bool  # True: forward under no_grad, stays in eval mode (set by `freeze`)
    # Sizes `xr0 bench --backbone NAME --scale S` builds: {scale: {"kwargs": builder kwargs, "image_hw": (H, W)}};
    # "tiny" (CPU, CI) at least.
    scales: ClassVar[dict[str, dict[str, Any]]]

    def prepare(self, images: Tensor, image_mask: Tensor | None, texts: list[str],
                answers: list[str] | None = None) -> dict[str, Any]:
        """images (B,V,3,H,W) in [0,1], a camera missing where image_mask is False (fed as a zero frame, its tokens
        kept: shapes stay static), instructions → model inputs for `context` / `lm_loss`: at least `input_ids` and
        `attention_mask` (B, S), left-padded, S = the VLM tokens the DiT reads; `labels` on the answer tokens when
        answers are given."""

    def context(self, inputs: dict[str, Any], num_layers: int, extra_embeds: Tensor | None = None) -> VLMContext:
        """One forward with the KV cache on → the last `num_layers` layers' K/V, padding mask, next position, rotary
        function, hidden states; `extra_embeds` (B,n,hidden) are appended after each prompt (stage 1's tokens) and
        their outputs come back as `extra_hidden`."""

    def lm_loss(self, inputs: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        """Next-token cross-entropy on the answer tokens (stage 1's vision-language co-training): loss, logits,
        labels (unshifted)."""

    def encode_images(self, inputs: dict[str, Any]) -> Any:
        """The vision tower (and projector) alone on prepared inputs: `xr0 bench`'s eager breakdown and the cost
        checks time and count it."""

    def input_spec(self) -> dict[str, Any]:
        """What the processor needs (xr0.processor): `factor` (image sides a multiple of it), the smart-resize pixel
        budget `min_pixels`/`max_pixels`, `resample`; and for the record what the backbone applies itself
        (`image_mean`, `image_std`, `prompt`, `view_labels`), checked when a checkpoint is served."""

    @staticmethod
    def spec_factor(kwargs: dict[str, Any]) -> int | None:
        """input_spec()["factor"] from recipe kwargs without building the model (`xr0 validate`); None when the
        sizes are not on this machine."""

    def freeze(self) -> None:
        """No gradients, eval mode, `frozen = True`; `train()` keeps a frozen backbone in eval."""

    def static_prefill(self) -> StaticPrefill | None:
        """The fast path's prefill (see StaticPrefill), or None: inference then runs the eager path."""

    def cost(self, n_images: int, h: int, w: int, vlm_tokens: int, batch: int, dtype_bytes: int,
             kv_layers: int) -> dict[str, Cost] | None:
        """Analytic {"vision", "prefill"} Costs of one forward (n_images of h×w, vlm_tokens per sample, the K/V of
        `kv_layers` layers kept), or None when the backbone declares none."""

    def fsdp_wrap_modules(self) -> set[type]:
        """Repeated blocks run through their own forward (one FSDP unit each); a block the backbone runs by its
        parts must not be listed (its unit would never gather)."""


MEMBERS = ("hidden_size", "num_layers", "num_kv_heads", "head_dim", "frozen", "scales", "prepare", "context",
           "lm_loss", "encode_images", "input_spec", "spec_factor", "freeze", "static_prefill", "cost",
           "fsdp_wrap_modules")


# what the flow policy itself calls (xr0.policy.Policy); a registered backbone implements all of MEMBERS
POLICY_MEMBERS = ("hidden_size", "num_layers", "num_kv_heads", "head_dim", "frozen", "prepare", "context")


SIZES = ("hidden_size", "num_layers", "num_kv_heads", "head_dim", "frozen")  # set by the constructor


def missing(backbone: Any, members: tuple[str, ...] = MEMBERS) -> list[str]:
    """The contract's members a backbone lacks (a class: the ones a class carries, not the sizes it sets when built)."""
    if isinstance(backbone, type):
        members = tuple(m for m in members if m not in SIZES)
    return [m for m in members if not hasattr(backbone, m)]


def check(backbone: Any, members: tuple[str, ...] = MEMBERS) -> None:
    """Raise a TypeError naming what the backbone misses of the contract (of `members`); with the whole contract,
    also checks the declared scales."""
    gaps = missing(backbone, members)
    name = backbone.__name__ if isinstance(backbone, type) else type(backbone).__name__
    if gaps:
        raise TypeError(f"{name} does not implement the Backbone contract (xr0.backbones.protocol): missing "
                        f"{', '.join(gaps)}")
    if "scales" not in members:
        return
    scales = backbone.scales
    if "tiny" not in scales or any(set(s) != {"kwargs", "image_hw"} for s in scales.values()):
        raise TypeError(f"{name}.scales must hold at least 'tiny', each scale {{'kwargs': ..., 'image_hw': (H, W)}}")
