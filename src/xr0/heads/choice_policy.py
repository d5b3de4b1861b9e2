"""Choice-policy head for stage-1 VLM co-training (docs/method.md §2.1; Qi et al. 2025, "Choice Policies").

The VLM reads `o_t, l, s_t, [A_1] … [A_T], [S]`: this head supplies the last T+2 input embeddings (an
MLP-embedded state token and T+1 learnable tokens) and maps their VLM outputs to N candidate chunks
(from the [A_i] outputs) and N scores (from [S]); it implements xr0.heads.protocol.ChoiceHead. Only the best candidate gets the action gradient
(winner-takes-all); the scores regress every candidate's detached L1, and inference returns the
candidate with the lowest score.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from xr0.flow import step_mask
from xr0.registry import HEADS
from xr0.types import ACTION_DIM


def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.SiLU(), nn.Linear(d_hidden, d_out))


def masked_l1(pred: Tensor, target: Tensor, action_mask: Tensor, chunk_mask: Tensor | None = None) -> Tensor:
    """Mean |pred - target| over valid elements. pred (B, N, T, D), target (B, T, D) -> (B, N)."""
    valid = step_mask(action_mask).expand(-1, target.shape[1], -1).float()  # (B, T, D)
    if chunk_mask is not None:
        valid = valid * chunk_mask[:, :, None].float()  # (B, T, D)
    err = (pred - target[:, None]).abs() * valid[:, None]  # (B, N, T, D)
    return err.sum(dim=(2, 3)) / valid.sum(dim=(1, 2)).clamp_min(1.0)[:, None]  # (B, N)


@HEADS.register("choice_policy")
class ChoicePolicyHead(nn.Module):
    """Stage-1 choice policy: state token + [A_1..A_T] + [S] tokens -> N candidate chunks and N scores."""

    def __init__(
        self,
        chunk: int,
        num_candidates: int = 5,
        hidden_size: int | None = None,  # None: the stage binds it to the backbone's hidden_size
        action_dim: int = ACTION_DIM,
        state_dim: int = ACTION_DIM,
        score_weight: float = 1.0,
    ):
        super().__init__()
        if chunk < 1 or num_candidates < 1:
            raise ValueError(f"choice_policy: chunk ({chunk}) and num_candidates ({num_candidates}) must be >= 1")
        self.chunk = chunk
        self.num_candidates = num_candidates
        self.action_dim = action_dim
        self.state_dim = state_dim
        self.score_weight = score_weight
        self.hidden_size: int | None = None
        if hidden_size is not None:
            self.bind(hidden_size)

    def bind(self, hidden_size: int) -> "ChoicePolicyHead":
        """Create the layers for a backbone of width `hidden_size` (done once; a second width is an error)."""
        if self.hidden_size is not None:
            if self.hidden_size != hidden_size:
                raise ValueError(
                    f"choice_policy was built for hidden_size {self.hidden_size} but the backbone has {hidden_size}; "
                    f"drop head.hidden_size from the recipe so it follows the backbone")
            return self
        h, n, t, d = hidden_size, self.num_candidates, self.chunk, self.action_dim
        self.hidden_size = h
        self.state_in = _mlp(self.state_dim, h, h)
        self.queries = nn.Parameter(torch.zeros(t + 1, h))  # [A_1..A_T], [S]
        self.action_out = _mlp(h, h, n * d)  # one [A_i] output -> N actions at step i
        self.score_out = _mlp(h, h, n)  # [S] output -> N scores
        nn.init.normal_(self.queries, std=0.02)
        return self

    def _check_bound(self) -> None:
        if self.hidden_size is None:
            raise RuntimeError("choice_policy head has no layers yet: call head.bind(backbone.hidden_size) first")

    @property
    def num_tokens(self) -> int:
        return self.chunk + 2

    def tokens(self, state: Tensor) -> Tensor:
        """The embeddings appended after the prompt: state (B, D_S) -> (B, T+2, hidden)."""
        self._check_bound()
        s = self.state_in(state)[:, None]  # (B, 1, h)
        q = self.queries[None].expand(state.shape[0], -1, -1).to(s.dtype)  # (B, T+1, h)
        return torch.cat([s, q], dim=1)  # (B, T+2, h)

    def forward(self, extra_hidden: Tensor) -> tuple[Tensor, Tensor]:
        """VLM outputs of the appended tokens (B, T+2, hidden) -> candidates (B, N, T, D), scores (B, N)."""
        self._check_bound()
        b, n, t, d = extra_hidden.shape[0], self.num_candidates, self.chunk, self.action_dim
        act = self.action_out(extra_hidden[:, 1 : 1 + t])  # (B, T, N*D)
        cand = act.view(b, t, n, d).transpose(1, 2)  # (B, N, T, D)
        scores = self.score_out(extra_hidden[:, 1 + t])  # (B, N)
        return cand.float(), scores.float()

    def loss(self, cand: Tensor, scores: Tensor, actions: Tensor, action_mask: Tensor,
             chunk_mask: Tensor | None = None) -> dict[str, Tensor]:
        """Winner-takes-all L1 plus score regression onto the detached per-candidate L1."""
        l1 = masked_l1(cand, actions.float(), action_mask, chunk_mask)  # (B, N)
        best = l1.argmin(dim=1)  # (B,)
        chosen = scores.argmin(dim=1)  # (B,)
        action_loss = l1.gather(1, best[:, None]).mean()  # only the winner gets a gradient
        score_loss = nn.functional.mse_loss(scores, l1.detach())
        rows = torch.arange(l1.shape[0], device=l1.device)
        return {
            "loss": action_loss + self.score_weight * score_loss,
            "action_loss": action_loss,
            "score_loss": score_loss,
            "l1": l1.detach(),  # (B, N)
            "best": best,
            "chosen": chosen,
            "l1_best": l1.detach()[rows, best],  # (B,)
            "l1_chosen": l1.detach()[rows, chosen],  # (B,)
        }

    @staticmethod
    def select(cand: Tensor, scores: Tensor) -> Tensor:
        """Inference: the lowest-scored candidate. (B, N, T, D), (B, N) -> (B, T, D)."""
        idx = scores.argmin(dim=1)  # (B,)
        return cand[torch.arange(cand.shape[0], device=cand.device), idx]  # (B, T, D)
