"""Training text that every machine already has, tokenized and split into train and validation.

Built-in corpora (nothing is downloaded):

- ``stdlib``: the Python standard library sources (``sysconfig.get_paths()["stdlib"]``, every
  ``*.py`` outside site-packages): a code corpus, ~30 MB, PSF License.
- ``prose``: English prose: the Python documentation topics that ship with every CPython
  (``pydoc_data.topics``, PSF License, ~0.5 MB) plus the licence texts in
  ``/usr/share/common-licenses`` when present (Debian's base-files; each text permits verbatim
  copying). Small: a few hundred thousand tokens.

Anything else is a path: a text file, or a folder whose ``*.txt``, ``*.md``, ``*.rst`` and
``*.py`` files are read (sorted, recursively).

Tokens are bytes (vocab 256) or a tokenizer.json; `train_bpe` trains a byte-level BPE one of a
card's vocabulary size on the training split, offline.

The split is deterministic and by document: a document whose name hashes (CRC-32) to 0 mod 10
is held out. With fewer than 10 documents every document's last 10% is held out instead, so a
single file still has a validation split.
"""

from __future__ import annotations

import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from merino_mobile.errors import UserError
from merino_mobile.tokenizer import Tokenizer

BUILTIN = {
    "stdlib": "Python standard library sources (code), PSF License",
    "prose": "Python documentation topics (pydoc_data, PSF License) + /usr/share/common-licenses",
}
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py")
HELD_OUT = 10  # one document in HELD_OUT goes to validation
SEPARATOR = "\n\n"
COMMON_LICENSES = Path("/usr/share/common-licenses")


@dataclass(frozen=True)
class Document:
    name: str
    text: str


@dataclass
class TokenSplit:
    """Token ids of the training and validation text (1-D int64 tensors)."""

    source: str
    train: Tensor
    val: Tensor

    def to_json(self) -> dict:
        return {"source": self.source, "train_tokens": int(self.train.numel()),
                "val_tokens": int(self.val.numel())}


def stdlib_documents() -> list[Document]:
    """Every .py file of the standard library, site-packages excluded (not PSF licensed)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if "site-packages" in rel.parts or "dist-packages" in rel.parts:
            continue
        docs.append(Document(str(rel), path.read_text(encoding="utf-8", errors="replace")))
    return docs


def prose_documents() -> list[Document]:
    """English prose: CPython's documentation topics, and Debian's licence texts if present."""
    from pydoc_data.topics import topics

    docs = [Document(f"pydoc/{k}", v) for k, v in sorted(topics.items())]
    if COMMON_LICENSES.is_dir():
        docs += [Document(f"common-licenses/{p.name}", p.read_text(errors="replace"))
                 for p in sorted(COMMON_LICENSES.iterdir()) if p.is_file()]
    return docs


def path_documents(path: Path) -> list[Document]:
    if not path.exists():
        raise UserError(f"no corpus at {path}; give a text file, a folder of text files, or one "
                        f"of the built-in corpora: {', '.join(BUILTIN)}")
    if path.is_file():
        files = [path]
    else:
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
        if not files:
            raise UserError(f"corpus folder {path} has no {'/'.join(TEXT_SUFFIXES)} files")
    return [Document(str(p.relative_to(path) if p != path else p.name),
                     p.read_text(encoding="utf-8", errors="replace")) for p in files]


def load_documents(source: str | Path) -> list[Document]:
    """The documents of a built-in corpus name or of a path."""
    if str(source) == "stdlib":
        return stdlib_documents()
    if str(source) == "prose":
        return prose_documents()
    return path_documents(Path(source))


def encode(tokenizer: Tokenizer, texts: list[str]) -> Tensor:
    """Token ids of the texts, joined by a blank line so a model sees where a document ends."""
    if tokenizer.path is None:  # bytes: skip the per-token Python list
        data = bytearray(SEPARATOR.join(texts).encode("utf-8"))
        if not data:
            return torch.zeros(0, dtype=torch.long)
        return torch.frombuffer(data, dtype=torch.uint8).long()
    sep = tokenizer.encode(SEPARATOR)
    ids: list[int] = []
    for i, text in enumerate(texts):
        ids += (sep if i else []) + tokenizer.encode(text)
    return torch.tensor(ids, dtype=torch.long)


def split_documents(source: str | Path) -> tuple[list[str], list[str]]:
    """Training and validation texts of a corpus (deterministic; see the module docstring)."""
    docs = [d for d in load_documents(source) if d.text]
    if not docs:
        raise UserError(f"corpus {source} is empty; give a file or folder with text in it")
    if len(docs) >= HELD_OUT:
        held = [zlib.crc32(d.name.encode()) % HELD_OUT == 0 for d in docs]
        if not any(held):  # every name hashed elsewhere: hold out the last document
            held[-1] = True
        return ([d.text for d, h in zip(docs, held, strict=True) if not h],
                [d.text for d, h in zip(docs, held, strict=True) if h])
    cuts = [len(d.text) - max(1, len(d.text) // HELD_OUT) for d in docs]
    return ([d.text[:c] for d, c in zip(docs, cuts, strict=True)],
            [d.text[c:] for d, c in zip(docs, cuts, strict=True)])


def load_split(source: str | Path, tokenizer: Tokenizer) -> TokenSplit:
    """Tokenize a corpus and split it deterministically into train and validation tokens."""
    train, val = split_documents(source)
    return TokenSplit(str(source), encode(tokenizer, train), encode(tokenizer, val))


def train_bpe(source: str | Path, vocab: int, path: Path) -> Tokenizer:
    """Train a byte-level BPE tokenizer of at most `vocab` ids on the corpus's training split
    (offline, with the `tokenizers` library) and save it as a tokenizer.json at `path`.

    A small corpus can run out of merges first: the tokenizer then has fewer ids than `vocab`.
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab <= len(alphabet):
        raise UserError(f"a BPE tokenizer needs more than the {len(alphabet)} byte ids, the card "
                        f"has vocab {vocab}; use --tokenizer bytes for a vocab of 256")
    train, _ = split_documents(source)
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, initial_alphabet=alphabet,
                                  show_progress=False)
    hf.train_from_iterator(train, trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    hf.save(str(path))
    return Tokenizer(path)


def tokenizer_for(card_name: str, vocab: int, choice: str, corpus: str | Path,
                  run_dir: Path) -> Tokenizer:
    """The tokenizer `train --tokenizer` names: "bytes" (vocab 256), "bpe" (a byte-level BPE of
    the card's vocabulary trained on the corpus, kept in the run folder so a resumed run keeps
    the ids its checkpoint learned) or the path of a local tokenizer.json. Refuses one whose
    vocabulary does not fit the card's."""
    if choice == "bpe":
        bpe = run_dir / "tokenizer.json"
        tok = Tokenizer(bpe) if bpe.exists() else train_bpe(corpus, vocab, bpe)
    else:
        tok = Tokenizer(None if choice == "bytes" else choice)
    # a BPE may stop short of the card's size on a small corpus: its ids still fit
    if tok.vocab != vocab and not (choice == "bpe" and tok.vocab < vocab):
        raise UserError(f"card {card_name!r} has a vocabulary of {vocab} but the "
                        f"{'byte tokenizer' if tok.path is None else tok.path} has {tok.vocab} "
                        "ids; use --tokenizer bpe (trains one of the card's size), a "
                        "tokenizer.json of exactly that size, or a card with vocab 256 for bytes")
    return tok
