"""Attention masks over a flow head's tokens (docs/method.md §1.3): its special tokens, then the actions
[a_0 … a_{T-1}]. True = row may attend column.

The head declares its special tokens (`FlowHead.special_tokens`, the DiT's are [SINK, state]) and the masks are
built for that many: special tokens see each other causally, every action token sees all of them. Every DiT token
also sees every valid VLM token; these masks cover only the head's own block. A mask component is called as
mask(num_actions, prefix_len, training, device, special=len(head.special_tokens))
(built on that device: no host-to-device copy inside a flow loop). Prefix-column dropout (released code, off by default here:
`prefix_dropout: true` turns it on with p=0.5, sparing the last 2 prefix columns) hides old clean prefix actions from
the noisy rows during training.
"""
from __future__ import annotations

import torch
from torch import Tensor

from xr0.registry import MASKS

def _special(special: int) -> int:
    if special < 0:
        raise ValueError(f"a head declares a count of special tokens >= 0, got {special}")
    return special


def causal_mask(num_actions: int, *, special: int, device=None) -> Tensor:
    """Lower-triangular over [special tokens, actions] (stage 2 pre-training, training-time RTC)."""
    n = _special(special) + num_actions
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()  # (n, n)


def lambda_mask(num_actions: int, window: int = 4, *, special: int, device=None) -> Tensor:
    """Λ shape: the special tokens see each other causally (the DiT: SINK sees itself, state sees SINK and itself);
    action i sees every special token and actions i-w…i."""
    if window < 0:
        raise ValueError(f"lambda mask window must be >= 0, got {window}")
    k = _special(special)
    n = k + num_actions
    idx = torch.arange(num_actions, device=device)
    band = (idx[None, :] <= idx[:, None]) & (idx[None, :] >= idx[:, None] - window)  # (T, T)
    m = torch.zeros(n, n, dtype=torch.bool, device=device)
    m[:k, :k] = torch.ones(k, k, dtype=torch.bool, device=device).tril()
    m[k:, :k] = True
    m[k:, k:] = band
    return m


def drop_prefix_columns(mask: Tensor, prefix_len: Tensor, p: float = 0.5, keep_last: int = 2,
                        generator: torch.Generator | None = None, *, special: int) -> Tensor:
    """Hide each clean prefix column (except the last `keep_last`) from the noisy rows with probability p.

    mask (n, n) over `special` tokens then the actions, prefix_len (B,) long → (B, n, n). Noisy rows are the action
    rows at or after the prefix.
    """
    b, n = prefix_len.shape[0], mask.shape[0]
    pos = torch.arange(n, device=prefix_len.device) - _special(special)  # action index of each token, <0: special
    plen = prefix_len[:, None]  # (B, 1)
    droppable = (pos[None, :] >= 0) & (pos[None, :] < plen - keep_last)  # (B, n) prefix columns that may drop
    drop = droppable & (torch.rand(b, n, device=prefix_len.device, generator=generator) < p)  # (B, n)
    noisy_row = pos[None, :] >= plen  # (B, n)
    hide = noisy_row[:, :, None] & drop[:, None, :]  # (B, n_rows, n_cols)
    return mask.to(prefix_len.device)[None].expand(b, n, n) & ~hide


def _check_dropout(p: float, keep_last: int) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"mask.prefix_dropout_p must be in [0, 1], got {p}")
    if keep_last < 0:
        raise ValueError(f"mask.keep_last must be >= 0, got {keep_last}")


def with_prefix_dropout(mask: Tensor, prefix_len: Tensor | None, training: bool, enabled: bool, p: float,
                        keep_last: int, special: int) -> Tensor:
    """The mask as the DiT gets it: (n, n), or (B, n, n) when prefix-column dropout applies (training only)."""
    if enabled and training and prefix_len is not None:
        return drop_prefix_columns(mask, prefix_len, p, keep_last, special=special)
    return mask


@MASKS.register("causal")
class Causal:
    """Causal mask over [special tokens, actions] (stage 2, training-time RTC)."""

    def __init__(self, prefix_dropout: bool = False, prefix_dropout_p: float = 0.5, keep_last: int = 2):
        _check_dropout(prefix_dropout_p, keep_last)
        self.prefix_dropout, self.prefix_dropout_p, self.keep_last = prefix_dropout, prefix_dropout_p, keep_last

    def __call__(self, num_actions: int, prefix_len: Tensor | None = None, training: bool = False,
                 device=None, *, special: int) -> Tensor:
        """(n, n) bool over `special` head tokens then the actions, or (B, n, n) when prefix-column dropout
        applies in training."""
        return with_prefix_dropout(causal_mask(num_actions, special=special, device=device), prefix_len, training,
                                   self.prefix_dropout, self.prefix_dropout_p, self.keep_last, special)


@MASKS.register("lambda")
class Lambda:
    """Λ-shape mask: each action sees the head's special tokens (SINK, state) and the last `window` actions (4)."""

    def __init__(self, window: int = 4, prefix_dropout: bool = False, prefix_dropout_p: float = 0.5,
                 keep_last: int = 2):
        if window < 0:
            raise ValueError(f"mask.window must be >= 0, got {window}")
        _check_dropout(prefix_dropout_p, keep_last)
        self.window = window
        self.prefix_dropout, self.prefix_dropout_p, self.keep_last = prefix_dropout, prefix_dropout_p, keep_last

    def __call__(self, num_actions: int, prefix_len: Tensor | None = None, training: bool = False,
                 device=None, *, special: int) -> Tensor:
        """(n, n) bool over `special` head tokens then the actions, or (B, n, n) when prefix-column dropout
        applies in training."""
        return with_prefix_dropout(lambda_mask(num_actions, self.window, special=special, device=device), prefix_len,
                                   training, self.prefix_dropout, self.prefix_dropout_p, self.keep_last, special)
