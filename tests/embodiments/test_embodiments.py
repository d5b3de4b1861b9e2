"""Embodiment dataclass: canonical 32-dim mapping, relative actions, and a check() that names each problem."""
import dataclasses

import numpy as np
import pytest

from xr0 import embodiments
from xr0.embodiments import Embodiment, EmbodimentError, check

STOCK = {"libero_franka": (7, 10), "calvin": (7, 10), "simpler_widowx": (7, 4), "bimanual_30hz": (14, 30)}


def _arm(**kw):
    base = {"name": "t", "action_names": ("a", "b", "g"), "state_names": ("a", "b", "g"), "cameras": ("c",),
                "control_hz": 10.0, "chunk": 5, "action_low": (-1.0,) * 3, "action_high": (1.0,) * 3}
    return Embodiment(**{**base, **kw})


@pytest.mark.parametrize("name", sorted(STOCK))
def test_stock_dims_and_chunks(name):
    emb = embodiments.get(name)
    assert (emb.action_dim, emb.chunk) == STOCK[name] and emb.name == name
    assert emb.action_mask().sum() == emb.action_dim


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        embodiments.get("calvin").chunk = 3


def test_canonical_slots_round_trip():
    emb = _arm(action_slots=(5, 0, 31), state_slots=(2, 3, 4))
    check(emb)
    x = np.array([[0.1, 0.2, 0.3]], np.float32)
    c = emb.to_canonical(x)
    assert c.shape == (1, 32) and c[0, 5] == pytest.approx(0.1) and c[0, 31] == pytest.approx(0.3)
    assert np.flatnonzero(emb.action_mask()).tolist() == [0, 5, 31]
    assert np.allclose(emb.from_canonical(c), x)
    assert emb.to_canonical(x, "state")[0, 2:5].tolist() == pytest.approx([0.1, 0.2, 0.3])


def test_relative_dims_only():
    emb = _arm(relative=(True, True, False), relative_state_index=(1, 0, 2))
    check(emb)
    acts, state = np.array([[1.0, 2.0, 0.5]]), np.array([10.0, 20.0, 30.0])
    rel = emb.to_relative(acts, state)
    assert rel.tolist() == [[1.0 - 20.0, 2.0 - 10.0, 0.5]]  # gripper stays absolute
    assert np.allclose(emb.to_absolute(rel, state), acts)


def test_bimanual_grippers_absolute_joints_relative():
    emb = embodiments.get("bimanual_30hz")
    assert [n for n, r in zip(emb.action_names, emb.relative) if not r] == ["left_gripper", "right_gripper"]
    assert emb.control_hz == 30.0 and len(emb.cameras) == 3


@pytest.mark.parametrize("kw, msg", [
    ({"action_low": (-1.0,) * 2}, "action_low: 2 values for 3 action dims"),
    ({"action_high": (1.0, -2.0, 1.0)}, "action_low must be below action_high"),
    ({"action_names": ("a", "a", "g")}, "duplicate names"),
    ({"relative": (True,)}, "relative: 1 flags for 3 action dims"),
    ({"relative": (True, True, True), "state_names": ("g",)}, "need relative_state_index"),
    ({"action_slots": (0, 0, 1)}, "action_slots: must be 3 distinct indices"),
    ({"action_slots": (0, 1, 32)}, "action_slots: must be 3 distinct indices in 0..31"),
    ({"control_hz": 0.0}, "control_hz must be positive"),
    ({"chunk": 0}, "chunk must be >= 1"),
    ({"cameras": ()}, "name at least one camera"),
    ({"action_names": tuple(f"j{i}" for i in range(33)), "action_low": (-1.0,) * 33, "action_high": (1.0,) * 33},
     "33 dims; must be 1..32"),
])
def test_check_names_the_problem(kw, msg):
    with pytest.raises(EmbodimentError, match="fails the conformance check") as err:
        check(_arm(**kw))
    assert msg in str(err.value)


def test_check_catches_a_broken_mapping():
    @dataclasses.dataclass(frozen=True)
    class Broken(Embodiment):
        def from_canonical(self, x, kind="action"):  # drops the sign: no round trip
            return np.abs(super().from_canonical(x, kind))

    with pytest.raises(EmbodimentError, match="do not round-trip"):
        check(Broken(**{f.name: getattr(_arm(), f.name) for f in dataclasses.fields(Embodiment)}))


def test_unknown_name_suggests():
    with pytest.raises(KeyError, match="Did you mean 'calvin'"):
        embodiments.get("calvinn")
