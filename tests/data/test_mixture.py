"""Robot + vision-language mixture by weight: stage-1 batches {'robot', 'vl'} and a countable ratio."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from helpers import episodes

from xr0.data import write_episodes, write_vl_samples
from xr0.data.module import WebDatasetData
from xr0.stages.vlm_cotrain import split_kinds


@pytest.fixture(scope="module")
def cards(tmp_path_factory):
    d = tmp_path_factory.mktemp("mix")
    robot = write_episodes(episodes(n_eps=4, steps=10, size=8), d, "libero_franka", "robot", maxcount=10, progress=False)
    rng = np.random.default_rng(0)
    vl = [{"image": rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), "prompt": f"what is {i}?", "answer": f"{i}"}
          for i in range(20)]
    vl.append({"image": rng.integers(0, 255, (8, 8, 3), dtype=np.uint8),
               "conversations": [{"from": "human", "value": "describe"}, {"from": "gpt", "value": "noise"}]})
    vlc = write_vl_samples(vl, d, "vqa", maxcount=7, progress=False)
    return robot, vlc


def test_mixture_batches_and_observed_ratio(cards):
    robot, vl = cards
    dm = WebDatasetData(cards=[str(robot), str(vl)], weights=[6, 1], batch_size=14, num_workers=0, image_size=8,
                        samples_per_epoch=1400, shuffle_buffer=10)
    n_vl = n_robot = 0
    for b in dm.train_dataloader():
        dm.account(b)
        kinds = dict(split_kinds(b))
        assert set(kinds) <= {"robot", "vl"}
        if "vl" in kinds:
            v = kinds["vl"]
            assert v["images"].shape[1:] == (2, 3, 8, 8) and v["image_mask"][:, 0].all() and not v["image_mask"][:, 1].any()
            assert len(v["prompt"]) == len(v["answer"]) == v["images"].shape[0]
            n_vl += len(v["answer"])
        if "robot" in kinds:
            assert kinds["robot"]["actions"].shape[1:] == (10, 32)
            n_robot += kinds["robot"]["actions"].shape[0]
    assert n_robot + n_vl == 1400  # samples_per_epoch
    ratio = dm.observed_ratio()
    assert ratio["vqa"] == pytest.approx(n_vl / 1400) and ratio["vqa"] == pytest.approx(1 / 7, abs=0.04)
    assert dm.counters["vl"] == n_vl and dm.counters["robot"] == n_robot
    assert dm.embodiment == "libero_franka" and dm.stats is not None


def test_mixture_rejects_too_few_shards_for_the_workers(cards):
    robot, vl = cards
    with pytest.raises(ValueError, match="needs at least 8 per card"):
        WebDatasetData(cards=[str(robot), str(vl)], weights=[6, 1], num_workers=8)


def test_vl_ratio_holds_one_to_six_by_construction(cards):
    """data.vl_ratio "1:6": batches of 14 hold exactly 2 VL and 12 robot samples, batches of 16 hold 2 or 3 with
    the running total exact to one sample — not a weighted draw per sample."""
    from xr0.data.mix import interleave, parse_vl_ratio, vl_count

    robot, vl = cards
    for batch_size in (14, 16):
        dm = WebDatasetData(cards=[str(robot), str(vl)], vl_ratio="1:6", batch_size=batch_size, num_workers=0,
                            image_size=8, samples_per_epoch=batch_size * 20, shuffle_buffer=10)
        n_vl = n_all = 0
        for b in dm.train_dataloader():
            kinds = dict(split_kinds(dm.account(b)))
            got = len(kinds["vl"]["answer"]) if "vl" in kinds else 0
            n_vl, n_all = n_vl + got, n_all + batch_size
            assert got in ({2} if batch_size == 14 else {2, 3})
            assert n_vl == n_all // 7  # the running total: exactly ⌊n/7⌋ VL samples after n samples
        assert n_all == batch_size * 20
    assert parse_vl_ratio("1:6") == parse_vl_ratio(1 / 6) == parse_vl_ratio("0.5:3")
    assert parse_vl_ratio(None) is None and parse_vl_ratio(0) == 0
    for bad in ("1/6:", "one to six", -0.2, "1:0"):
        with pytest.raises(ValueError, match='write VL:robot as "1:6"'):
            parse_vl_ratio(bad)
    # the schedule itself: 700 samples at 1:6 hold exactly 100 VL ones; batches of 2 robot samples get one VL
    # sample every third batch
    stream = interleave(iter(["r"] * 600), iter(["v"] * 100), parse_vl_ratio("1:6"))
    assert [next(stream) for _ in range(700)].count("v") == 100
    assert [vl_count(i, 2, parse_vl_ratio("1:6")) for i in range(9)] == [0, 0, 1, 0, 0, 1, 0, 0, 1]


def test_vl_ratio_without_a_vl_card_is_a_validate_error(cards):
    from xr0.config import RecipeError, validate

    robot, _ = cards
    tree = {"stage": {"name": "vlm_cotrain", "backbone": {"name": "qwen3vl", "tiny": {}},
                      "head": {"name": "choice_policy", "chunk": 10}},
            "data": {"name": "webdataset", "cards": [str(robot)], "vl_ratio": "1:6", "image_size": 8}}
    with pytest.raises(RecipeError, match="vl_ratio: '1:6' asks for vision-language samples but no card in the "
                                          "mixture is `kind: vl`"):
        validate(tree)
    tree["data"]["vl_ratio"] = "one in seven"
    with pytest.raises(RecipeError, match="data: vl_ratio: 'one in seven' is not a ratio"):
        validate(tree)
