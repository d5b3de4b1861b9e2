"""Tokenizers behind the backbone adapter: a self-contained byte-level one for tiny test/demo VLMs (no files,
no downloads) and an adapter over a Hugging Face tokenizer from a local directory.

Both expose `encode(text) -> list[int]` (special-token strings in the text become their ids, as HF tokenizers
do), `decode`, `special(name) -> int` and `chat_prompt(n_images, text) -> str`: the user turn with one
`<|image_pad|>` per image, rendered by the tokenizer's chat template; the adapter expands each pad to the
image's token count.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
            "<|image_pad|>", "<|video_pad|>", "<|extra|>"]


def qwen_vl_chat(n_images: int, text: str) -> str:
    """The Qwen-VL (ChatML) layout of one user turn with images then text, plus the assistant header: what
    Qwen2/3-VL chat templates render for it (no default system prompt in Qwen3-VL)."""
    images = "<|vision_start|><|image_pad|><|vision_end|>" * n_images
    return f"<|im_start|>user\n{images}{text}<|im_end|>\n<|im_start|>assistant\n"


PROMPTS = ("chat", "release")


def release_prompt(view_labels: list[str], text: str) -> str:
    """The released Xiaomi-Robotics-0 deployment prompt (its public README and inference code): an intro line, one
    "# <label>" line and image per view, the instruction after the images with " /no_cot", and an empty <cot>
    answer already closed — the DiT reads the K/V of exactly this sequence."""
    views = "".join(f"# {label}\n<|vision_start|><|image_pad|><|vision_end|>\n" for label in view_labels)
    return ("<|im_start|>user\nThe following observations are captured from multiple views.\n" + views
            + f"Generate robot actions for the task:\n{text} /no_cot<|im_end|>\n"
              "<|im_start|>assistant\n<cot></cot><|im_end|>\n")


class ByteTokenizer:
    """UTF-8 bytes are ids 0..255; special tokens follow (`specials`: a backbone family's own, Qwen-VL's by
    default). Its chat template is `qwen_vl_chat`."""

    def __init__(self, specials: list[str] | tuple[str, ...] = tuple(SPECIALS)):
        self.ids = {tok: 256 + i for i, tok in enumerate(specials)}
        self.vocab_size = 256 + len(specials)
        self._split = re.compile("(" + "|".join(re.escape(s) for s in specials) + ")")

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        for piece in self._split.split(text):
            out += [self.ids[piece]] if piece in self.ids else list(piece.encode("utf-8"))
        return out

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="ignore")

    def special(self, token: str) -> int:
        return self.ids[token]

    def chat_prompt(self, n_images: int, text: str) -> str:
        return qwen_vl_chat(n_images, text)


class HFTokenizer:
    """Adapter over a Hugging Face tokenizer loaded from a local directory. The chat template is the
    tokenizer's, else the directory's chat_template.jinja / chat_template.json (processor files), else the
    Qwen-VL layout (`qwen_vl_chat`)."""

    def __init__(self, path: str):
        from transformers import AutoTokenizer

        if not Path(path).is_dir():
            raise FileNotFoundError(f"tokenizer directory {path} does not exist; point backbone.tokenizer / "
                                    f"backbone.pretrained at a local folder with the tokenizer files")
        self.tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.vocab_size = len(self.tok)
        if not getattr(self.tok, "chat_template", None):
            jinja, js = Path(path) / "chat_template.jinja", Path(path) / "chat_template.json"
            if jinja.is_file():
                self.tok.chat_template = jinja.read_text()
            elif js.is_file():
                self.tok.chat_template = json.loads(js.read_text())["chat_template"]

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids)

    def special(self, token: str) -> int:
        if token == "<|extra|>":  # stage-1 learnable tokens only need a placeholder id; their embedding is replaced
            token = "<|endoftext|>"
        tid = self.tok.convert_tokens_to_ids(token)
        if tid is None or tid == self.tok.unk_token_id:
            raise ValueError(f"the tokenizer has no special token {token}: is this a Qwen-VL tokenizer?")
        return tid

    def chat_prompt(self, n_images: int, text: str) -> str:
        if not getattr(self.tok, "chat_template", None):
            return qwen_vl_chat(n_images, text)
        content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": text}]
        return self.tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                            tokenize=False)
