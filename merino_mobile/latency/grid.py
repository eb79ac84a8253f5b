"""The profile's grid: which shapes of each latency term to measure, from a search space.

A point (`store.Point`) is one term at one shape: the null call, the fixed per-call work, the
head, the embedding, a projection between two widths, or a decoder layer, each at decode or
prefill and at a context length. The grid is built on the same `Space` the solver searches, so
the table always covers the shapes a design can pick.

A space of Llama-style layers (`Space.ffn`, `Space.norm`, `Space.bias`, `Space.kv_heads`) gets
its layers measured as that kind (`latency.predict.LayerKind`): each layer shape once per K/V
head count the space allows, the FFN kind, norm and biases fixed by the space. A version 1 space
measures the very points it always did.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from merino_mobile.errors import UserError
from merino_mobile.latency.predict import LayerKind
from merino_mobile.latency.store import Point
from merino_mobile.space import Space, load_space

GRIDS = ("quick", "full")
QUICK_CONTEXTS = (128, 512)
FULL_CONTEXTS = (64, 128, 256, 512, 1024, 2048)
QUICK_PROMPTS = (128,)
FULL_PROMPTS = (32, 128, 512)
EMBED_VOCAB = 4096  # the lookup's cost does not depend on rows it never reads (see table.py)


@dataclass(frozen=True)
class Grid:
    """The shapes to measure, from a search space."""

    name: str
    widths: tuple[int, ...]
    ffn_ratios: tuple[float, ...]
    head_dim: int
    vocab: int
    max_context: int
    contexts: tuple[int, ...]
    prompts: tuple[int, ...]
    projection_widths: tuple[int, ...]
    embedding_widths: tuple[int, ...] = ()  # () = every width
    # the layers' kind (`LayerKind`): FFN kind, norm, biases and the K/V heads measured (():
    # multi-head only); the defaults are a version 1 space's
    ffn: str = "gelu"
    norm: str = "layernorm"
    bias: bool = True
    kv_heads: tuple[int, ...] = ()

    def layer_kinds(self) -> list[LayerKind]:
        """The layer kinds measured, one per K/V head count."""
        return [LayerKind(self.ffn, kv, self.norm, self.bias) for kv in self.kv_heads or (None,)]

    def points(self) -> list[Point]:
        """Every point, in a fixed order (batches, and so cached programs, depend on it)."""
        pts: list[Point] = [Point("null", "decode", context=1)]
        pts += [Point("null", "prefill", context=p) for p in self.prompts]
        pts += [Point("fixed", "decode", context=c) for c in self.contexts]
        pts += [Point("fixed", "prefill", context=p) for p in self.prompts]
        pts += [Point("head", "decode", width=w, vocab=self.vocab) for w in self.widths]
        for phase, lengths in (("decode", (1,)), ("prefill", self.prompts)):
            for t in lengths:
                pts += [Point("embedding", phase, width=w, vocab=EMBED_VOCAB, context=t)
                        for w in self.embedding_widths or self.widths]
                pts += [Point("projection", phase, width=a, width_out=b, context=t)
                        for a in self.projection_widths for b in self.projection_widths if a != b]
        for phase, lengths in (("decode", self.contexts), ("prefill", self.prompts)):
            for c in lengths:
                pts += [Point("layer", phase, width=w, ffn_ratio=r, heads=w // self.head_dim,
                              context=c, **kind.point_fields())
                        for kind in self.layer_kinds() for w in self.widths
                        for r in self.ffn_ratios]
        return pts

    def sentinel(self) -> Point:
        """The largest decode layer: re-measured to detect drift, long enough to time well."""
        w, r = self.widths[-1], self.ffn_ratios[-1]
        kind = self.layer_kinds()[-1]  # the most K/V heads: the slowest kind
        return Point("layer", "decode", width=w, ffn_ratio=r, heads=w // self.head_dim,
                     context=self.contexts[-1], **kind.point_fields())

    def to_json(self) -> dict[str, Any]:
        """The grid as JSON; the layer kind's fields only where they are not version 1's, so a
        version 1 space's grid reads as before."""
        d = asdict(self)
        defaults = {"ffn": "gelu", "norm": "layernorm", "bias": True, "kv_heads": ()}
        return {k: v for k, v in d.items() if k not in defaults or v != defaults[k]}


def _spread(values: Sequence, n: int) -> tuple:
    """n values spread evenly over a sorted sequence, always including both ends."""
    if len(values) <= n:
        return tuple(values)
    idx = sorted({round(i * (len(values) - 1) / (n - 1)) for i in range(n)})
    return tuple(values[i] for i in idx)


def make_grid(space: Space | str | Path, grid: str = "quick", contexts: Sequence[int] = (),
              prompts: Sequence[int] | None = None) -> Grid:
    """The grid of a search space (a `Space`, or the path of its TOML, read by `load_space`).

    quick: every other width (both ends kept), 3 FFN ratios, 2 decode contexts, 1 prompt length,
    projections among 3 widths, embeddings at 4 (both are small terms that interpolate well);
    full: everything, 6 contexts, 3 prompt lengths. Both measure every K/V head count of the
    space (a discrete kind, not interpolated between) with its FFN kind, norm and biases.
    """
    if grid not in GRIDS:
        raise UserError(f"unknown grid {grid!r}; choose one of {', '.join(GRIDS)}")
    if not isinstance(space, Space):
        space = load_space(space)
    widths = sorted(set(space.widths))
    ratios = sorted(set(space.ffn_ratios))
    max_context = space.context
    for what, values in (("contexts", contexts), ("prompts", prompts or ())):
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or v < 0]
        if bad or (what == "contexts" and any(v < 1 for v in values)):
            raise UserError(f"{what} must be positive whole numbers, got {list(values)}")
    quick = grid == "quick"
    if quick:
        widths_q = list(widths[::2])
        if widths_q[-1] != widths[-1]:
            widths_q.append(widths[-1])
        widths = widths_q
        ratios = list(_spread(ratios, 3))
    default_c = QUICK_CONTEXTS if quick else FULL_CONTEXTS
    ctx = sorted({min(c, max_context) for c in (contexts or default_c)})
    default_p = QUICK_PROMPTS if quick else FULL_PROMPTS
    prm = sorted({min(p, max_context) for p in (default_p if prompts is None else prompts)
                  if p > 0})
    return Grid(grid, tuple(widths), tuple(ratios), space.head_dim, space.vocab, max_context,
                tuple(ctx), tuple(prm), _spread(widths, 3) if quick else tuple(widths),
                _spread(widths, 4) if quick else (), space.ffn, space.norm, space.bias,
                space.kv_heads)


def describe_grid(grid: Grid) -> str:
    """One line: how many points and which shapes."""
    kinds = "" if grid.layer_kinds() == [LayerKind()] else "; " + " and ".join(
        k.describe() for k in grid.layer_kinds())
    return (f"{grid.name} grid: {len(grid.points())} points; widths {list(grid.widths)}, ffn "
            f"ratios {[f'{r:g}' for r in grid.ffn_ratios]}, decode contexts "
            f"{list(grid.contexts)}, prompts {list(grid.prompts)}{kinds}")
