"""Factor effects with bootstrap intervals and the power of a design, against cases computed by hand."""
import math

import numpy as np
import pytest

from xr0.effects import bootstrap_effect, cell_mean, detectable_difference, episodes_needed, power_statement


def test_point_estimate_pools_a_cells_episodes_over_its_seeds():
    # by hand: A = (1+1+0+0 + 1+1) / 6 = 4/6; B = (0+0+0 + 1+1+1) / 6 = 1/2; C = 0.25; D = 1.0
    cells = {"A": [np.array([1, 1, 0, 0]), np.array([1, 1])], "B": [np.array([0, 0, 0]), np.array([1, 1, 1])],
             "C": [np.array([0, 1, 0, 0])], "D": [np.array([1.0, np.nan])]}  # NaN: not measured, left out
    assert cell_mean(cells["A"]) == pytest.approx(4 / 6) and cell_mean(cells["D"]) == 1.0
    e = bootstrap_effect(cells, [("A", "B"), ("C", "D")], reps=200)
    assert e.estimate == pytest.approx(((1 / 2 - 4 / 6) + (1.0 - 0.25)) / 2)
    assert (e.pairs, e.n_a, e.n_b) == (2, 10, 7)
    assert e.lo <= e.estimate <= e.hi


def test_bootstrap_distribution_matches_the_hand_computed_one():
    # A = [1, 0] resampled: mean 0, 0.5, 1 with probability 1/4, 1/2, 1/4; B = [1, 1] is always 1.
    # So the effect B − A is 1, 0.5, 0 with 1/4, 1/2, 1/4: mean 0.5, sd √(0.25/2) = 0.354; the 95% interval's ends
    # (2.5th and 97.5th percentiles) are exactly 0 and 1.
    cells = {"A": [np.array([1.0, 0.0])], "B": [np.array([1.0, 1.0])]}
    e = bootstrap_effect(cells, [("A", "B")], reps=20000, seed=3)
    assert e.estimate == 0.5 and (e.lo, e.hi) == (0.0, 1.0)
    # the 30th and 70th percentiles both fall in the middle half (effect 0.5); the 10th and 90th do not
    def ci(level):
        e = bootstrap_effect(cells, [("A", "B")], reps=20000, level=level, seed=3)
        return e.lo, e.hi

    assert ci(0.4) == (0.5, 0.5) and ci(0.8) == (0.0, 1.0)
    # a fixed generator seed: the same table every time
    wide = {"A": [np.array([1, 0, 0, 1, 1, 0, 1, 0.0])], "B": [np.array([1, 1, 0, 1, 1, 1, 1, 0.0])]}
    assert bootstrap_effect(wide, [("A", "B")], seed=1) == bootstrap_effect(wide, [("A", "B")], seed=1)


def test_episodes_are_resampled_within_seeds_not_across():
    # seed 0 always succeeds, seed 1 always fails: resampling within seeds keeps each seed's mean, so the cell's
    # mean never moves and the interval is a point; pooling the 8 episodes across seeds would spread it.
    cells = {"A": [np.ones(4), np.zeros(4)], "B": [np.ones(4), np.ones(4)]}
    e = bootstrap_effect(cells, [("A", "B")], reps=500)
    assert (e.estimate, e.lo, e.hi) == (0.5, 0.5, 0.5)


def test_empty_cells_give_nan_not_a_number_from_nothing():
    e = bootstrap_effect({"A": [np.array([np.nan])], "B": [np.array([1.0])]}, [("A", "B")])
    assert math.isnan(e.estimate) and e.pairs == 0 and e.text() == "–"


def test_detectable_difference_and_episodes_needed_by_hand():
    # (z_0.975 + z_0.8) · √(2 · 0.25 / 100) = (1.959964 + 0.841621) · 0.0707107 = 0.198100
    assert detectable_difference(100, 0.5) == pytest.approx(0.198100, abs=1e-5)
    # pooling 4 independent pairs halves it
    assert detectable_difference(100, 0.5, pairs=4) == pytest.approx(0.198100 / 2, abs=1e-5)
    # 2.801585² · 0.5 / 0.01 = 392.44 → 393 episodes per arm for 10 points at 50%
    assert episodes_needed(0.10, 0.5) == 393
    text = power_statement(30, 0.8, pairs=4)
    assert "30 episodes per cell" in text and "393 episodes" in text


def test_paired_episodes_are_drawn_together():
    # A = [1, 0], B = [0, 1] on the same two layouts: the per-layout differences are −1 and +1.
    # paired: the effect is the mean of two drawn differences: −1, 0, +1 with 1/4, 1/2, 1/4 → the 30th and 70th
    # percentiles are both 0. Unpaired: each mean is 0, 0.5, 1 (1/4, 1/2, 1/4) independently, so B − A is −1, −0.5, 0,
    # 0.5, 1 with 1/16, 4/16, 6/16, 4/16, 1/16 → the 30th percentile is −0.5 and the 70th is +0.5.
    cells = {"A": [np.array([1.0, 0.0])], "B": [np.array([0.0, 1.0])]}
    paired = bootstrap_effect(cells, [("A", "B")], reps=20000, level=0.4)
    unpaired = bootstrap_effect(cells, [("A", "B")], reps=20000, level=0.4, paired=False)
    assert (paired.lo, paired.hi) == (0.0, 0.0) and (unpaired.lo, unpaired.hi) == (-0.5, 0.5)
