"""Text <-> token ids: a built-in byte-level tokenizer, or a local `tokenizer.json`.

The byte tokenizer maps each UTF-8 byte to its own id (vocabulary 256), so tiny models and tests
need no files. Any Hugging Face `tokenizer.json` on disk loads through the `tokenizers` library;
nothing is ever downloaded.
"""

from __future__ import annotations

from pathlib import Path

from merino_mobile.errors import UserError


class Tokenizer:
    """`encode(text) -> ids`, `decode(ids) -> text`, and `vocab`; bytes unless given a file."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._hf = None
        if self.path is not None:
            from tokenizers import Tokenizer as HFTokenizer

            if not self.path.is_file():
                raise UserError(f"no tokenizer file at {self.path}; give a local tokenizer.json "
                                "or leave it out for the built-in byte tokenizer")
            try:
                self._hf = HFTokenizer.from_file(str(self.path))
            except Exception as e:  # the library raises a bare Exception on malformed files
                raise UserError(f"{self.path} is not a valid tokenizer.json: {e}") from None

    @property
    def vocab(self) -> int:
        return 256 if self._hf is None else self._hf.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        if self._hf is None:
            return list(text.encode("utf-8"))
        return self._hf.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        if self._hf is None:
            bad = [i for i in ids if not 0 <= i < 256]
            if bad:
                raise UserError(f"ids {bad[:5]} are not bytes (the byte tokenizer has 256 ids)")
            # a model can emit a partial UTF-8 sequence; show it rather than fail
            return bytes(ids).decode("utf-8", errors="replace")
        return self._hf.decode(ids)

    def check_fits(self, vocab: int) -> None:
        """Refuse a tokenizer whose ids a model of `vocab` logits cannot represent."""
        if self.vocab > vocab:
            source = self.path or "the byte tokenizer"
            raise UserError(f"{source} has {self.vocab} ids but the card's vocabulary is {vocab}; "
                            "use a tokenizer that fits the card")


def _printable_bytes() -> dict[int, str]:
    """Byte -> the character a byte-level tokenizer.json writes it as (GPT-2's convention):
    printable Latin-1 bytes as themselves, the others shifted to code points from 256 on, so
    every byte is one visible character."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in kept]
    return {b: chr(b) for b in kept} | {b: chr(256 + i) for i, b in enumerate(shifted)}


def byte_tokenizer_json() -> dict:
    """The byte tokenizer as a Hugging Face tokenizer.json: a byte-level BPE with the 256 bytes
    as its vocabulary (id = byte value) and no merges, so any runtime that reads tokenizer.json
    files (the `tokenizers` library, ExecuTorch's LLM runner) encodes text to the same ids as
    `Tokenizer()`. Written beside ExecuTorch exports of byte-tokenized models."""
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                  "use_regex": False}
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
            "normalizer": None, "pre_tokenizer": byte_level, "post_processor": None,
            "decoder": byte_level,
            "model": {"type": "BPE", "dropout": None, "unk_token": None,
                      "continuing_subword_prefix": None, "end_of_word_suffix": None,
                      "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                      "vocab": {c: b for b, c in _printable_bytes().items()}, "merges": []}}
