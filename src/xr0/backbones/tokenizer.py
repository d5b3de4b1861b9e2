"""A self-contained byte-level tokenizer for tiny test/demo VLMs (no files, no downloads).

Real checkpoints use their own tokenizer (`AutoTokenizer` from the `pretrained` directory); both are used
through `encode(text) -> list[int]` and `special(name) -> int`.
"""
from __future__ import annotations

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
            "<|image_pad|>", "<|video_pad|>", "<|extra|>"]


class ByteTokenizer:
    """UTF-8 bytes are ids 0..255; special tokens follow."""

    def __init__(self):
        self.ids = {tok: 256 + i for i, tok in enumerate(SPECIALS)}
        self.vocab_size = 256 + len(SPECIALS)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def special(self, token: str) -> int:
        return self.ids[token]


class HFTokenizer:
    """Adapter over a Hugging Face tokenizer loaded from a local directory."""

    def __init__(self, path: str):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.vocab_size = len(self.tok)

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
