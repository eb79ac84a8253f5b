"""Search space: what the design solver may choose, read from a TOML file (`search/*.toml`).

An architecture in a space is a sequence of 1..max_blocks non-empty blocks. Each block picks a width
(a multiple of head_dim), an FFN ratio, a depth in [max(1, min_depth), max_depth] and, if sharing is
allowed and the depth is at least 2, whether its layers share weights. A depth range starting at 0
means "fewer blocks are allowed": empty blocks are always the trailing ones, so every architecture
has exactly one representation. With order = "non-decreasing", widths never shrink from block to
block.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from merino_mobile.card import Block, Card
from merino_mobile.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SCHEMA_VERSION = 1
ORDERS = ("non-decreasing", "any")


@dataclass(frozen=True)
class Choice:
    """What the solver picks for one non-empty block."""

    width: int
    ffn_ratio: float
    depth: int
    shared: bool


@dataclass(frozen=True)
class Space:
    name: str
    vocab: int
    context: int
    head_dim: int
    widths: tuple[int, ...]
    ffn_ratios: tuple[float, ...]
    max_blocks: int
    min_depth: int
    max_depth: int
    sharing: bool = True
    order: str = "non-decreasing"
    positions: str = "learned"
    tied_head: bool = True
    embed_width: int | None = None
    source: str = "<space>"

    def __post_init__(self) -> None:
        problems = []
        if not self.widths:
            problems.append("widths is empty")
        bad = [w for w in self.widths if w <= 0 or w % self.head_dim]
        if bad:
            problems.append(f"widths {bad} are not positive multiples of head_dim {self.head_dim}")
        if not self.ffn_ratios or any(r <= 0 for r in self.ffn_ratios):
            problems.append("ffn_ratios must be a non-empty list of positive numbers")
        for w in self.widths:
            for r in self.ffn_ratios:
                if not math.isclose(w * r, round(w * r)):
                    problems.append(f"ffn_ratio {r} x width {w} is not a whole number")
        if self.max_blocks < 1:
            problems.append("max_blocks must be at least 1")
        if not 0 <= self.min_depth <= self.max_depth or self.max_depth < 1:
            problems.append(
                f"depth range [{self.min_depth}, {self.max_depth}] is empty or negative")
        if self.order not in ORDERS:
            problems.append(f"order must be one of {ORDERS}, got {self.order!r}")
        if problems:
            raise UserError(f"{self.source}: invalid search space: " + "; ".join(problems))
        object.__setattr__(self, "widths", tuple(sorted(set(self.widths))))
        object.__setattr__(self, "ffn_ratios", tuple(sorted(set(self.ffn_ratios))))

    @property
    def depths(self) -> range:
        """Depths a non-empty block can take."""
        return range(max(1, self.min_depth), self.max_depth + 1)

    @property
    def min_blocks(self) -> int:
        """With min_depth >= 1 every block must be present."""
        return self.max_blocks if self.min_depth >= 1 else 1

    def choices(self, width: int | None = None) -> Iterator[Choice]:
        """Every choice for one non-empty block (of one width, if given)."""
        for w in self.widths if width is None else (width,):
            for r in self.ffn_ratios:
                for d in self.depths:
                    yield Choice(w, r, d, False)
                    if self.sharing and d >= 2:
                        yield Choice(w, r, d, True)

    def allows_step(self, prev_width: int, width: int) -> bool:
        return self.order == "any" or width >= prev_width

    def size(self) -> int:
        """Number of distinct architectures in the space (exact, by dynamic programming)."""
        per_width = sum(1 for _ in self.choices(self.widths[0]))
        # ways[w] = number of sequences of the current length ending at width w
        ways = {w: per_width for w in self.widths}
        total = sum(ways.values()) if self.min_blocks <= 1 else 0
        for length in range(2, self.max_blocks + 1):
            ways = {w: per_width * sum(n for v, n in ways.items() if self.allows_step(v, w))
                    for w in self.widths}
            if length >= self.min_blocks:
                total += sum(ways.values())
        return total

    def to_card(self, arch: tuple[Choice, ...] | list[Choice], name: str,
                meta: dict[str, Any] | None = None) -> Card:
        blocks = tuple(
            Block(width=c.width, ffn_ratio=c.ffn_ratio, heads=c.width // self.head_dim,
                  depth=c.depth, shared=c.shared and c.depth > 1)
            for c in arch
        )
        return Card(name=name, vocab=self.vocab, context=self.context, head_dim=self.head_dim,
                    blocks=blocks, positions=self.positions, tied_head=self.tied_head,
                    embed_width=self.embed_width, meta=meta or {})

    def contains(self, card: Card) -> bool:
        """Whether a card is an architecture of this space."""
        if (card.vocab, card.head_dim, card.embed_width) != (
                self.vocab, self.head_dim, self.embed_width):
            return False
        if not self.min_blocks <= len(card.blocks) <= self.max_blocks:
            return False
        widths = [b.width for b in card.blocks]
        if any(not self.allows_step(a, b) for a, b in zip(widths, widths[1:], strict=False)):
            return False
        return all(b.width in self.widths and b.ffn_ratio in self.ffn_ratios
                   and b.depth in self.depths and (self.sharing or not b.shared)
                   for b in card.blocks)


def load_space(path: str | Path) -> Space:
    """Read a search space TOML file; errors name the file and the problem."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"no search space at {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML ({e})") from None
    if data.get("schema_version") != SCHEMA_VERSION:
        raise UserError(f"{path}: schema_version must be {SCHEMA_VERSION}, "
                        f"got {data.get('schema_version')!r}")
    try:
        depth = data["depth"]
        if not (isinstance(depth, list) and len(depth) == 2):
            raise UserError(f"{path}: depth must be [min, max], got {depth!r}")
        return Space(
            name=str(data.get("name", path.stem)),
            vocab=int(data["vocab"]),
            context=int(data["context"]),
            head_dim=int(data["head_dim"]),
            widths=tuple(int(w) for w in data["widths"]),
            ffn_ratios=tuple(float(r) for r in data["ffn_ratios"]),
            max_blocks=int(data["max_blocks"]),
            min_depth=int(depth[0]),
            max_depth=int(depth[1]),
            sharing=bool(data.get("sharing", True)),
            order=str(data.get("order", "non-decreasing")),
            positions=str(data.get("positions", "learned")),
            tied_head=bool(data.get("tied_head", True)),
            embed_width=int(data.get("embed_width", 0)) or None,
            source=str(path),
        )
    except KeyError as e:
        raise UserError(f"{path}: missing key {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise UserError(f"{path}: {e}") from None
