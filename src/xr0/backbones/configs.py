"""Qwen3-VL configurations: the tiny random one (tests, CPU demo) and the published 4B architecture."""
from __future__ import annotations

from typing import Any

from xr0.backbones.tokenizer import ByteTokenizer


def _merge(base: dict[str, Any], over: dict[str, Any] | None) -> dict[str, Any]:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for k, v in (over or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def tiny_qwen3vl_config(overrides: dict[str, Any] | None = None):
    """A ~1M-parameter Qwen3-VL for tests: byte vocab, 4 text layers, 2 vision blocks; the image ids remapped into
    the byte vocabulary."""
    from transformers import Qwen3VLConfig

    tok = ByteTokenizer()
    base = {
        "text_config": {"vocab_size": tok.vocab_size, "hidden_size": 128, "intermediate_size": 256,
                        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
                        "max_position_embeddings": 4096, "tie_word_embeddings": True,
                        "rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [6, 5, 5],
                                            "mrope_interleaved": True}},
        "vision_config": {"depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2, "patch_size": 14,
                          "temporal_patch_size": 2, "spatial_merge_size": 2, "out_hidden_size": 128,
                          "num_position_embeddings": 256, "deepstack_visual_indexes": [0]},
        "image_token_id": tok.special("<|image_pad|>"), "video_token_id": tok.special("<|video_pad|>"),
        "vision_start_token_id": tok.special("<|vision_start|>"), "vision_end_token_id": tok.special("<|vision_end|>"),
        "tie_word_embeddings": True,
    }
    cfg = _merge(base, overrides)
    hd = cfg["text_config"]["head_dim"]
    if sum(cfg["text_config"]["rope_parameters"]["mrope_section"]) != hd // 2:
        raise ValueError(f"backbone.tiny: text_config.rope_parameters.mrope_section must sum to head_dim/2 = {hd // 2}")
    cfg["vision_config"]["out_hidden_size"] = cfg["text_config"]["hidden_size"]
    return Qwen3VLConfig(**cfg)


def qwen3vl_4b_config():
    """The published Qwen3-VL-4B-Instruct architecture (numbers from the config.json of
    Qwen/Qwen3-VL-4B-Instruct on the Hugging Face hub); random init only."""
    from transformers import Qwen3VLConfig

    return Qwen3VLConfig(
        text_config={"vocab_size": 151936, "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                     "max_position_embeddings": 262144, "tie_word_embeddings": True,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20],
                                         "mrope_interleaved": True}},
        vision_config={"depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16, "patch_size": 16,
                       "temporal_patch_size": 2, "spatial_merge_size": 2, "out_hidden_size": 2560,
                       "num_position_embeddings": 2304, "deepstack_visual_indexes": [5, 11, 17],
                       "hidden_act": "gelu_pytorch_tanh"},
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
        tie_word_embeddings=True,
    )
