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
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from merino_mobile.errors import UserError

SCHEMA_VERSION = 1
POSITIONS = ("learned", "rope")


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
            raise UserError(f"card {self.name!r} is not a valid architecture: "
                            + "; ".join(problems))

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
        out = []
        if self.vocab < 1:
            out.append(f"vocab must be positive, got {self.vocab}")
        if self.context < 1:
            out.append(f"context must be positive, got {self.context}")
        if self.head_dim < 1:
            out.append(f"head_dim must be positive, got {self.head_dim}")
        if self.positions not in POSITIONS:
            out.append(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.embed_width is not None and self.embed_width < 1:
            out.append(f"embed_width must be positive, got {self.embed_width}")
        if not self.blocks:
            out.append("it has no blocks; give at least one block with depth >= 1")
        for i, b in enumerate(self.blocks):
            where = f"block {i}"
            if b.depth < 1:
                out.append(f"{where} has depth {b.depth}; every block needs at least one layer")
            if b.width < 1 or self.head_dim < 1 or b.width % self.head_dim:
                out.append(f"{where} width {b.width} is not a multiple of head_dim {self.head_dim}")
            elif b.heads != b.width // self.head_dim:
                out.append(
                    f"{where} has {b.heads} heads but width {b.width} / head_dim "
                    f"{self.head_dim} = {b.width // self.head_dim}"
                )
            if b.ffn_ratio <= 0 or not math.isclose(b.width * b.ffn_ratio, b.ffn_hidden):
                out.append(
                    f"{where} ffn_ratio {b.ffn_ratio} x width {b.width} is not a whole number"
                )
        return out

    # -- JSON ------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["blocks"] = [asdict(b) for b in self.blocks]
        return {"schema_version": SCHEMA_VERSION, **d}

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "<card>") -> Card:
        if not isinstance(data, dict):
            raise UserError(f"{source}: a card must be a JSON object")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise UserError(
                f"{source}: schema_version {version!r} is not supported (this version of "
                f"merino-mobile reads schema_version {SCHEMA_VERSION})"
            )
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known - {"schema_version"}
        if unknown:
            raise UserError(f"{source}: unknown card fields {sorted(unknown)}; "
                            f"known: {sorted(known)}")
        try:
            blocks = tuple(_block_from_json(b, source, i) for i, b in enumerate(data["blocks"]))
            fields = {k: v for k, v in data.items() if k in known and k != "blocks"}
            card = cls(blocks=blocks, **fields)
        except KeyError as e:
            raise UserError(f"{source}: card is missing field {e.args[0]!r}") from None
        except TypeError as e:
            raise UserError(f"{source}: {e}") from None
        except UserError as e:
            raise UserError(f"{source}: {e}") from None
        return card

    def with_name(self, name: str) -> Card:
        return replace(self, name=name)


def _block_from_json(b: Any, source: str, i: int) -> Block:
    if not isinstance(b, dict):
        raise UserError(f"{source}: block {i} must be an object")
    try:
        return Block(
            width=int(b["width"]),
            ffn_ratio=float(b["ffn_ratio"]),
            heads=int(b["heads"]),
            depth=int(b["depth"]),
            shared=bool(b.get("shared", False)),
        )
    except KeyError as e:
        raise UserError(f"{source}: block {i} is missing field {e.args[0]!r}") from None


def load_card(path: str | Path) -> Card:
    """Read a card from a JSON file, with errors that name the file and the problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"no card at {path}; `merino-mobile info` lists shipped cards") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(
            f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    return Card.from_json(data, source=str(path))


def save_card(card: Card, path: str | Path, force: bool = False) -> Path:
    """Write a card as JSON; refuses to replace an existing file unless `force`."""
    path = Path(path)
    if path.exists() and not force:
        raise UserError(f"{path} exists; choose another --out or pass --force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(card.to_json(), indent=2) + "\n")
    tmp.replace(path)
    return path


def uniform(name: str, vocab: int, context: int, width: int, depth: int, ffn_ratio: float = 4.0,
            head_dim: int = 64, **kw: Any) -> Card:
    """A plain GPT/OPT-style card: one block of `depth` unshared layers."""
    block = Block(width=width, ffn_ratio=ffn_ratio, heads=width // head_dim, depth=depth)
    return Card(name=name, vocab=vocab, context=context, head_dim=head_dim, blocks=(block,), **kw)
