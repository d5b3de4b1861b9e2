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
