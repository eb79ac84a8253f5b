"""Entropy and effectiveness of a decoder (Maximum Entropy Principle, DeepMAD and MeRino).

An MLP of widths w_j has entropy sum_j log w_j up to constants. A decoder layer's main path has the
attention map of width E and the FFN hidden layer of width R*E, so

    H(A) = sum_i alpha_i * L_i * (a * log(E_i) + b * log(R_i * E_i))

Effectiveness: with D = sum_i L_i and the geometric mean width W = exp(sum_i L_i log E_i / D),
rho(A) = D / W. A network too deep for its width (rho above rho_0) does not train well, and
without the bound the entropy optimum degenerates into very deep, very thin stacks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from merino_mobile.card import Card

# GPT-2 and OPT-125M sit at rho ~ 0.016, MobileLLM-style deep-and-thin models near 0.06. 0.03 is
# the bound under which the highest-entropy architecture trained best in the project's experiment
# (benchmarks/entropy_vs_loss.py, 24 trained architectures; docs/experiments.md); a and b stay 1:
# no weighting changed which architecture was picked.
DEFAULT_RHO = 0.03


@dataclass(frozen=True)
class EntropySettings:
    """Weights of the entropy objective. `alpha` is per block (missing blocks weigh 1)."""

    a: float = 1.0
    b: float = 1.0
    alpha: tuple[float, ...] = ()
    rho: float = DEFAULT_RHO

    def alpha_of(self, block_index: int) -> float:
        return self.alpha[block_index] if block_index < len(self.alpha) else 1.0


def layer_entropy(width: int, ffn_ratio: float, s: EntropySettings, block_index: int = 0) -> float:
    """Entropy contributed by one layer of a block."""
    return s.alpha_of(block_index) * (s.a * math.log(width) + s.b * math.log(ffn_ratio * width))


def entropy(card: Card, settings: EntropySettings = EntropySettings()) -> float:
    return sum(b.depth * layer_entropy(b.width, b.ffn_ratio, settings, i)
               for i, b in enumerate(card.blocks))


def effectiveness(card: Card) -> float:
    """rho = D / W with W the depth-weighted geometric mean width."""
    depth = card.depth
    mean_log_width = sum(b.depth * math.log(b.width) for b in card.blocks) / depth
    return depth / math.exp(mean_log_width)
