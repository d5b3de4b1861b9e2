"""Choice-policy head: token layout, winner-takes-all gradients, score targets, lowest-score selection."""
import pytest
import torch

from xr0.heads.choice_policy import ChoicePolicyHead, masked_l1
from xr0.registry import HEADS


def make(n=3, t=4, h=16):
    torch.manual_seed(0)
    return ChoicePolicyHead(chunk=t, num_candidates=n, hidden_size=h)


def test_registered_and_shapes():
    assert HEADS.get("choice_policy") is ChoicePolicyHead
    head = make()
    tok = head.tokens(torch.randn(2, 32))
    assert tok.shape == (2, 4 + 2, 16)
    cand, scores = head(torch.randn(2, 6, 16))
    assert cand.shape == (2, 3, 4, 32) and scores.shape == (2, 3)


def test_masked_l1_counts_valid_dims_only():
    pred = torch.zeros(1, 2, 2, 4)
    pred[0, 1] = 1.0
    target = torch.zeros(1, 2, 4)
    target[0, :, 3] = 100.0  # an invalid dim: must not count
    am = torch.tensor([[True, True, True, False]])
    l1 = masked_l1(pred, target, am)
    assert torch.allclose(l1, torch.tensor([[0.0, 1.0]]))
    cm = torch.tensor([[True, False]])
    pred[0, 1, 1] = 7.0  # beyond the episode end
    assert torch.allclose(masked_l1(pred, target, am, cm), torch.tensor([[0.0, 1.0]]))


def test_winner_takes_all_gradient_and_detached_score_target():
    head = make(n=3)
    cand = torch.randn(2, 3, 4, 32, requires_grad=True)
    scores = torch.randn(2, 3, requires_grad=True)
    actions = torch.randn(2, 4, 32)
    am = torch.ones(2, 32, dtype=torch.bool)
    out = head.loss(cand, scores, actions, am)
    out["loss"].backward()
    per_cand = cand.grad.abs().sum(dim=(2, 3))  # (B, N)
    for b in range(2):
        w = out["best"][b].item()
        assert per_cand[b, w] > 0
        assert per_cand[b].sum() == per_cand[b, w]  # losers get no action gradient
    # score gradient pulls each score to its candidate's L1
    expected = 2 * (scores.detach() - out["l1"]) / scores.numel()
    assert torch.allclose(scores.grad, expected, atol=1e-6)


def test_select_returns_lowest_scored_candidate():
    cand = torch.arange(2 * 3).float().view(2, 3, 1, 1).expand(2, 3, 4, 32)
    scores = torch.tensor([[0.5, 0.1, 0.9], [0.2, 0.3, 0.0]])
    pick = ChoicePolicyHead.select(cand, scores)
    assert pick.shape == (2, 4, 32)
    assert pick[0, 0, 0] == 1 and pick[1, 0, 0] == 5


def test_bind_follows_backbone_and_rejects_other_width():
    head = ChoicePolicyHead(chunk=2, num_candidates=2)
    with pytest.raises(RuntimeError, match="bind"):
        head.tokens(torch.zeros(1, 32))
    head.bind(8)
    assert head.tokens(torch.zeros(1, 32)).shape == (1, 4, 8)
    with pytest.raises(ValueError, match="hidden_size"):
        head.bind(16)


def test_head_overfits_fixed_target():
    head = make(n=2, t=3, h=16)
    feats = torch.randn(4, 5, 16)
    actions = torch.randn(4, 3, 32)
    am = torch.ones(4, 32, dtype=torch.bool)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        cand, scores = head(feats)
        out = head.loss(cand, scores, actions, am)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = first if first is not None else out["loss"].item()
    assert out["loss"].item() < 0.5 * first
