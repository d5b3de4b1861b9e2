"""`xr0 fit` end to end on WebDataset shards: the example plugin's recipe and card, shrunk to CPU size."""
from pathlib import Path

import torch

from xr0.run import fit

RECIPE = Path(__file__).parents[2] / "plugins" / "xr0-embodiment-example" / "recipes" / "post_train_example_arm.yaml"


def test_fit_post_train_on_the_example_card(tmp_path):
    out = fit(str(RECIPE), [
        "stage.init_from=null", "_tiny_vlm={name: qwen3vl, tiny: {}}", "stage.backbone=${_tiny_vlm}",
        "stage.head.width=32", "stage.head.depth=2", "stage.head.head_dim=32", "stage.head.num_heads=2",
        "data.batch_size=2", "data.num_workers=0", "data.image_size=56", "data.shuffle_buffer=8",
        "trainer.max_steps=2", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32",
        "trainer.strategy=auto", "trainer.enable_progress_bar=false", "run.checkpoint_every_n_steps=2",
        f"run.out_dir={tmp_path / 'run'}"])
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
    assert ckpt["xr0_recipe"]["embodiment"] == "example_arm"
    stats = ckpt["xr0_stats"]
    assert len(stats["actions"]["mean"]) == 30 and sum(stats["action_mask"]) == 7  # per-timestep, 7 valid dims
    assert (out / "recipe.yaml").is_file()
