"""The two head contracts. HEADS holds both kinds; a stage says which it takes, `xr0 validate` refuses the other
kind by name before anything is built, and the policy checks the built head.

- `FlowHead` (stages dit_flow and post_train, through xr0.policy.Policy): a flow-matching action expert that reads
  the VLM's K/V (docs/method.md §1.2). It declares its special tokens — the tokens before the actions, the DiT's
  [SINK, state] — and the attention masks are built over exactly those (xr0.masks, `special=`).
- `ChoiceHead` (stage vlm_cotrain): stage 1's choice policy (docs/method.md §2.1): tokens appended after the prompt,
  N candidate chunks and N scores from their VLM outputs.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from xr0.types import VLMContext


@runtime_checkable
class FlowHead(Protocol):
    """Velocity of a noisy action chunk given a VLM context; `prepare` once per context, `step` once per τ."""

    chunk: int  # actions per chunk T
    depth: int  # VLM layers it reads: the backbone hands over the last `depth` layers' K/V
    prefix_tau: str  # τ of clean prefix tokens: "one" or "shared" (docs/method.md §1.2)
    special_tokens: tuple[str, ...]  # tokens before the actions, in order; the masks cover these + the actions

    def bind(self, head_dim: int) -> Any:
        """Fit the head to the VLM's K/V head_dim (the policy calls it with the backbone's); once."""

    def check_backbone(self, num_layers: int, num_kv_heads: int, head_dim: int) -> None:
        """Raise a clear ValueError when a VLM of these sizes cannot feed this head."""

    def prepare(self, ctx: VLMContext, mask: Tensor, noisy: Tensor) -> Any:
        """What every flow step on one context shares; mask over [special tokens, actions], noisy (B,T) bool."""

    def step(self, inputs: Any, state: Tensor, actions: Tensor, tau: Tensor) -> Tensor:
        """One velocity evaluation: actions (B,T,A), tau (B,T) or (B,) → (B,T,A)."""


@runtime_checkable
class ChoiceHead(Protocol):
    """Stage-1 choice policy: state token + learned tokens after the prompt → N candidate chunks and N scores."""

    chunk: int
    num_candidates: int

    def bind(self, hidden_size: int) -> Any:
        """Create the layers for a backbone of this width (once)."""

    def tokens(self, state: Tensor) -> Tensor:
        """The embeddings appended after each prompt: state (B, D_S) → (B, n, hidden)."""

    def loss(self, cand: Tensor, scores: Tensor, actions: Tensor, action_mask: Tensor,
             chunk_mask: Tensor | None = None) -> dict[str, Tensor]:
        """Winner-takes-all action loss plus score regression (and the metrics' inputs)."""

    @staticmethod
    def select(cand: Tensor, scores: Tensor) -> Tensor:
        """Inference: the candidate chunk with the lowest score."""


KINDS = {"flow": FlowHead, "choice": ChoiceHead}
METHODS = {"flow": ("bind", "check_backbone", "prepare", "step"), "choice": ("bind", "tokens", "loss", "select")}


def kind_of(builder: Any) -> str | None:
    """'flow' or 'choice' for a head class (or instance) by the contract's methods, None for neither; usable before
    anything is built (`xr0 validate`)."""
    for kind, methods in METHODS.items():
        if all(callable(getattr(builder, m, None)) for m in methods):
            return kind
    return None


def require(head: Any, kind: str, who: str) -> None:
    """Raise naming the contract when `head` (built) is not a head of `kind`."""
    if not isinstance(head, KINDS[kind]):
        have = kind_of(head)
        raise ValueError(f"{who} needs a {kind} head (xr0.heads.protocol.{KINDS[kind].__name__}); "
                         f"{type(head).__name__} is {'a ' + have + ' head' if have else 'neither kind'}"
                         + (": set stage.head: {name: dit, ...}" if kind == "flow" else
                            ": set stage.head: {name: choice_policy, chunk: T}"))


def validate_head(kwargs: dict[str, Any], kind: str, stage: str) -> list[str]:
    """A stage's `__xr0_validate__` part: the recipe's head must be of `kind` (checked on the builder class)."""
    from xr0.registry import HEADS

    node = kwargs.get("head")
    name = node.get("name") if isinstance(node, dict) else None
    if not isinstance(name, str) or name not in HEADS:
        return []  # the head's own check reports it
    have = kind_of(HEADS.get(name))
    if have == kind:
        return []
    return [f"head: '{name}' is {'a ' + have + ' head' if have else 'not a head of either kind'}; stage {stage} takes "
            f"a {kind} head (xr0.heads.protocol.{KINDS[kind].__name__})"]
