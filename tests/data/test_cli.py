"""`xr0 data write|stats|inspect` on generated episodes."""
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from helpers import episodes

from xr0.cli import main
from xr0.data import load_card, load_stats


def test_write_stats_inspect(tmp_path, capsys):
    src = tmp_path / "eps"
    src.mkdir()
    for i, ep in enumerate(episodes(n_eps=2, steps=6, size=12)):
        np.savez(src / f"ep{i}.npz", state=ep["state"], actions=ep["actions"], instruction=np.array(ep["instruction"]),
                 **{f"image.{c}": v for c, v in ep["images"].items()})
    assert main(["data", "write", str(src), "--embodiment", "libero_franka", "--name", "cli", "--out",
                 str(tmp_path / "out"), "--maxcount", "5"]) == 0
    card = tmp_path / "out" / "cli.yaml"
    written = load_stats(load_card(card).stats_path)
    Path(load_card(card).stats_path).unlink()
    assert main(["data", "stats", str(card)]) == 0  # recomputed by streaming the shards
    again = load_stats(load_card(card).stats_path)
    for part in ("actions", "state"):
        for k in ("mean", "std", "q01", "q99"):
            assert np.allclose(written[part][k], again[part][k], atol=1e-5), (part, k)
    capsys.readouterr()
    sheet = tmp_path / "sheet.png"
    assert main(["data", "inspect", str(card), "--sheet", str(sheet)]) == 0
    out = capsys.readouterr().out
    assert "shards      3" in out and "samples     12" in out and '"instruction": "task 0"' in out
    assert Image.open(sheet).size[0] > 2 * 64  # two camera tiles side by side


def test_inspect_missing_card_is_a_clear_error(capsys):
    assert main(["data", "inspect", "no_such_card"]) == 2
    assert "data card 'no_such_card' not found" in capsys.readouterr().err


def test_npz_episodes_record_missing_frames_and_the_reader_masks_them(tmp_path, capsys):
    from xr0.data.module import WebDatasetData

    src = tmp_path / "eps"
    src.mkdir()
    ep = next(iter(episodes(n_eps=1, steps=6, size=12)))
    cams = list(ep["images"])
    valid = np.array([True, False, True, True, False, True])  # the second camera dropped two frames
    np.savez(src / "ep0.npz", state=ep["state"], actions=ep["actions"], instruction=np.array(ep["instruction"]),
             **{f"image.{c}": v for c, v in ep["images"].items()}, **{f"valid.{cams[1]}": valid})
    assert main(["data", "write", str(src), "--embodiment", "libero_franka", "--name", "drop", "--out",
                 str(tmp_path / "out")]) == 0
    card = tmp_path / "out" / "drop.yaml"
    capsys.readouterr()
    assert main(["data", "inspect", str(card), "--sheet", str(tmp_path / "s.png")]) == 0
    assert f"missing     {cams[0]} 0, {cams[1]} 2 frames" in capsys.readouterr().out
    dm = WebDatasetData(card=str(card), batch_size=6, num_workers=0, shuffle_buffer=0, shard_shuffle=0,
                        image_size=12)
    batch = dm.account(next(iter(dm.train_dataloader())))
    assert batch["image_mask"][:, 0].all() and batch["image_mask"][:, 1].tolist() == valid.tolist()
    assert batch["images"][~torch.from_numpy(valid), 1].abs().sum() == 0  # missing: an all-zero frame


def test_write_vl_turns_llava_json_into_a_vl_card_stage1_reads(tmp_path, capsys):
    import json

    from xr0.data.module import WebDatasetData

    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    rng = np.random.default_rng(0)
    records = []
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(img_dir / f"{i}.png")
        records.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": f"<image>\nHow many cups in scene {i}?"}, {"from": "gpt", "value": str(i)}]})
    records.append({"image": "0.png", "prompt": "Is it red?", "answer": "no"})
    src = tmp_path / "vqa.json"
    src.write_text(json.dumps(records))
    assert main(["data", "write-vl", str(src), "--images", str(img_dir), "--name", "vqa", "--out",
                 str(tmp_path / "out"), "--maxcount", "4"]) == 0
    card = load_card(tmp_path / "out" / "vqa.yaml")
    assert card.kind == "vl" and card.num_samples == 6
    robot_src = tmp_path / "eps"
    robot_src.mkdir()
    for i, ep in enumerate(episodes(n_eps=2, steps=6, size=12)):
        np.savez(robot_src / f"ep{i}.npz", state=ep["state"], actions=ep["actions"],
                 instruction=np.array(ep["instruction"]), **{f"image.{c}": v for c, v in ep["images"].items()})
    assert main(["data", "write", str(robot_src), "--embodiment", "libero_franka", "--name", "arm", "--out",
                 str(tmp_path / "out"), "--maxcount", "6"]) == 0
    dm = WebDatasetData(cards=[str(tmp_path / "out" / "arm.yaml"), str(tmp_path / "out" / "vqa.yaml")],
                        vl_ratio="1:1", batch_size=4, num_workers=0, image_size=8, samples_per_epoch=12,
                        shuffle_buffer=0)
    answers, prompts = [], []
    for b in dm.train_dataloader():
        vl = dm.account(b)["vl"]
        answers += vl["answer"]
        prompts += vl["prompt"]
    assert len(answers) == 6 and set(answers) <= {"0", "1", "2", "3", "4", "no"}
    assert all("<image>" not in p for p in prompts) and any(p.startswith("How many cups") for p in prompts)
    capsys.readouterr()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"image": "nope.png", "prompt": "q", "answer": "a"}) + "\n")
    assert main(["data", "write-vl", str(bad), "--name", "bad", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "record 0: image" in err[0] and "nope.png not found (pass --images DIR" in err[0]
    assert not (tmp_path / "bad").exists()  # checked before anything was written
