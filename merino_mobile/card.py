"""Architecture card: a decoder described precisely enough to count, build and export it.

A card is a list of blocks. Block i has width E_i, FFN ratio R_i, H_i = E_i / head_dim heads and
L_i layers; if `shared`, the L_i layers reuse one set of weights (MeRino's parameter sharing).
Blocks of different widths are joined by a bias-free linear projection.

The token embedding has width `embed_width` (default: the first block's width). When it differs
from the first block there is a projection in; when the last block's width differs from it there is
a projection out before the head (OPT-350M: 512 -> 1024 -> 512). The head is tied to the embedding
or a separate bias-free matrix. Learned positions (`positions = "learned"`) add a
(context + pos_offset) x E_1 table; OPT keeps 2 extra rows (pos_offset = 2), GPT-2 none; "rope"
positions have no parameters.

JSON form (`models/*.json`), versioned by `schema_version`:

    {"schema_version": 1, "name": "gpt2", "vocab": 50257, "context": 1024, "head_dim": 64,
     "positions": "learned", "pos_offset": 0, "embed_width": null, "tied_head": true,
     "final_norm": true, "bias": true,
     "blocks": [{"width": 768, "ffn_ratio": 4.0, "heads": 12, "depth": 12, "shared": false}],
     "meta": {...free-form provenance...}}

Reading is strict (`load_card`, `Card.from_json`): integers are JSON integers (`64`; `64.0` and
`"64"` are refused, not converted), `ffn_ratio` a finite number (`4` or `4.0`; no NaN or
Infinity), flags `true`/`false` (not 0/1 or strings), `embed_width` an integer or null, `meta` an
object of any JSON but non-finite numbers; unknown keys, in the card or in a block, are refused
with the known ones. Sizes are bounded so that nothing downstream (accounting walks every layer,
the model allocates every table) can run away: vocab <= MAX_VOCAB (2,097,152), context <=
MAX_CONTEXT (1,048,576), widths and head_dim <= MAX_WIDTH (65,536), ffn_ratio <= MAX_FFN_RATIO
(64), depth <= MAX_DEPTH (1024) per block and in total. A card breaking one of these is a UserError
naming the file, the field and the fix.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from merino_mobile.errors import UserError
from merino_mobile.files import atomic_write_text
from merino_mobile.workspace import Fields, parse_json, read_text

SCHEMA_VERSION = 1
POSITIONS = ("learned", "rope")

# Far beyond any decoder a phone runs (Gemma 3's vocabulary is 262,144, the widest open models are
# 16,384 wide and 126 layers deep), and small enough that per-layer loops and tables stay cheap.
MAX_VOCAB = 1 << 21
MAX_CONTEXT = 1 << 20
MAX_WIDTH = 1 << 16
MAX_FFN_RATIO = 64.0
MAX_DEPTH = 1024


@dataclass(frozen=True)
class Block:
    """`depth` decoder layers of one width; with `shared`, they reuse one set of weights."""

    width: int
    ffn_ratio: float
    heads: int
    depth: int
    shared: bool = False

    @property
    def ffn_hidden(self) -> int:
        return round(self.width * self.ffn_ratio)


@dataclass(frozen=True)
class Card:
    """A decoder-only transformer: vocabulary, context, embedding and the blocks."""

    name: str
    vocab: int
    context: int
    head_dim: int
    blocks: tuple[Block, ...]
    positions: str = "learned"
    pos_offset: int = 0
    embed_width: int | None = None
    tied_head: bool = True
    final_norm: bool = True
    bias: bool = True
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(self.blocks))
        problems = self.problems()
        if problems:
            more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
            raise UserError(f"card {self.name!r} is not a valid architecture: "
                            + "; ".join(problems[:5]) + more)

    # -- derived shape -------------------------------------------------------------------------

    @property
    def embedding_width(self) -> int:
        """Width of the token embedding (and of a tied head)."""
        return self.embed_width or self.blocks[0].width

    @property
    def depth(self) -> int:
        """Total number of decoder layers D = sum L_i."""
        return sum(b.depth for b in self.blocks)

    # -- validation ------------------------------------------------------------------------------

    def problems(self) -> list[str]:
        """Every reason this card cannot be a decoder (empty when it is fine)."""
        out = [p for p in (
            out_of_range("vocab", self.vocab, 1, MAX_VOCAB),
            out_of_range("context", self.context, 1, MAX_CONTEXT),
            out_of_range("head_dim", self.head_dim, 1, MAX_WIDTH),
            out_of_range("pos_offset", self.pos_offset, 0, MAX_CONTEXT),
            None if self.embed_width is None else
            out_of_range("embed_width", self.embed_width, 1, MAX_WIDTH),
        ) if p]
        if self.positions not in POSITIONS:
            out.append(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        if not self.blocks:
            out.append("it has no blocks; give at least one block with depth >= 1")
        for i, b in enumerate(self.blocks):
            where = f"block {i}"
            if b.depth < 1:
                out.append(f"{where} has depth {b.depth}; every block needs at least one layer")
            elif b.depth > MAX_DEPTH:
                out.append(f"{where} has depth {b.depth}; the most is {MAX_DEPTH} layers")
            if not 1 <= b.width <= MAX_WIDTH:
                out.append(f"{where} width {b.width} is outside 1..{MAX_WIDTH}")
            elif self.head_dim < 1 or b.width % self.head_dim:
                out.append(f"{where} width {b.width} is not a multiple of head_dim {self.head_dim}")
            elif b.heads != b.width // self.head_dim:
                out.append(
                    f"{where} has {b.heads} heads but width {b.width} / head_dim "
                    f"{self.head_dim} = {b.width // self.head_dim}"
                )
            if not (math.isfinite(b.ffn_ratio) and 0 < b.ffn_ratio <= MAX_FFN_RATIO):
                out.append(f"{where} ffn_ratio {b.ffn_ratio} is outside (0, {MAX_FFN_RATIO:g}]")
            elif not math.isclose(b.width * b.ffn_ratio, b.ffn_hidden):
                out.append(
                    f"{where} ffn_ratio {b.ffn_ratio} x width {b.width} is not a whole number"
                )
        if all(b.depth <= MAX_DEPTH for b in self.blocks) and self.depth > MAX_DEPTH:
            out.append(f"it has {self.depth} layers in all; the most is {MAX_DEPTH}")
        return out

    # -- JSON ------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["blocks"] = [asdict(b) for b in self.blocks]
        return {"schema_version": SCHEMA_VERSION, **d}

    @classmethod
    def from_json(cls, data: Any, source: str = "<card>") -> Card:
        """A card from parsed JSON, read strictly (see the module docstring); every problem is a
        UserError naming `source` and the field."""
        f = Fields(data, source)
        version = f.get("schema_version", int, expect=f"the integer {SCHEMA_VERSION}")
        reader = _READERS.get(version)
        if reader is None:
            raise UserError(
                f"{source}: schema_version {version!r} is not supported (this version of "
                f"merino-mobile reads schema_version {', '.join(map(str, _READERS))})"
            )
        try:
            return reader(f)
        except UserError as e:
            if str(e).startswith(f"{source}: "):
                raise
            raise UserError(f"{source}: {e}") from None

    def with_name(self, name: str) -> Card:
        return replace(self, name=name)


def _block_v1(f: Fields) -> Block:
    f.only(b.name for b in fields(Block))
    return Block(**f.fill(Block))


def _card_v1(f: Fields) -> Card:
    f.only({c.name for c in fields(Card)} | {"schema_version"})
    blocks = tuple(_block_v1(b) for b in f.tables("blocks"))
    meta = f.free("meta", {})
    if not isinstance(meta, dict):
        f.fail("meta", f"must be an object {{...}} (free-form provenance), got {f.show(meta)}")
    return Card(**f.fill(Card, {"blocks": blocks, "meta": meta},
                         limits={"positions": {"choices": POSITIONS}}))


# One reader per schema version; a new version adds its reader here (and may reuse these).
_READERS: dict[int, Callable[[Fields], Card]] = {1: _card_v1}


def out_of_range(name: str, value: int, lo: int, hi: int) -> str | None:
    """The problem of an integer setting outside [lo, hi], or None (cards and spaces)."""
    if lo <= value <= hi:
        return None
    return f"{name} must be from {lo} to {hi}, got {value}"


def load_card(path: str | Path) -> Card:
    """Read a card from a JSON file, with errors that name the file, the field and the fix."""
    path = Path(path)
    text = read_text(path, "card", "`merino-mobile info` lists shipped cards")
    return Card.from_json(parse_json(text, path), source=str(path))


def save_card(card: Card, path: str | Path, force: bool = False) -> Path:
    """Write a card as JSON; refuses to replace an existing file unless `force`."""
    path = Path(path)
    if path.exists() and not force:
        raise UserError(f"{path} exists; choose another --out or pass --force to replace it")
    return atomic_write_text(path, json.dumps(card.to_json(), indent=2) + "\n")


DESIGNED_BY = "merino-mobile design"  # a card's meta.designed_by when `design` wrote it


def last_designed(folder: Path) -> tuple[Card, Path] | None:
    """The card `design` wrote last into `folder` (models/ of a workspace): the newest by its
    recorded date, then by file time; None when `design` wrote none there. Cards that do not
    load are passed over: they cannot be what the last design wrote."""
    found = []
    for path in Path(folder).glob("*.json"):
        try:
            card = load_card(path)
        except UserError:
            continue
        if card.meta.get("designed_by") == DESIGNED_BY:
            found.append((str(card.meta.get("date", "")), path.stat().st_mtime, card, path))
    if not found:
        return None
    *_, card, path = max(found, key=lambda f: (f[0], f[1]))
    return card, path


def uniform(name: str, vocab: int, context: int, width: int, depth: int, ffn_ratio: float = 4.0,
            head_dim: int = 64, **kw: Any) -> Card:
    """A plain GPT/OPT-style card: one block of `depth` unshared layers."""
    block = Block(width=width, ffn_ratio=ffn_ratio, heads=width // head_dim, depth=depth)
    return Card(name=name, vocab=vocab, context=context, head_dim=head_dim, blocks=(block,), **kw)
