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

Schema version 2 adds the Llama-style family (SmolLM2, MobileLLM), every key at the default a
version 1 space means, and `Space.to_card` writes version 2 cards with them:

- `norm`: "layernorm" (default) or "rmsnorm"; `bias`: whether the layers' linear maps have
  biases (default true; Llama's have none);
- `positions = "rope"` with `rope_theta`, the rotary base (default 10000);
- `ffn`: the FFN kind of every block, "gelu" (default), "gelu_tanh", "relu" or "swiglu"
  (down(silu(gate x) * up x): three matrices, gate and up E x F and down F x E, F = ratio x E);
- `kv_heads`: the K/V heads (grouped-query attention), a number or a list of numbers. A list is
  a per-block choice (`Choice.kv_heads`): the solver picks one per block, as it picks a width.
  Each value must divide the heads (width / head_dim) of every width of the space, so every
  (width, kv_heads) pair is a valid card and the MIP's block types stay a plain product; a
  value that does not is refused, naming the width. Per block, not space-wide, because the
  choice costs the exact MIP only |kv_heads| times the block types (a few hundred binaries
  more on the MobileLLM space), while it is what trades KV cache and parameters against the
  objective. Absent: as many K/V heads as heads (multi-head attention, `Choice.kv_heads` None).

The FFN kind and the norm stay space-wide: a per-block choice of FFN kind is no design axis any
shipped decoder uses, and would multiply the latency table by kinds nobody deploys together.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from merino_mobile.accounting import LayerShape
from merino_mobile.card import (
    DEFAULT_ROPE_THETA,
    FFN_KINDS,
    MAX_CONTEXT,
    MAX_DEPTH,
    MAX_FFN_RATIO,
    MAX_VOCAB,
    MAX_WIDTH,
    NORMS,
    POSITIONS,
    Block,
    Card,
    out_of_range,
)
from merino_mobile.errors import UserError
from merino_mobile.workspace import Fields, parse_toml, read_text

SCHEMA_VERSION = 2  # the newest version this code reads; version 1 spaces read as before
ORDERS = ("non-decreasing", "any")
MAX_CHOICES = 64  # values in widths, and in ffn_ratios
MAX_BLOCKS = 64
KEYS = ("schema_version", "name", "vocab", "context", "head_dim", "positions", "tied_head",
        "embed_width", "max_blocks", "widths", "ffn_ratios", "depth", "sharing", "order")
V2_KEYS = ("norm", "bias", "rope_theta", "ffn", "kv_heads")
MAX_ROPE_THETA = 1e9  # Llama 3 uses 500000; far beyond is a typo


@dataclass(frozen=True)
class Choice:
    """What the solver picks for one non-empty block; `kv_heads` None: multi-head attention
    (a space without `kv_heads`), else one of the space's K/V head counts."""

    width: int
    ffn_ratio: float
    depth: int
    shared: bool
    kv_heads: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The choice as JSON; `kv_heads` only where the space chooses it, so the designs of
        version 1 spaces read as before."""
        d: dict[str, Any] = {"width": self.width, "ffn_ratio": self.ffn_ratio,
                             "depth": self.depth, "shared": self.shared}
        if self.kv_heads is not None:
            d["kv_heads"] = self.kv_heads
        return d


@dataclass(frozen=True)
class Space:
    """A search space (see the module docstring); `kv_heads` () is multi-head attention,
    `rope_theta` None the default rotary base (rope positions only)."""

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
    norm: str = "layernorm"
    bias: bool = True
    rope_theta: float | None = None
    ffn: str = "gelu"
    kv_heads: tuple[int, ...] = ()

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
        if self.norm not in NORMS:
            problems.append(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.ffn not in FFN_KINDS:
            problems.append(f"ffn must be one of {FFN_KINDS}, got {self.ffn!r}")
        if self.rope_theta is not None:
            if self.positions != "rope":
                problems.append("rope_theta needs positions = \"rope\"")
            elif not (math.isfinite(self.rope_theta) and 0 < self.rope_theta <= MAX_ROPE_THETA):
                problems.append(f"rope_theta must be above 0 and at most {MAX_ROPE_THETA:g}, "
                                f"got {self.rope_theta!r}")
        if len(self.kv_heads) > MAX_CHOICES:
            problems.append(f"kv_heads lists at most {MAX_CHOICES} values")
        for kv in sorted(set(self.kv_heads)):
            if isinstance(kv, bool) or not isinstance(kv, int) or kv < 1:
                problems.append(f"kv_heads must be whole numbers at least 1, got {kv!r}")
                break
            if bad or self.head_dim < 1:
                continue
            wrong = [w for w in self.widths if (w // self.head_dim) % kv]
            if wrong:
                w = wrong[0]
                problems.append(f"kv_heads {kv} does not divide the {w // self.head_dim} heads "
                                f"of width {w} (heads = width / head_dim {self.head_dim}); "
                                f"every kv_heads value must divide every width's heads")
        problems = problems[:5] + ([f"and {len(problems) - 5} more"] if len(problems) > 5 else [])
        if problems:
            raise UserError(f"{self.source}: invalid search space: " + "; ".join(problems))
        object.__setattr__(self, "widths", tuple(sorted(set(self.widths))))
        object.__setattr__(self, "ffn_ratios", tuple(sorted(set(self.ffn_ratios))))
        object.__setattr__(self, "kv_heads", tuple(sorted(set(self.kv_heads))))

    @property
    def kv_choices(self) -> tuple[int | None, ...]:
        """The K/V heads a block can take (None: as many as heads)."""
        return self.kv_heads or (None,)

    @property
    def is_v1(self) -> bool:
        """Whether every architecture is a version 1 card (LayerNorm, biases, GELU, MHA, the
        default rotary base)."""
        return (self.norm, self.bias, self.ffn, self.kv_heads, self.rope_theta) == (
            "layernorm", True, "gelu", (), None)

    def layer_shape(self, c: Choice) -> LayerShape:
        """The `accounting.LayerShape` of one layer of a block with choice `c` (what its card
        has: `to_card`)."""
        kv = None if c.kv_heads is None else c.kv_heads * self.head_dim
        return LayerShape(c.width, round(c.width * c.ffn_ratio), kv, self.ffn, self.bias,
                          self.bias, self.bias, self.norm)
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
                for kv in self.kv_choices:
                    for d in self.depths:
                        if not (self.share_always and d >= 2):
                            yield Choice(w, r, d, False, kv)
                        if self.sharing and d >= 2:
                            yield Choice(w, r, d, True, kv)

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
        return c if shared == c.shared else replace(c, shared=shared)

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
        """The card of an architecture: a version 1 card for a version 1 space (`is_v1`), else
        version 2 with the space's norm, biases, rotary base, FFN kind and each block's K/V
        heads."""
        blocks = tuple(
            Block(width=c.width, ffn_ratio=c.ffn_ratio, heads=c.width // self.head_dim,
                  depth=c.depth, shared=c.shared and c.depth > 1, ffn=self.ffn,
                  kv_heads=c.kv_heads)
            for c in arch
        )
        return Card(name=name, vocab=self.vocab, context=self.context, head_dim=self.head_dim,
                    blocks=blocks, positions=self.positions, tied_head=self.tied_head,
                    embed_width=self.embed_width, bias=self.bias, norm=self.norm,
                    rope_theta=self.rope_theta or DEFAULT_ROPE_THETA, meta=meta or {})

    def contains(self, card: Card) -> bool:
        """Whether a card is an architecture of this space."""
        if (card.vocab, card.head_dim, card.embed_width) != (
                self.vocab, self.head_dim, self.embed_width):
            return False
        if (card.norm, card.bias, card.has_qkv_bias, card.has_out_bias) != (
                self.norm, self.bias, self.bias, self.bias):
            return False
        if card.positions == "rope" and card.rope_theta != (self.rope_theta
                                                            or DEFAULT_ROPE_THETA):
            return False
        if not self.min_blocks <= len(card.blocks) <= self.max_blocks:
            return False
        widths = [b.width for b in card.blocks]
        if any(not self.allows_step(a, b) for a, b in zip(widths, widths[1:], strict=False)):
            return False
        return all(b.width in self.widths and b.ffn_ratio in self.ffn_ratios
                   and b.depth in self.depths and self.allows_sharing(b.shared, b.depth)
                   and b.ffn == self.ffn and b.kv_heads in self.kv_choices
                   for b in card.blocks)


def load_space(path: str | Path) -> Space:
    """Read a search space TOML file strictly (see the module docstring); errors name the file,
    the key and the fix."""
    path = Path(path)
    f = Fields(parse_toml(read_text(path, "search space"), path), str(path), fmt="TOML")
    version = f.get("schema_version", int, expect="the integer 1 or 2")
    if version not in (1, SCHEMA_VERSION):
        f.fail("schema_version", f"must be 1 or {SCHEMA_VERSION}, got {version}")
    if version == 1:
        for key in V2_KEYS:
            if key in f:
                f.fail(key, f"is a version 2 key: set schema_version = {SCHEMA_VERSION}")
    f.only(KEYS if version == 1 else KEYS + V2_KEYS)
    if isinstance(f.data.get("kv_heads"), list):  # a per-block choice
        kv_heads = f.get_list("kv_heads", int, lo=1, most=MAX_CHOICES)
        if not kv_heads:
            f.fail("kv_heads", "is empty: list one value at least, or leave kv_heads out for "
                               "multi-head attention")
    else:  # one number: every block's
        kv = f.get("kv_heads", int, None, lo=1,
                   expect="a whole number at least 1, or a list of them")
        kv_heads = () if kv is None else (kv,)
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
        "source": str(path), "kv_heads": kv_heads,
        "rope_theta": f.get("rope_theta", float, None, above=True, lo=0, hi=MAX_ROPE_THETA),
    }
    limits = {"widths": {"most": MAX_CHOICES}, "ffn_ratios": {"most": MAX_CHOICES},
              "order": {"choices": ORDERS}, "positions": {"choices": POSITIONS},
              "norm": {"choices": NORMS}, "ffn": {"choices": FFN_KINDS}}
    return Space(**f.fill(Space, given, limits))
