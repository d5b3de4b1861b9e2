"""xr0.processor: each conversion checked against values computed by hand, with statistics that are not 0/1."""
from __future__ import annotations

import numpy as np
import pytest

from xr0.embodiments import Embodiment, EmbodimentError
from xr0.processor import (ImageSpec, ObservationError, OutputError, Processor, as_uint8_image, canonical_chunk,
                           smart_size)

T = 3


def arm(**kw) -> Embodiment:
    """3 relative joints + an absolute gripper, a 5-D state (joints, gripper, force), two cameras; odd slots."""
    base = dict(name="proc_arm", action_names=("j0", "j1", "j2", "grip"), state_names=("q0", "q1", "q2", "g", "f"),
                cameras=("scene", "wrist"), control_hz=15.0, chunk=T, action_low=(-2.0, -2.0, -2.0, 0.0),
                action_high=(2.0, 2.0, 2.0, 1.0), relative=(True, True, True, False),
                relative_state_index=(0, 1, 2, 3), action_slots=(4, 5, 6, 9), state_slots=(0, 1, 2, 3, 7))
    return Embodiment(**{**base, **kw})


def processor(**kw) -> Processor:
    rng = np.random.default_rng(0)
    a_mean = rng.normal(0.3, 0.2, (T, 32)).astype(np.float32)
    a_std = rng.uniform(0.5, 2.5, (T, 32)).astype(np.float32)
    s_mean = rng.normal(1.0, 0.5, 32).astype(np.float32)
    s_std = rng.uniform(0.2, 3.0, 32).astype(np.float32)
    return Processor(kw.pop("embodiment", arm()), kw.pop("image", ImageSpec(size=(28, 56), factor=28)), T,
                     a_mean, a_std, s_mean, s_std, **kw)


def test_state_is_laid_out_and_normalised_as_computed_by_hand():
    p = processor()
    raw = np.array([0.5, -1.25, 2.0, 0.8, 13.0], np.float32)
    got = p.state(raw)
    slots = [0, 1, 2, 3, 7]
    want = np.zeros(32, np.float32)
    want[slots] = (raw - p.state_mean[slots]) / p.state_std[slots]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert np.count_nonzero(got) == 5  # padding stays zero whatever the statistics say


def test_state_far_from_the_training_mean_is_refused_with_its_name():
    p = processor()
    raw = np.array([0.5, -1.25, 2.0, 0.8, 13.0], np.float32)
    raw[4] = p.state_mean[7] + 150 * p.state_std[7]
    with pytest.raises(ObservationError, match=r"state: f = .* std from the training mean \(bound 100\)"):
        p.observation({"state": raw, "images": {}})
    with pytest.raises(ObservationError, match="expected 5 values"):
        p.observation({"state": np.zeros(4), "images": {}})
    with pytest.raises(ObservationError, match="NaN or inf"):
        p.observation({"state": [0, 0, np.inf, 0, 0]})


def test_actions_are_relative_normalised_and_decode_back_to_robot_units():
    p = processor()
    state = np.array([0.5, -1.0, 1.5, 0.2, 9.0], np.float32)
    future = np.array([[0.6, -0.9, 1.4, 1.0], [0.7, -0.8, 1.3, 0.0]], np.float32)  # 2 steps left in the episode
    x, valid = p.actions(future, state)
    assert valid.tolist() == [True, True, False]
    rel = future.copy()
    rel[:, :3] -= state[:3]  # joints relative to the state at frame t, gripper absolute
    rel = np.vstack([rel, rel[-1]])  # the last action repeated past the episode end
    slots = [4, 5, 6, 9]
    want = (rel - p.action_mean[:, slots]) / p.action_std[:, slots]
    np.testing.assert_allclose(x[:, slots], want, rtol=1e-5, atol=1e-6)
    assert np.count_nonzero(np.delete(x, slots, axis=1)) == 0
    back, clipped = p.decode(x, state)
    np.testing.assert_allclose(back[:2], future, atol=1e-5)
    assert clipped == 0
    delta, _ = p.decode(x, state, frame="delta")
    np.testing.assert_allclose(delta[:2, :3], future[:, :3] - state[:3], atol=1e-5)
    np.testing.assert_allclose(delta[:2, 3], future[:, 3], atol=1e-5)  # the absolute gripper stays absolute


def test_decode_clips_to_the_limits_and_counts_and_refuses_non_finite():
    p = processor()
    state = np.zeros(5, np.float32)
    x = np.zeros((T, 32), np.float32)
    x[:, 9] = (1.7 - p.action_mean[:, 9]) / p.action_std[:, 9]  # gripper 1.7 > its limit 1
    x[0, 4] = (-3.0 - p.action_mean[0, 4]) / p.action_std[0, 4]  # joint 0 at -3 < -2
    out, clipped = p.decode(x, state)
    assert clipped == T + 1 and np.all(out[:, 3] == 1.0) and out[0, 0] == -2.0
    x[1, 5] = np.nan
    with pytest.raises(OutputError, match="1 non-finite"):
        p.decode(x, state)


def test_prefix_in_either_frame_encodes_like_the_training_targets():
    p = processor()
    state = np.array([0.5, -1.0, 1.5, 0.2, 9.0], np.float32)
    future = np.array([[0.6, -0.9, 1.4, 1.0], [0.7, -0.8, 1.3, 0.0]], np.float32)
    targets, _ = p.actions(future, state)
    np.testing.assert_allclose(p.prefix(future, state), targets[:2], atol=1e-6)
    delta = future.copy()
    delta[:, :3] -= state[:3]
    np.testing.assert_allclose(p.prefix(delta, state, frame="delta"), targets[:2], atol=1e-6)
    with pytest.raises(ObservationError, match="far outside the limits"):
        p.prefix(np.full((1, 4), 1e6), state)
    with pytest.raises(ObservationError, match=r"expected \(P, 4\)"):
        p.prefix(np.zeros((1, 3)), state)
    with pytest.raises(ObservationError, match="longer than the chunk"):
        p.prefix(np.zeros((T + 1, 4)), state)


def test_images_any_native_size_letterboxed_and_missing_means_one_thing():
    p = processor()
    wide = np.zeros((120, 480, 3), np.uint8)  # 1:4, the model size is 1:2
    wide[:, :, 0] = 200
    obs = {"state": np.zeros(5), "images": {"scene": wide, "wrist": None}}
    s = p.observation(obs)
    assert s["images"].shape == (2, 28, 56, 3) and s["image_mask"].tolist() == [True, False]
    rows = s["images"][0, :, :, 0].max(axis=1)
    assert rows[0] == 0 and rows[-1] == 0 and rows[14] == 200  # black bars above and below: the aspect is kept
    assert not s["images"][1].any()  # the missing camera is a black frame
    omitted = p.observation({"state": np.zeros(5), "images": {"scene": wide}})
    assert all(np.array_equal(s[k], omitted[k]) for k in ("images", "image_mask", "state"))
    stretched = processor(image=ImageSpec(size=(28, 56), resize="stretch", factor=28)).observation(obs)
    assert stretched["images"][0, :, :, 0].min() == 200  # no bars
    with pytest.raises(ObservationError, match=r"unknown cameras \['top'\]; this policy uses \['scene', 'wrist'\]"):
        p.observation({"state": np.zeros(5), "images": {"top": wide}})


def test_openpi_keys_and_float_images():
    p = processor()
    img = np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    a = p.observation({"state": np.zeros(5), "images": {"scene": img}, "prompt": "stack"})
    b = p.observation({"observation/state": np.zeros(5), "observation/scene": (img / 255.0).astype(np.float32),
                       "prompt": "stack"})
    assert np.array_equal(a["images"], b["images"]) and a["instruction"] == b["instruction"] == "stack"
    assert np.array_equal(as_uint8_image(img.transpose(2, 0, 1), "x"), img)  # CHW accepted
    with pytest.raises(ObservationError, match=r"float image must hold values in \[0, 1\]"):
        p.observation({"state": np.zeros(5), "images": {"scene": np.full((4, 4, 3), 1e30, np.float32)}})


def test_smart_size_follows_qwen_and_size_rule_names_the_fix():
    assert smart_size(240, 320, 28, 56 * 56, 28 * 28 * 1280) == (252, 308)  # nearest multiples of 28
    assert smart_size(240, 320, 28, 56 * 56, 100 * 100) == (84, 112)  # over budget: scaled down, aspect kept
    with pytest.raises(ValueError, match=r"image size 30x56 must be positive multiples .* = 28: use e.g. 28x56"):
        ImageSpec(size=(30, 56), factor=28)
    smart = processor(image=ImageSpec(size=None, resize="stretch", factor=28, max_pixels=100 * 100))
    s = smart.observation({"state": np.zeros(5), "images": {"scene": np.zeros((240, 320, 3), np.uint8)}})
    assert s["images"].shape[1:3] == (84, 112)
    with pytest.raises(ObservationError, match="resize to different sizes"):
        smart.observation({"state": np.zeros(5), "images": {"scene": np.zeros((240, 320, 3), np.uint8),
                                                            "wrist": np.zeros((100, 100, 3), np.uint8)}})


def test_round_trip_through_a_checkpoint_dict_and_changed_embodiments():
    from xr0.plugins import load_plugins
    from xr0.registry import EMBODIMENTS

    load_plugins()  # example_arm comes from the example plugin
    p = processor(frame="delta")
    q = Processor.from_dict(p.to_dict())
    for k in ("action_mean", "action_std", "state_mean", "state_std", "action_mask"):
        assert np.array_equal(getattr(p, k), getattr(q, k)), k
    assert q.embodiment == p.embodiment and q.image == p.image and q.frame == "delta" and q.cameras == p.cameras
    # a registered embodiment whose fields changed since training is refused by name
    d = p.to_dict()
    d["embodiment"] = {**d["embodiment"], "name": "example_arm"}
    with pytest.raises(EmbodimentError, match="example_arm' differs from the one this model was trained with"):
        Processor.from_dict(d)
    assert "proc_arm" not in EMBODIMENTS  # an unregistered one is rebuilt from the recorded fields


def test_statistics_must_be_finite_and_cover_the_chunk():
    emb = arm()
    bad = {"actions": {"mean": np.zeros((T, 32)), "std": np.full((T, 32), np.nan)}, "state": None}
    with pytest.raises(ValueError, match="action std statistics hold NaN"):
        Processor.from_stats(emb, bad, T, ImageSpec(size=(28, 28), factor=28))
    short = {"actions": {"mean": np.zeros((2, 32)), "std": np.ones((2, 32))}, "state": None}
    with pytest.raises(ValueError, match="cover 2 chunk steps, the recipe asks for 3"):
        Processor.from_stats(emb, short, T, ImageSpec(size=(28, 28), factor=28))


def test_canonical_chunk_is_what_statistics_are_computed_on():
    emb = arm()
    state = np.array([1.0, 2.0, 3.0, 0.5, 0.0], np.float32)
    rel, valid = canonical_chunk(emb, np.array([[1.5, 2.5, 3.5, 1.0]], np.float32), state, 2)
    assert valid.tolist() == [True, False]
    np.testing.assert_allclose(rel[:, [4, 5, 6, 9]], [[0.5, 0.5, 0.5, 1.0]] * 2)


def test_validate_checks_the_image_size_rule_before_any_training(capsys):
    from xr0.cli import main

    assert main(["validate", "recipes/tiny/stage2.yaml", "--set", "data.image_size=30"]) == 1
    out = capsys.readouterr().out
    assert "data.image_size: image size 30x30 must be positive multiples of the backbone's patch*merge = 28" in out
    assert main(["validate", "recipes/tiny/stage2.yaml", "--set", "data.image_size=56"]) == 0


# ---------------------------------------------------------------- geometry, edges and tolerances, by hand
def _bbox(img: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the non-black pixels, inclusive."""
    rows, cols = np.nonzero(img.max(axis=2))
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


@pytest.mark.parametrize("h, w, box", [
    (10, 40, (7, 20, 0, 55)),  # wide: scale min(28/10, 56/40) = 1.4 → 14×56, centred: rows 7..20
    (40, 10, (0, 27, 24, 30)),  # tall: scale 0.7 → 28×7, centred: columns (56-7)//2 = 24..30
    (1, 200, (13, 13, 0, 55)),  # a 1-pixel line: height rounds to 0 and is kept at 1 pixel, row (28-1)//2 = 13
    (200, 1, (0, 27, 27, 27)),  # a 1-pixel column: width kept at 1 pixel, column (56-1)//2 = 27
])
def test_letterbox_scales_to_fit_and_centres_as_computed_by_hand(h, w, box):
    spec = ImageSpec(size=(28, 56), factor=28, resample="nearest")
    out = spec.fit(np.full((h, w, 3), 180, np.uint8))
    assert out.shape == (28, 56, 3) and _bbox(out) == box
    assert out[box[0]:box[1] + 1, box[2]:box[3] + 1].min() == 180  # the picture fills its box


def test_an_observation_with_every_camera_missing_is_black_at_the_model_size():
    s = processor().observation({"state": np.zeros(5), "images": {"scene": None}})
    assert s["images"].shape == (2, 28, 56, 3) and not s["images"].any() and not s["image_mask"].any()


def test_an_episode_without_future_actions_pads_with_zero_targets():
    emb = arm()
    state = np.array([1.0, 2.0, 3.0, 0.5, 0.0], np.float32)
    rel, valid = canonical_chunk(emb, np.zeros((0, 4), np.float32), state, 2)
    assert not valid.any()
    np.testing.assert_allclose(rel[:, [4, 5, 6, 9]], [[-1.0, -2.0, -3.0, 0.0]] * 2)  # absolute 0, made relative


def test_statistics_given_once_apply_to_every_chunk_step_and_a_zero_std_normalises_by_one():
    rng = np.random.default_rng(2)
    mean, std = rng.normal(0.2, 0.3, 32).astype(np.float32), rng.uniform(0.5, 2.0, 32).astype(np.float32)
    std[9] = 0.0  # a constant gripper in the data
    p = Processor(arm(), ImageSpec(size=(28, 56), factor=28), T, mean, std)
    assert p.action_mean.shape == (T, 32) and np.all(p.action_mean == mean) and np.all(p.action_std[:, 4] == std[4])
    assert np.all(p.action_std[:, 9] == 1.0)
    x, _ = p.actions(np.array([[0.6, -0.9, 1.4, 1.0]], np.float32), np.zeros(5, np.float32))
    np.testing.assert_allclose(x[:, 9], 1.0 - mean[9], rtol=1e-6)  # (a − mean) / 1
    floor = Processor(arm(), ImageSpec(size=(28, 56), factor=28), T, mean, np.full(32, 1e-6, np.float32))
    assert np.all(floor.action_std == np.float32(1e-6))  # at the floor is not below it


def test_state_exactly_at_the_bound_is_accepted():
    mean, std = np.full(32, 0.25, np.float32), np.full(32, 0.5, np.float32)
    p = Processor(arm(), ImageSpec(size=(28, 56), factor=28), T, np.zeros((T, 32)), np.ones((T, 32)), mean, std)
    raw = np.array([0.0, 0.0, 0.0, 0.0, 50.25], np.float32)  # (50.25 − 0.25) / 0.5 = 100 std: the bound itself
    assert p.state(raw)[7] == 100.0
    with pytest.raises(ObservationError, match="std from the training mean"):
        p.state(np.array([0.0, 0.0, 0.0, 0.0, 50.5], np.float32))


def test_model_state_back_to_robot_units():
    p = processor()
    raw = np.array([0.5, -1.25, 2.0, 0.8, 13.0], np.float32)
    np.testing.assert_allclose(p.raw_from_model_state(p.state(raw)), raw, rtol=1e-5)
    plain = Processor(arm(), ImageSpec(size=(28, 56), factor=28), T, np.zeros((T, 32)), np.ones((T, 32)))
    canon = plain.state(raw)  # no state statistics: the raw state in the canonical layout
    np.testing.assert_array_equal(plain.raw_from_model_state(canon), raw)


def test_prefix_limits_are_one_range_beyond_each_limit():
    """A committed action ran on the robot, so it is within its limits up to slack of one range (joints [-2, 2]:
    [-6, 6]; gripper [0, 1]: [-1, 2]); one value past that, or one NaN, refuses the prefix."""
    p, state = processor(), np.zeros(5, np.float32)
    ok = np.array([[-6.0, 5.9, 0.0, 2.0], [0.1, 0.2, 0.3, -1.0]])
    assert p.prefix(ok, state).shape == (2, 32)
    assert p.prefix(np.zeros((T, 4)), state).shape == (T, 32)  # a whole chunk may be committed
    for i, j, v in ((0, 0, -6.1), (1, 3, 2.05), (0, 2, 6.2), (1, 3, -1.1)):
        bad = ok.copy()
        bad[i, j] = v
        with pytest.raises(ObservationError, match="far outside the limits"):
            p.prefix(bad, state)
    nan = ok.copy()
    nan[1, 2] = np.nan
    with pytest.raises(ObservationError, match="prefix_actions: NaN or inf"):
        p.prefix(nan, state)


def _encode(p: Processor, actions: np.ndarray) -> np.ndarray:
    """Model output that decodes to `actions` (T, 4) in robot units (zero state: relative = absolute)."""
    x = np.zeros((T, 32))
    for j, slot in enumerate((4, 5, 6, 9)):
        x[:, slot] = (actions[:, j] - p.action_mean[:, slot].astype(np.float64)) / p.action_std[:, slot]
    return x


def test_clip_count_forgives_rounding_of_a_millionth_of_the_range_only():
    """Values past a limit by less than 1e-6 × max(range, 1) are clipped silently (float rounding); further ones are
    clipped and counted. Joints span 4 (tolerance 4e-6), the gripper 1 (tolerance 1e-6)."""
    p, state = processor(), np.zeros(5, np.float32)
    a = np.full((T, 4), 0.5)
    a[0, 0] = 2.0 + 2e-6  # joint: inside its tolerance
    a[1, 3] = 1.0 + 0.5e-6  # gripper: inside its tolerance
    out, clipped = p.decode(_encode(p, a), state)
    assert clipped == 0 and out[0, 0] == 2.0 and out[1, 3] == 1.0
    a[0, 0] = 2.0 + 8e-6  # joint: past 4e-6
    a[2, 3] = 1.0 + 1.6e-6  # gripper: past 1e-6
    a[1, 1] = -2.0 - 9e-6
    assert p.decode(_encode(p, a), state)[1] == 3
