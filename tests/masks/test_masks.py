import torch

from xr0.masks import Causal, Lambda, causal_mask, drop_prefix_columns, lambda_mask
from xr0.registry import MASKS


def test_causal_is_lower_triangular():
    m = causal_mask(4, special=2)
    assert m.shape == (6, 6) and m.dtype == torch.bool
    for r in range(6):
        for c in range(6):
            assert m[r, c] == (c <= r)


def test_lambda_token_by_token():
    w, t = 2, 6
    m = lambda_mask(t, window=w, special=2)
    assert m.shape == (8, 8)
    assert m[0].tolist() == [True] + [False] * 7  # SINK sees itself only
    assert m[1].tolist() == [True, True] + [False] * 6  # state sees SINK and itself
    for i in range(t):
        row = m[2 + i]
        assert row[0] and row[1]  # every action sees SINK and state
        for j in range(t):
            assert bool(row[2 + j]) == (i - w <= j <= i), (i, j)


def test_default_window_is_four_and_registered():
    assert MASKS.get("lambda") is Lambda and MASKS.get("causal") is Causal
    assert torch.equal(Lambda()(10, special=2), lambda_mask(10, 4, special=2))
    m = lambda_mask(10, special=2)
    assert not m[2 + 9, 2 + 4] and m[2 + 9, 2 + 5]


def test_prefix_column_dropout_hides_only_old_prefix_columns_from_noisy_rows():
    torch.manual_seed(0)
    base = causal_mask(8, special=2)
    plen = torch.tensor([6, 0, 2])
    out = drop_prefix_columns(base, plen, p=1.0, keep_last=2, special=2)
    assert out.shape == (3, 10, 10)
    # sample 0: prefix columns 0..3 hidden from noisy rows (actions 6..7), columns 4,5 (last 2) kept
    for r in range(2 + 6, 10):
        assert not out[0, r, 2:6].any() and out[0, r, 6:8].all()
    assert torch.equal(out[0, :8], base[:8])  # prefix rows unchanged
    assert torch.equal(out[1], base) and torch.equal(out[2], base)  # no prefix / only 2 prefix columns
    never = drop_prefix_columns(base, plen, p=0.0, special=2)
    assert torch.equal(never, base.expand(3, 10, 10))


def test_mask_component_applies_dropout_only_in_training():
    mask = Lambda(window=4, prefix_dropout=True, prefix_dropout_p=1.0)
    plen = torch.tensor([6])
    assert mask(8, plen, training=False, special=2).shape == (10, 10)
    assert mask(8, plen, training=True, special=2).shape == (1, 10, 10)
    assert not mask(8, plen, training=True, special=2)[0, 2 + 7, 2 + 3]  # old prefix column hidden from a noisy row
    assert torch.equal(Causal()(8, plen, training=True, special=2), causal_mask(8, special=2))  # off by default
    on = Causal(prefix_dropout=True)
    assert on.prefix_dropout_p == 0.5 and on.keep_last == 2  # the released setting


def test_dropout_rate_is_p_on_droppable_columns():
    torch.manual_seed(0)
    plen = torch.full((4000,), 6)
    out = Causal(prefix_dropout=True)(8, plen, training=True, special=2)  # (B, 10, 10)
    hidden = ~out[:, 2 + 6, 2:6]  # noisy row 6 against prefix columns 0..3
    assert abs(hidden.float().mean().item() - 0.5) < 0.02
    # one draw per column: every noisy row of a sample loses the same columns
    assert torch.equal(out[:, 2 + 6, 2:8], out[:, 2 + 7, 2:8])


def test_bad_settings_are_refused():
    import pytest

    with pytest.raises(ValueError, match="window"):
        Lambda(window=-1)
    with pytest.raises(ValueError, match="prefix_dropout_p"):
        Causal(prefix_dropout=True, prefix_dropout_p=1.5)


def test_masks_follow_the_heads_special_tokens():
    """A head with 3 special tokens gets masks over 3 + T tokens: the special block causal, every action row sees all
    three, the Λ band and prefix dropout shifted past them; none: the action block alone."""
    t, w = 6, 2
    m3, m2 = lambda_mask(t, w, special=3), lambda_mask(t, w, special=2)
    assert m3.shape == (9, 9)
    assert torch.equal(m3[:3, :3], torch.ones(3, 3, dtype=torch.bool).tril()) and not m3[:3, 3:].any()
    assert m3[3:, :3].all() and torch.equal(m3[3:, 3:], m2[2:, 2:])
    assert torch.equal(causal_mask(t, special=0), torch.ones(t, t, dtype=torch.bool).tril())
    plen = torch.tensor([5])
    out = drop_prefix_columns(causal_mask(t, special=3), plen, p=1.0, keep_last=2, special=3)
    assert not out[0, 3 + 5, 3:6].any() and out[0, 3 + 5, 6:8].all() and out[0, 3 + 5, :3].all()
    assert torch.equal(Causal()(t, special=3), causal_mask(t, special=3))
    import pytest

    with pytest.raises(TypeError):
        causal_mask(t)  # the count comes from the head, never a default


def test_window_zero_sees_only_itself_and_zero_settings_are_allowed():
    m = Lambda(window=0)(5, special=2)
    assert torch.equal(m[2:, 2:], torch.eye(5, dtype=torch.bool)) and m[2:, :2].all()
    assert torch.equal(lambda_mask(5, 0, special=2), m)
    keep_none = Causal(prefix_dropout=True, prefix_dropout_p=0.0, keep_last=0)  # p = 0 and keep_last = 0 are valid
    assert torch.equal(keep_none(8, torch.tensor([6]), training=True, special=2)[0], causal_mask(8, special=2))
    plen = torch.tensor([4])
    all_gone = Causal(prefix_dropout=True, prefix_dropout_p=1.0, keep_last=0)(8, plen, training=True, special=2)[0]
    assert not all_gone[2 + 4:, 2:6].any()  # keep_last 0: every prefix column hidden from the noisy rows


def test_defaults_are_the_released_settings():
    """Dropout is off unless asked for; when on, p = 0.5 sparing the last 2 prefix columns; masks are for inference
    unless the caller says training."""
    plen = torch.full((4000,), 6)
    assert torch.equal(Lambda()(8, plen, training=True, special=2), lambda_mask(8, 4, special=2))  # off by default
    on = Lambda(prefix_dropout=True)
    assert (on.window, on.prefix_dropout_p, on.keep_last) == (4, 0.5, 2)
    inference = Causal(prefix_dropout=True, prefix_dropout_p=1.0)(8, plen, special=2)  # training defaults to False
    assert torch.equal(inference, causal_mask(8, special=2))
    assert torch.equal(Lambda(prefix_dropout=True, prefix_dropout_p=1.0)(8, plen, special=2), lambda_mask(8, special=2))
    torch.manual_seed(1)
    out = drop_prefix_columns(causal_mask(8, special=2), plen, special=2)  # the function's own defaults
    hidden = ~out[:, 2 + 6, 2:8]  # noisy row 6 against prefix columns 0..5
    assert abs(hidden[:, :4].float().mean().item() - 0.5) < 0.03 and not hidden[:, 4:].any()
