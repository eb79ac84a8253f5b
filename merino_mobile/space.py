"""Search space: what the design solver may choose, read from a TOML file (`search/*.toml`).

An architecture in a space is a sequence of 1..max_blocks non-empty blocks. Each block picks a width
(a multiple of head_dim), an FFN ratio, a depth in [max(1, min_depth), max_depth] and, if sharing is
allowed and the depth is at least 2, whether its layers share weights (`sharing = "always"`:
every block of 2 or more layers shares, as in MeRino's own space; `Space.share_always`). A depth
range starting at 0 means "fewer blocks are allowed": empty blocks are always the trailing ones,
so every architecture has exactly one representation. With order = "non-decreasing", widths never
shrink from block to block.

The TOML is read as strictly as a card (`merino_mobile.card`): whole numbers are TOML integers
(`64`, not `64.0` or `"64"`), ratios finite numbers, flags `true`/`false` (`sharing` may also be
"always"), `depth` a list of two integers, and unknown keys are refused with the known ones.
Every architecture of a space must be a valid card, so its sizes obey the card's limits (vocab,
context, widths, ffn ratios), and max_blocks x max_depth <= MAX_DEPTH (1024) layers; widths and
ffn_ratios list at most MAX_CHOICES (64) values each and max_blocks is at most MAX_BLOCKS (64),
which keeps the design problem a size the solvers finish.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from merino_mobile.card import (
    MAX_CONTEXT,
    MAX_DEPTH,
    MAX_FFN_RATIO,
    MAX_VOCAB,
    MAX_WIDTH,
    POSITIONS,
    Block,
    Card,
    out_of_range,
)
from merino_mobile.errors import UserError
from merino_mobile.workspace import Fields, parse_toml, read_text

SCHEMA_VERSION = 1
ORDERS = ("non-decreasing", "any")
MAX_CHOICES = 64  # values in widths, and in ffn_ratios
MAX_BLOCKS = 64
KEYS = ("schema_version", "name", "vocab", "context", "head_dim", "positions", "tied_head",
        "embed_width", "max_blocks", "widths", "ffn_ratios", "depth", "sharing", "order")


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
    # every block of 2+ layers shares one set of weights (TOML `sharing = "always"`)
    share_always: bool = False

    def __post_init__(self) -> None:
        problems = [p for p in (
            out_of_range("vocab", self.vocab, 1, MAX_VOCAB),
            out_of_range("context", self.context, 1, MAX_CONTEXT),
            out_of_range("head_dim", self.head_dim, 1, MAX_WIDTH),
            out_of_range("max_blocks", self.max_blocks, 1, MAX_BLOCKS),
            None if self.embed_width is None else
            out_of_range("embed_width", self.embed_width, 1, MAX_WIDTH),
        ) if p]
        if not self.widths:
            problems.append("widths is empty")
        if len(self.widths) > MAX_CHOICES or len(self.ffn_ratios) > MAX_CHOICES:
            problems.append(f"widths and ffn_ratios list at most {MAX_CHOICES} values each")
        bad = [w for w in self.widths
               if not 0 < w <= MAX_WIDTH or self.head_dim < 1 or w % self.head_dim]
        if bad:
            problems.append(f"widths {bad[:8]} are not multiples of head_dim {self.head_dim} "
                            f"from {self.head_dim} to {MAX_WIDTH}")
        if not self.ffn_ratios or any(not (math.isfinite(r) and 0 < r <= MAX_FFN_RATIO)
                                      for r in self.ffn_ratios):
            problems.append(f"ffn_ratios must be a non-empty list of numbers above 0 and at "
                            f"most {MAX_FFN_RATIO:g}")
        elif not bad:
            for w in self.widths:
                for r in self.ffn_ratios:
                    if not math.isclose(w * r, round(w * r)):
                        problems.append(f"ffn_ratio {r} x width {w} is not a whole number")
        if not 0 <= self.min_depth <= self.max_depth or self.max_depth < 1:
            problems.append(
                f"depth range [{self.min_depth}, {self.max_depth}] is empty or negative")
        elif 1 <= self.max_blocks <= MAX_BLOCKS and self.max_blocks * self.max_depth > MAX_DEPTH:
            problems.append(f"max_blocks {self.max_blocks} x max depth {self.max_depth} is over "
                            f"{MAX_DEPTH} layers (the most a card has): lower either")
        if self.share_always and not self.sharing:
            problems.append("share_always needs sharing allowed (sharing = true)")
        if self.order not in ORDERS:
            problems.append(f"order must be one of {ORDERS}, got {self.order!r}")
        if self.positions not in POSITIONS:
            problems.append(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        problems = problems[:5] + ([f"and {len(problems) - 5} more"] if len(problems) > 5 else [])
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
                    if not (self.share_always and d >= 2):
                        yield Choice(w, r, d, False)
                    if self.sharing and d >= 2:
                        yield Choice(w, r, d, True)

    def allows_sharing(self, shared: bool, depth: int) -> bool:
        """Whether a block of `depth` layers may (shared) or may not (not shared) share weights:
        sharing needs 2+ layers and a space that allows it; `share_always` requires it there."""
        if shared:
            return self.sharing and depth >= 2
        return not (self.share_always and depth >= 2)

    def with_sharing(self, c: Choice) -> Choice:
        """`c` with the sharing the space imposes: forced on by `share_always` at 2+ layers, off
        at 1 layer or where the space does not allow it."""
        shared = (c.shared or self.share_always) and self.sharing and c.depth >= 2
        return c if shared == c.shared else Choice(c.width, c.ffn_ratio, c.depth, shared)

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
                   and b.depth in self.depths and self.allows_sharing(b.shared, b.depth)
                   for b in card.blocks)


def load_space(path: str | Path) -> Space:
    """Read a search space TOML file strictly (see the module docstring); errors name the file,
    the key and the fix."""
    path = Path(path)
    f = Fields(parse_toml(read_text(path, "search space"), path), str(path), fmt="TOML")
    version = f.get("schema_version", int, expect=f"the integer {SCHEMA_VERSION}")
    if version != SCHEMA_VERSION:
        f.fail("schema_version", f"must be {SCHEMA_VERSION}, got {version}")
    f.only(KEYS)
    min_depth, max_depth = f.get_list("depth", int, length=2)
    sharing = f.data.get("sharing", True)
    if not (type(sharing) is bool or sharing == "always"):
        f.fail("sharing", f"must be true or false, got {f.show(sharing)} (or \"always\": every "
                          "block of 2 or more layers shares one set of weights)")
    given = {
        "sharing": sharing is not False, "share_always": sharing == "always",
        "name": f.get("name", str, path.stem),
        "min_depth": min_depth, "max_depth": max_depth,
        # 0: the embedding has the first block's width
        "embed_width": f.get("embed_width", int, 0, lo=0, hi=MAX_WIDTH) or None,
        "source": str(path),
    }
    limits = {"widths": {"most": MAX_CHOICES}, "ffn_ratios": {"most": MAX_CHOICES},
              "order": {"choices": ORDERS}, "positions": {"choices": POSITIONS}}
    return Space(**f.fill(Space, given, limits))
