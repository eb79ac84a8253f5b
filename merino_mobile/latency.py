"""The latency model the design solver uses, and the card-level prediction built on it.

    lat(A) = t_fixed + sum_i L_i * t_layer(E_i, R_i, H_i, context)
             + sum t_proj(E_i, E_i+1) + t_embed(E_1) + t_head(E_N, V)

A `LatencyTable` gives each term in milliseconds. The measured lookup table of a device
(`merino_mobile.lut`) is one; tests pass synthetic ones. The solver only ever calls these methods,
so any object with them works.
"""

from __future__ import annotations

from typing import Protocol

from merino_mobile.accounting import transitions
from merino_mobile.card import Card


class LatencyTable(Protocol):
    """Per-term latencies (ms) of one device, runtime and quantization, for one phase.

    `phase` is "decode" (one new token attending to `context` cached positions) or "prefill"
    (`context` prompt tokens at once).
    """

    def fixed(self, phase: str = "decode") -> float:
        """Per-call overhead of the runtime, independent of the architecture."""
        ...

    def layer(self, width: int, ffn_ratio: float, heads: int, context: int,
              phase: str = "decode") -> float:
        """One decoder layer."""
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


def predict_latency(card: Card, table: LatencyTable, context: int, phase: str = "decode") -> float:
    """Predicted time (ms) of one decode step at `context`, or of a prefill of `context` tokens."""
    total = table.fixed(phase)
    total += table.embedding(card.embedding_width, card.vocab, phase, context)
    for b in card.blocks:
        total += b.depth * table.layer(b.width, b.ffn_ratio, b.heads, context, phase)
    for a, b in transitions(card):
        total += table.projection(a, b, phase, context)
    total += table.head(card.embedding_width, card.vocab, phase)
    return total
