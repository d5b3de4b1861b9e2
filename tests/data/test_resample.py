import numpy as np
import pytest

from xr0.data import resample, resample_streams, timeline


def test_timeline_is_uniform_30hz():
    tl = timeline(0.0, 1.0)
    assert len(tl) == 31 and np.allclose(np.diff(tl), 1 / 30)


def test_resample_picks_the_nearest_sample():
    ts = np.array([0.0, 0.010, 0.050, 0.100])
    vals = np.array([[0], [1], [2], [3]])
    tl = np.array([0.0, 0.004, 0.006, 0.031, 0.029, 0.2, -1.0])
    assert resample(ts, vals, tl)[:, 0].tolist() == [0, 0, 1, 2, 1, 3, 0]


def test_resample_against_brute_force():
    rng = np.random.default_rng(0)
    ts = np.sort(rng.uniform(0, 2, 57))
    tl = timeline(0.1, 1.9)
    brute = np.abs(tl[:, None] - ts[None, :]).argmin(1)
    assert np.array_equal(resample(ts, np.arange(57), tl), brute)


def test_streams_of_different_rates_share_one_timeline():
    cam = (np.arange(0, 2, 1 / 15), np.arange(30))  # 15 Hz camera
    joints = (np.arange(0.05, 2, 1 / 100), np.arange(195))  # 100 Hz joints, starts later
    tl, out = resample_streams({"cam": cam, "joints": joints}, hz=30)
    assert tl[0] == pytest.approx(0.05) and np.allclose(np.diff(tl), 1 / 30)
    assert len(out["cam"]) == len(out["joints"]) == len(tl)
    assert np.all(np.abs(cam[0][out["cam"]] - tl) <= 1 / 30 + 1e-9)


def test_unsorted_timestamps_are_an_error():
    with pytest.raises(ValueError, match="sorted"):
        resample(np.array([0.0, 2.0, 1.0]), np.zeros(3), np.array([0.5]))
