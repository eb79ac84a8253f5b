"""The latency model the design solver uses, and the card-level prediction built on it.

    lat(A) = t_fixed + sum_i L_i * t_layer(E_i, R_i, H_i, context; kind_i)
             + sum t_proj(E_i, E_i+1) + t_embed(E_1) + t_head(E_N, V)

A `LatencyTable` gives each term in milliseconds. A layer's `LayerKind` (its FFN kind, K/V heads,
norm and biases) is passed as `kind=` only when it is not a version 1 layer's (GELU, multi-head,
LayerNorm, biases), so a table of version 1 layers, and any synthetic table a test writes, is
called exactly as before; a table without measurements of a kind raises `MissingLayerKind`.
The measured lookup table of a device (`table.py`) is one; tests pass synthetic ones. The
solver only ever calls these methods, so any object with them works.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from merino_mobile.accounting import decode_working_set, transitions
from merino_mobile.card import Block, Card
from merino_mobile.errors import UserError

# Where a whole model's decode step turns from hot to streaming, as a share of the last-level
# cache (see `cold_fraction`): well below the cache's size, because a VM's cache is likely shared
# with other tenants' cores, and the model's activations and the runtime's own data use it too.
# Chosen from whole models measured with benchmarks/lut_accuracy.py (docs/measurements.md).
HOT_BELOW = 0.2
COLD_ABOVE = 0.5


@dataclass(frozen=True)
class LayerKind:
    """What a decoder layer is made of besides its width, FFN ratio and heads: the FFN kind,
    the K/V heads (None: as many as heads), the norm and whether its maps have biases. The
    default is a version 1 layer. A Llama-style layer's rotary embedding is not part of it: the
    layer's micro-benchmark does not rotate q and k (elementwise, O(E) per token beside the
    layer's O(E^2) matrices), as for version 1 spaces with rope positions."""

    ffn: str = "gelu"
    kv_heads: int | None = None
    norm: str = "layernorm"
    bias: bool = True

    @classmethod
    def of(cls, card: Card, block: Block) -> LayerKind:
        """The kind of a card's block (the q/k/v and o biases follow the card's `bias`). K/V
        heads are kept as the card gives them, as `Space.to_card` writes them (a table looks an
        explicit kv_heads equal to heads up as multi-head where it has no such points)."""
        return cls(block.ffn, block.kv_heads, card.norm, card.bias)

    @property
    def is_v1(self) -> bool:
        return self == LayerKind()

    def point_fields(self) -> dict[str, Any]:
        """The `store.Point` fields of a layer of this kind; all empty for a version 1 layer,
        whose points (and stored keys) are as they always were."""
        return {"ffn": "" if self.ffn == "gelu" else self.ffn, "kv_heads": self.kv_heads or 0,
                "norm": "" if self.norm == "layernorm" else self.norm, "nobias": not self.bias}

    @classmethod
    def of_point(cls, p: Any) -> LayerKind:
        """The kind of a layer `store.Point`."""
        return cls(p.ffn or "gelu", p.kv_heads or None, p.norm or "layernorm", not p.nobias)

    def describe(self) -> str:
        """For people: "swiglu layers with 3 K/V heads, rmsnorm, no biases"."""
        n = self.kv_heads
        kv = "multi-head" if n is None else f"with {n} K/V head{'s' if n > 1 else ''}"
        return (f"{self.ffn} layers {kv}, {self.norm}, "
                f"{'biases' if self.bias else 'no biases'}")


class MissingLayerKind(UserError):
    """A latency table without measurements of the layer kind a card or space needs."""


class LatencyTable(Protocol):
    """Per-term latencies (ms) of one device, runtime and quantization, for one phase.

    `phase` is "decode" (one new token attending to `context` cached positions) or "prefill"
    (`context` prompt tokens at once).
    """

    def fixed(self, phase: str = "decode") -> float:
        """Per-call overhead of the runtime, independent of the architecture."""
        ...

    def layer(self, width: int, ffn_ratio: float, heads: int, context: int,
              phase: str = "decode", *, kind: LayerKind = LayerKind()) -> float:
        """One decoder layer (of `kind`, passed only when it is not the default)."""
        ...

    def projection(self, width_in: int, width_out: int, phase: str = "decode",
                   context: int = 1) -> float:
        """A bias-free linear projection between widths."""
        ...

    def embedding(self, width: int, vocab: int, phase: str = "decode", context: int = 1) -> float:
        """Token (and position) embedding lookup."""
        ...

    def head(self, width: int, vocab: int, phase: str = "decode") -> float:
        """The output projection to vocabulary logits (last position only)."""
        ...


def cold_fraction(working_set: float, cache_bytes: float) -> float:
    """How much of a decode step's weight traffic comes from DRAM, by how the bytes it reads
    compare with the last-level cache: 0 up to HOT_BELOW of it, 1 from COLD_ABOVE, linear
    between (a cache's replacement is not a sharp LRU, and other data shares it)."""
    if cache_bytes <= 0:
        return 1.0
    x = working_set / cache_bytes
    return min(1.0, max(0.0, (x - HOT_BELOW) / (COLD_ABOVE - HOT_BELOW)))


def predict_latency(card: Card, table: LatencyTable, context: int, phase: str = "decode",
                    *, cache_aware: bool = True) -> float:
    """Predicted time (ms) of one decode step at `context`, or of a prefill of `context` tokens.

    The table's terms are timed with their weights streaming from DRAM (micro.py,
    STREAM_BYTES), as in a model larger than the caches. A table that also holds hot timings
    (`has_hot`, `cache_bytes`; the host's) predicts a decode step of a model whose working set
    (`accounting.decode_working_set`) fits in the cache from them: each term with weights is
    hot + cold_fraction * (cold - hot). `cache_aware=False` is the plain sum of streaming terms,
    the linear model the design solver optimizes (an upper bound for such small models).
    """
    total = 0.0
    for t in predict_breakdown(card, table, context, phase, cache_aware=cache_aware):
        total += t.ms  # in the terms' order, left to right: the sum the solver's rows make
    return total


@dataclass(frozen=True)
class TermCost:
    """One term of a card's predicted latency (see `predict_breakdown`).

    `term` is "fixed", "embedding", "layer", "projection" or "head"; `width` the width it runs
    at (a layer's own width, the width a projection reads, the embedding width for the embedding
    and the head, 0 for the fixed cost); `width_out` a projection's output width; `ms` its share
    of the prediction: for a layer term, all `depth` layers of its block.
    """

    term: str
    width: int
    ms: float
    width_out: int = 0
    depth: int = 1


def predict_breakdown(card: Card, table: LatencyTable, context: int, phase: str = "decode",
                      *, cache_aware: bool = True) -> list[TermCost]:
    """The terms `predict_latency` sums, one `TermCost` each, in the same order and with the
    same hot/streaming blend: their `ms` add up to `predict_latency(card, table, context, phase,
    cache_aware=cache_aware)`. The calibration (`merino_mobile.latency.calibration`) fits its
    per-group factors on these."""
    blend = (cache_aware and phase == "decode" and getattr(table, "has_hot", False)
             and getattr(table, "cache_bytes", 0) > 0)
    f = 1.0
    if blend:
        quant = getattr(table, "quant", "fp32")
        f = cold_fraction(decode_working_set(card, context, quant), table.cache_bytes)

    def weighted(term: Callable[..., float], *args: Any, **kwargs: Any) -> float:
        cold = term(*args, **kwargs)
        if not blend or f >= 1.0:
            return cold
        hot = term(*args, hot=True, **kwargs)
        return hot + f * (cold - hot)

    e = card.embedding_width
    out = [TermCost("fixed", 0, table.fixed(phase)),
           TermCost("embedding", e, table.embedding(e, card.vocab, phase, context))]
    for b in card.blocks:
        kind = LayerKind.of(card, b)
        extra = {} if kind.is_v1 else {"kind": kind}
        out.append(TermCost("layer", b.width, b.depth * weighted(
            table.layer, b.width, b.ffn_ratio, b.heads, context, phase, **extra),
            depth=b.depth))
    for a, b in transitions(card):
        out.append(TermCost("projection", a, weighted(table.projection, a, b, phase, context),
                            width_out=b))
    out.append(TermCost("head", e, weighted(table.head, e, card.vocab, phase)))
    return out
