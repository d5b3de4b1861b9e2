"""The training chunk figure: every action dimension, named by the embodiment, in robot units, prefix shaded."""
from __future__ import annotations

import numpy as np
import torch

from xr0.embodiments import get
from xr0.plugins import load_plugins
from xr0.plots import chunk_figure, robot_units
from xr0.processor import ImageSpec, Processor

T = 5


def _processor():
    rng = np.random.default_rng(0)
    load_plugins()  # lab_arm comes from the example plugin; outside the CLI and fit, Python code loads them
    emb = get("lab_arm")  # 6 relative joints + an absolute gripper, 8-D state
    return Processor(emb, ImageSpec(size=(28, 28), factor=28), T, rng.normal(0.1, 0.2, (T, 32)),
                     rng.uniform(0.5, 2.0, (T, 32)), rng.normal(1.0, 0.5, 32), rng.uniform(0.5, 2.0, 32))


class _Stage:
    def __init__(self, proc):
        self.xr0_processor = proc


def test_chunks_are_drawn_in_robot_units_with_the_embodiments_names():
    proc = _processor()
    raw = np.array([1.2, -0.6, 0.9, -1.5, 0.4, 2.0, 0.7, 12.0], np.float32)
    state = torch.from_numpy(proc.state(raw))[None]  # what a training batch carries
    future = np.column_stack([np.linspace(1.0, 1.5, T)[:, None] + np.zeros((1, 6)), np.full(T, 0.3)])
    true = torch.from_numpy(proc.actions(future.astype(np.float32), raw)[0])[None]
    pred = true + 0.1
    p, t, names, units = robot_units(_Stage(proc), pred, true, {"state": state})
    assert names == list(get("lab_arm").action_names) and units == "robot units"
    np.testing.assert_allclose(t, future, atol=1e-5)  # the true chunk comes back as the robot's own numbers
    assert np.all(np.abs(p - t) > 1e-3)
    fig = chunk_figure(p, t, names, prefix_len=2, units=units)
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in titled] == names  # every dimension, the gripper (past dim 3) too
    np.testing.assert_allclose(titled[6].lines[0].get_ydata(), future[:, 6])
    assert all(ax.patches for ax in titled)  # the prefix is shaded on every panel


def test_without_a_processor_the_valid_canonical_dims_are_drawn():
    mask = torch.zeros(1, 32, dtype=torch.bool)
    mask[0, [0, 5, 9]] = True
    p, t, names, units = robot_units(object(), torch.randn(1, T, 32), torch.randn(1, T, 32), {"action_mask": mask})
    assert names == ["dim 0", "dim 5", "dim 9"] and p.shape == (T, 3) and units == "normalised"
