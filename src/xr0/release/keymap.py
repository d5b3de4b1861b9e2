"""The one table between the released Xiaomi-Robotics-0 tensor names and xr0's, used both ways.

Each row: released name pattern, xr0 name pattern, expected shape. Patterns hold `{i}` (a DiT layer index)
or `{hf}` (the rest of a Hugging Face Qwen3-VL parameter name, passed through unchanged). Shapes are
symbolic over the release's config.json:

  D  = dit_config.hidden_size     Hd = dit_config.head_dim     L = dit_config.num_hidden_layers
  A  = action_dim                 S  = state_dim               F = 256 (sinusoid width of the τ embedding)

VLM rows have no symbolic shape: their shapes come from building transformers' Qwen3-VL from the release's
`vlm_config` on the meta device (see `vlm_shapes`), so every VLM key is checked too.

Released layout (read in the checkpoint's remote code, modeling_mibot.py, `MiBoTForActionGeneration`):
projectors are Linear→GELU(tanh)→Linear without bias; the output MLP's hidden width is A (not D); the τ path is
sinusoid(256)→Linear→SiLU→Linear (no bias) then ONE Linear D→6D with bias (no SiLU before it); each DiT layer
has four RMSNorms (before attention, after the attention residual, before the MLP, after the MLP residual) and
a learnable (6, D) adaLN table added to the projected τ.

If the xr0 DiT head or backbone renames a parameter, change the xr0 column here and nothing else.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# Where the Hugging Face model sits inside an xr0 stage's state_dict, and where it sits in the release.
# xr0: the stage's `backbone` attribute holds the adapter, whose `model` is Qwen3VLForConditionalGeneration.
XR0_VLM_PREFIX = "backbone.model."
RELEASE_VLM_PREFIX = "vlm."
# The xr0 DiT action expert: the stage's `head` attribute (HEADS `dit`).
XR0_HEAD_PREFIX = "head."

FREQ_DIM = 256  # width of the sinusoidal τ embedding in the release (TimestepEmbedder default)


@dataclass(frozen=True)
class Rule:
    release: str
    xr0: str
    shape: tuple[str, ...] | None  # symbolic dims; None: a VLM row, shape from the HF model


H = XR0_HEAD_PREFIX
RULES: tuple[Rule, ...] = (
    # ---- token embeddings in and out of the DiT
    Rule("sink.weight", H + "sink", ("1", "D")),  # SINK: nn.Embedding(1, D) in the release
    Rule("state_projector.layers.0.weight", H + "state_mlp.0.weight", ("D", "S")),
    Rule("state_projector.layers.2.weight", H + "state_mlp.2.weight", ("D", "D")),
    Rule("action_projector.layers.0.weight", H + "action_mlp.0.weight", ("D", "A")),
    Rule("action_projector.layers.2.weight", H + "action_mlp.2.weight", ("D", "D")),
    Rule("action_output_layer.layers.0.weight", H + "out_mlp.0.weight", ("A", "D")),
    Rule("action_output_layer.layers.2.weight", H + "out_mlp.2.weight", ("A", "A")),
    # ---- τ → adaLN: sinusoid(τ·1000) → Linear-SiLU-Linear → Linear to 6·D
    Rule("t_embedder.mlp.0.weight", H + "t_mlp.0.weight", ("D", "F")),
    Rule("t_embedder.mlp.2.weight", H + "t_mlp.2.weight", ("D", "D")),
    Rule("t_projector.layers.0.weight", H + "t_proj.weight", ("6*D", "D")),
    Rule("t_projector.layers.0.bias", H + "t_proj.bias", ("6*D",)),
    # ---- DiT layers (layer i reads the K/V of VLM layer n_vlm - L + i)
    Rule("dit.layers.{i}.adaln_table", H + "blocks.{i}.adaln_table", ("6", "D")),
    Rule("dit.layers.{i}.input_layernorm.weight", H + "blocks.{i}.attn_norm_in.weight", ("D",)),
    Rule("dit.layers.{i}.middle_layernorm.weight", H + "blocks.{i}.attn_norm_out.weight", ("D",)),
    Rule("dit.layers.{i}.post_layernorm.weight", H + "blocks.{i}.mlp_norm_in.weight", ("D",)),
    Rule("dit.layers.{i}.final_layernorm.weight", H + "blocks.{i}.mlp_norm_out.weight", ("D",)),
    Rule("dit.layers.{i}.attn.qkv_proj.weight", H + "blocks.{i}.attn.qkv.weight", ("3*D", "D")),
    Rule("dit.layers.{i}.attn.qkv_proj.bias", H + "blocks.{i}.attn.qkv.bias", ("3*D",)),
    Rule("dit.layers.{i}.attn.o_proj.weight", H + "blocks.{i}.attn.out.weight", ("D", "D")),
    Rule("dit.layers.{i}.attn.q_norm.weight", H + "blocks.{i}.attn.q_norm.weight", ("Hd",)),
    Rule("dit.layers.{i}.attn.k_norm.weight", H + "blocks.{i}.attn.k_norm.weight", ("Hd",)),
    Rule("dit.layers.{i}.mlp.gate_proj.weight", H + "blocks.{i}.mlp.gate.weight", ("4*D", "D")),
    Rule("dit.layers.{i}.mlp.up_proj.weight", H + "blocks.{i}.mlp.up.weight", ("4*D", "D")),
    Rule("dit.layers.{i}.mlp.down_proj.weight", H + "blocks.{i}.mlp.down.weight", ("D", "4*D")),
    # ---- the VLM: Hugging Face names unchanged under a different prefix
    Rule(RELEASE_VLM_PREFIX + "{hf}", XR0_VLM_PREFIX + "{hf}", None),
)

# Buffers the release code recomputes at load time; tolerated in a release file, never written.
IGNORED_RELEASE_KEYS = re.compile(r"(^|\.)rotary_emb\.inv_freq$|(^|\.)rotary_pos_emb\.inv_freq$")


class KeyMapError(ValueError):
    """A tensor name or shape that does not fit the released layout; the message names the key."""


def _compile(pattern: str) -> re.Pattern[str]:
    out = re.escape(pattern).replace(re.escape("{i}"), r"(?P<i>\d+)").replace(re.escape("{hf}"), r"(?P<hf>.+)")
    return re.compile(out + r"\Z")


_FWD = [(rule, _compile(rule.release)) for rule in RULES]
_BWD = [(rule, _compile(rule.xr0)) for rule in RULES]


def _translate(name: str, table, target: str) -> tuple[str, Rule] | None:
    for rule, rx in table:
        m = rx.match(name)
        if m:
            return getattr(rule, target).format(**m.groupdict()), rule
    return None


def to_xr0(release_name: str) -> tuple[str, Rule] | None:
    """Released name -> (xr0 name, rule), or None when no row matches."""
    return _translate(release_name, _FWD, "xr0")


def to_release(xr0_name: str) -> tuple[str, Rule] | None:
    """xr0 name -> (released name, rule), or None when no row matches."""
    return _translate(xr0_name, _BWD, "release")


# ---------------------------------------------------------------- shapes
def dims(config: dict[str, Any]) -> dict[str, int]:
    """The symbols of the shape column, from a release config.json."""
    try:
        dit = config["dit_config"]
        return {"D": int(dit["hidden_size"]), "Hd": int(dit["head_dim"]), "L": int(dit["num_hidden_layers"]),
                "A": int(config["action_dim"]), "S": int(config["state_dim"]), "F": FREQ_DIM}
    except KeyError as exc:
        raise KeyMapError(f"config.json: missing {exc.args[0]!r} (needed for the DiT shapes)") from exc


def eval_shape(shape: Iterable[str], d: dict[str, int]) -> tuple[int, ...]:
    """("3*D", "D") with D=1024 -> (3072, 1024). Products of integers and symbols only."""
    out = []
    for dim in shape:
        n = 1
        for part in dim.split("*"):
            n *= int(part) if part.isdigit() else d[part]
        out.append(n)
    return tuple(out)


def vlm_shapes(vlm_config: dict[str, Any]) -> tuple[dict[str, tuple[int, ...]], bool]:
    """HF parameter name -> shape of transformers' Qwen3-VL built from `vlm_config` (meta device, no memory),
    and whether lm_head is tied to the input embeddings (then a release may omit it)."""
    import copy

    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    # deep copy: transformers rewrites nested dicts in place (rope_scaling gains rope_theta), which would
    # leak into the config.json an export writes back
    cfg_dict = {k: copy.deepcopy(v) for k, v in vlm_config.items()
                if k not in ("architectures", "model_type", "transformers_version")}
    try:
        cfg = Qwen3VLConfig(**cfg_dict)
    except Exception as exc:
        raise KeyMapError(f"config.json: vlm_config is not a Qwen3-VL config transformers can read: {exc}") from exc
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(cfg)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return shapes, bool(getattr(cfg, "tie_word_embeddings", False))


def expected_release_shapes(config: dict[str, Any]) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """Every released tensor name with its shape, for this config; and the names a release may omit
    (a tied lm_head)."""
    d = dims(config)
    out: dict[str, tuple[int, ...]] = {}
    for rule in RULES:
        if rule.shape is None:
            continue
        names = [rule.release.format(i=i) for i in range(d["L"])] if "{i}" in rule.release else [rule.release]
        for name in names:
            out[name] = eval_shape(rule.shape, d)
    hf, tied = vlm_shapes(config.get("vlm_config") or {})
    out.update({RELEASE_VLM_PREFIX + k: v for k, v in hf.items()})
    optional = {RELEASE_VLM_PREFIX + "lm_head.weight"} if tied else set()
    return out, optional

