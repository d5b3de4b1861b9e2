"""A tiny release directory in the released naming and shapes (no download): config.json, two safetensors
shards with an index, preprocessor_config.json with per-robot statistics. The DiT names and shapes are written
out here by hand from the released MiBoTForActionGeneration, independently of xr0/release/keymap.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

D, L, HD, A, S, T = 16, 2, 8, 32, 32, 4
ROBOTS = {"libero_all": 7, "bridge_delta": 7, "pretrain_arm": 14}  # robot_type -> valid action dims

VLM_CONFIG = {
    "model_type": "qwen3_vl",
    "text_config": {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
                    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "rope_theta": 5e6,
                    "rope_scaling": {"rope_type": "default", "mrope_section": [2, 1, 1], "mrope_interleaved": True},
                    "tie_word_embeddings": True},
    "vision_config": {"depth": 2, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2, "patch_size": 14,
                      "temporal_patch_size": 2, "spatial_merge_size": 2, "out_hidden_size": 32,
                      "num_position_embeddings": 16, "deepstack_visual_indexes": [0]},
    "tie_word_embeddings": True, "image_token_id": 60, "video_token_id": 61,
    "vision_start_token_id": 62, "vision_end_token_id": 63,
}
CONFIG = {"architectures": ["MiBoTForActionGeneration"], "model_type": "mibot",
          "auto_map": {"AutoModel": "modeling_mibot.MiBoTForActionGeneration"},
          "vlm_config": VLM_CONFIG,
          "dit_config": {"hidden_size": D, "num_hidden_layers": L, "head_dim": HD, "num_key_value_heads": 2},
          "state_length": 1, "state_dim": S, "action_length": T, "action_dim": A, "torch_dtype": "bfloat16"}


def released_dit_shapes() -> dict[str, tuple[int, ...]]:
    shapes = {
        "sink.weight": (1, D),
        "state_projector.layers.0.weight": (D, S), "state_projector.layers.2.weight": (D, D),
        "action_projector.layers.0.weight": (D, A), "action_projector.layers.2.weight": (D, D),
        "action_output_layer.layers.0.weight": (A, D), "action_output_layer.layers.2.weight": (A, A),
        "t_embedder.mlp.0.weight": (D, 256), "t_embedder.mlp.2.weight": (D, D),
        "t_projector.layers.0.weight": (6 * D, D), "t_projector.layers.0.bias": (6 * D,),
    }
    for i in range(L):
        p = f"dit.layers.{i}."
        shapes.update({
            p + "adaln_table": (6, D),
            p + "input_layernorm.weight": (D,), p + "middle_layernorm.weight": (D,),
            p + "post_layernorm.weight": (D,), p + "final_layernorm.weight": (D,),
            p + "attn.qkv_proj.weight": (3 * D, D), p + "attn.qkv_proj.bias": (3 * D,),
            p + "attn.o_proj.weight": (D, D), p + "attn.q_norm.weight": (HD,), p + "attn.k_norm.weight": (HD,),
            p + "mlp.gate_proj.weight": (4 * D, D), p + "mlp.up_proj.weight": (4 * D, D),
            p + "mlp.down_proj.weight": (D, 4 * D),
        })
    return shapes


def released_tensors(seed: int = 0, vlm_config: dict | None = None) -> dict[str, torch.Tensor]:
    import copy

    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    vlm_config = VLM_CONFIG if vlm_config is None else vlm_config
    cfg = Qwen3VLConfig(**{k: copy.deepcopy(v) for k, v in vlm_config.items() if k != "model_type"})
    with torch.device("meta"):
        vlm = Qwen3VLForConditionalGeneration(cfg)
    shapes = {"vlm." + k: tuple(v.shape) for k, v in vlm.state_dict().items() if k != "lm_head.weight"}  # tied
    shapes.update(released_dit_shapes())
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g).to(torch.bfloat16) for k, s in sorted(shapes.items())}


def action_config() -> dict:
    g = torch.Generator().manual_seed(1)
    out = {}
    for robot, n in ROBOTS.items():
        mean = torch.zeros(T, A)
        std = torch.zeros(T, A)
        mean[:, :n] = torch.randn(T, n, generator=g)
        std[:, :n] = torch.rand(T, n, generator=g) + 0.1
        out[robot] = {"mean": mean.tolist(), "std": std.tolist()}
    return out


def write_release(root: Path, tensors: dict[str, torch.Tensor] | None = None, robots: list[str] | None = None,
                  config: dict | None = None, image_processor: dict | None = None) -> Path:
    from safetensors.torch import save_file

    tensors = released_tensors() if tensors is None else tensors
    root.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    half = len(names) // 2
    weight_map = {}
    for k, part in enumerate((names[:half], names[half:])):
        fname = f"model-{k + 1:05d}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, str(root / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (root / "config.json").write_text(json.dumps(CONFIG if config is None else config))
    ac = {k: v for k, v in action_config().items() if robots is None or k in robots}
    pre = image_processor or {"image_processor_type": "Qwen2VLImageProcessor", "patch_size": 14, "merge_size": 2}
    (root / "preprocessor_config.json").write_text(json.dumps({**pre, "action_config": ac}))
    (root / "processor_config.json").write_text(json.dumps({"processor_class": "MiBotProcessor"}))
    (root / "modeling_mibot.py").write_text("# stands in for the release's remote code\n")
    return root


def tiny_post_train(imp, extra=()):
    """The post_train stage of recipes/post_train_from_release_sync.yaml at the tiny release's sizes, set up as
    Lightning sets it up before training (its `setup` reads `init_from`: the imported release)."""
    from xr0 import config

    overrides = [f"_release={imp}", "embodiment=null", f"_chunk={T}", f"stage.head.width={D}",
                 f"stage.head.depth={L}", f"stage.head.head_dim={HD}", f"stage.head.num_heads={D // HD}",
                 "stage.backbone.tokenizer=null",  # the fixture ships no tokenizer files
                 f"_tiny_data={{name: synthetic, chunk: {T}, batch_size: 2}}",
                 "data=${_tiny_data}", *extra]  # replaces the recipe's data node (a dict would merge into it)
    tree = config.validate(config.load_recipe("recipes/post_train_from_release_sync.yaml", overrides))
    stage = config.build(tree["stage"], "stage")
    stage.setup("fit")
    return stage, tree


@pytest.fixture
def release(tmp_path) -> Path:
    return write_release(tmp_path / "release")
