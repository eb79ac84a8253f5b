"""The MeRino design problem: maximize entropy under latency, FLOPs, parameter and memory budgets.

    maximize  H(A)
    subject to  lat(A) <= T, flops(A) <= F, params(A) <= P, memory(A) <= M, rho(A) <= rho_0,
                A in the search space

`Problem.evaluate` scores one architecture through the card and `merino_mobile.accounting` (the
source of truth). `Problem.pieces` decomposes each resource over the solver's per-block choices for
the exact solver; tests check the two agree by solving small spaces both ways.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from merino_mobile import accounting as acc
from merino_mobile.card import Card
from merino_mobile.entropy import EntropySettings, effectiveness, entropy, layer_entropy
from merino_mobile.errors import UserError
from merino_mobile.latency import LatencyTable, predict_latency
from merino_mobile.space import Choice, Space

RESOURCES = ("latency_ms", "flops", "params", "memory")
UNITS = {"latency_ms": "ms", "flops": "FLOPs/token", "params": "parameters", "memory": "bytes"}
REL_TOL = 1e-9  # float sums in a different order may differ in the last bits


@dataclass(frozen=True)
class Budgets:
    """Upper bounds; None means unconstrained."""

    latency_ms: float | None = None
    flops: float | None = None
    params: float | None = None
    memory: float | None = None

    def active(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Metrics:
    """Everything the design reports about one architecture."""

    entropy: float
    rho: float
    depth: int
    params: int
    flops: int
    kv_cache_bytes: int
    memory: int
    latency_ms: float | None

    def resource(self, name: str) -> float | None:
        return getattr(self, name)


@dataclass(frozen=True)
class Pieces:
    """One resource as a sum over the solver's choices.

    total = const + sum over blocks layer(choice) + sum over width changes between blocks
            proj(a, b) + first(width of block 0) + last(width of the last block)
            + wrap(last width, first width)
    `wrap` exists only when the embedding has the first block's width: a tied head after a last
    block of another width needs a projection back to the first width.
    """

    const: float
    layer: Callable[[Choice], float]
    proj: Callable[[int, int], float]
    first: Callable[[int], float]
    last: Callable[[int], float]
    wrap: Callable[[int, int], float] | None


@dataclass
class Problem:
    space: Space
    budgets: Budgets = field(default_factory=Budgets)
    settings: EntropySettings = field(default_factory=EntropySettings)
    context: int = 512
    quant: str = "int8"  # weight format counted by the memory budget
    kv_dtype: str = "fp32"
    latency: LatencyTable | None = None

    def __post_init__(self) -> None:
        if self.budgets.latency_ms is not None and self.latency is None:
            raise UserError("a latency budget needs a latency table: pass --device with a "
                            "profiled device (see `merino-mobile profile --help`)")
        if self.context < 1:
            raise UserError(f"context must be positive, got {self.context}")
        if self.settings.rho <= 0:
            raise UserError(f"--rho must be positive, got {self.settings.rho}")

    # -- scoring through the card ------------------------------------------------------------

    def card(self, arch: tuple[Choice, ...], name: str = "design") -> Card:
        return self.space.to_card(arch, name)

    def evaluate(self, arch: tuple[Choice, ...]) -> Metrics:
        card = self.card(arch)
        # the linear model the exact solver optimizes (see predict_latency's cache_aware)
        lat = (predict_latency(card, self.latency, self.context, cache_aware=False)
               if self.latency is not None else None)
        return Metrics(
            entropy=entropy(card, self.settings),
            rho=effectiveness(card),
            depth=card.depth,
            params=acc.params(card),
            flops=acc.flops_per_token(card, self.context),
            kv_cache_bytes=acc.kv_cache_bytes(card, self.context, self.kv_dtype),
            memory=acc.memory_bytes(card, self.context, self.quant, self.kv_dtype),
            latency_ms=lat,
        )

    def violations(self, m: Metrics) -> dict[str, float]:
        """Each violated constraint with its value (empty when feasible)."""
        out = {}
        for name, bound in self.budgets.active().items():
            value = m.resource(name)
            if value > bound * (1 + REL_TOL):
                out[name] = value
        if m.rho > self.settings.rho * (1 + REL_TOL):
            out["rho"] = m.rho
        return out

    def feasible(self, m: Metrics) -> bool:
        return not self.violations(m)

    # -- decomposition for the exact solver ---------------------------------------------------

    def layer_entropy(self, c: Choice, block_index: int) -> float:
        return c.depth * layer_entropy(c.width, c.ffn_ratio, self.settings, block_index)

    def pieces(self, resource: str) -> Pieces:
        """Decompose one resource (see RESOURCES) over the per-block choices."""
        s, ctx, v = self.space, self.context, self.space.vocab
        fixed_e = s.embed_width  # None: the embedding has the first block's width
        pos_rows = s.context if s.positions == "learned" else 0

        def hidden(c: Choice) -> int:
            return round(c.width * c.ffn_ratio)

        def copies(c: Choice) -> int:
            return 1 if c.shared and c.depth > 1 else c.depth

        if resource == "params":
            def proj(a: int, b: int) -> float:
                return acc.projection_params(a, b)

            def layer(c: Choice) -> float:
                return copies(c) * acc.layer_params(c.width, hidden(c))

            def first(w: int) -> float:
                e = fixed_e or w
                head = 0 if s.tied_head else v * e
                return pos_rows * w + (proj(e, w) if fixed_e else v * w + head)

            def last(w: int) -> float:
                return 2 * w + (proj(w, fixed_e) if fixed_e else 0)  # final norm, projection out

            const = (v * fixed_e * (1 if s.tied_head else 2)) if fixed_e else 0
        elif resource == "memory":
            q = self.quant

            def proj(a: int, b: int) -> float:
                return 0 if a == b else acc.matrix_bytes(b, a, q)

            def layer(c: Choice) -> float:
                w, f = c.width, hidden(c)
                weights = 4 * acc.matrix_bytes(w, w, q) + acc.matrix_bytes(f, w, q) \
                    + acc.matrix_bytes(w, f, q) + 4 * acc.layer_vector_params(w, f)
                return copies(c) * weights + c.depth * acc.kv_bytes_per_layer(w, ctx, self.kv_dtype)

            def first(w: int) -> float:
                e = fixed_e or w
                out = acc.matrix_bytes(pos_rows, w, q) if pos_rows else 0
                if fixed_e:
                    return out + proj(e, w)
                head = 0 if s.tied_head else acc.matrix_bytes(v, e, q)
                return out + acc.matrix_bytes(v, e, q) + head

            def last(w: int) -> float:
                return 4 * 2 * w + (proj(w, fixed_e) if fixed_e else 0)

            const = (acc.matrix_bytes(v, fixed_e, q) * (1 if s.tied_head else 2)) if fixed_e else 0
        elif resource == "flops":
            def proj(a: int, b: int) -> float:
                return 0 if a == b else 2 * a * b

            def layer(c: Choice) -> float:
                return c.depth * acc.layer_flops(c.width, hidden(c), ctx)

            def first(w: int) -> float:
                return proj(fixed_e, w) if fixed_e else 2 * w * v  # projection in, or the head

            def last(w: int) -> float:
                return proj(w, fixed_e) if fixed_e else 0

            const = 2 * fixed_e * v if fixed_e else 0
        elif resource == "latency_ms":
            t = self.latency
            if t is None:
                raise ValueError("latency pieces need a latency table")

            def proj(a: int, b: int) -> float:
                return 0 if a == b else t.projection(a, b, "decode", ctx)

            def layer(c: Choice) -> float:
                return c.depth * t.layer(c.width, c.ffn_ratio, c.width // s.head_dim, ctx)

            def first(w: int) -> float:
                if fixed_e:
                    return proj(fixed_e, w)
                return t.embedding(w, v, "decode", ctx) + t.head(w, v, "decode")

            def last(w: int) -> float:
                return proj(w, fixed_e) if fixed_e else 0

            const = t.fixed("decode")
            if fixed_e:
                const += t.embedding(fixed_e, v, "decode", ctx) + t.head(fixed_e, v, "decode")
        else:
            raise ValueError(f"unknown resource {resource!r}; known: {RESOURCES}")
        return Pieces(const=const, layer=layer, proj=proj, first=first, last=last,
                      wrap=None if fixed_e else proj)


@dataclass
class SolverInfo:
    name: str
    seconds: float
    optimal: bool
    gap: float | None = None
    evaluated: int | None = None  # architectures scored (EA, brute force)
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Design:
    """A solver's answer: the architecture, its metrics, and how it was found."""

    arch: tuple[Choice, ...]
    metrics: Metrics
    solver: SolverInfo

    def to_json(self) -> dict[str, Any]:
        return {"architecture": [asdict(c) for c in self.arch], "metrics": asdict(self.metrics),
                "solver": asdict(self.solver)}


class Infeasible(UserError):
    """No architecture of the space meets the budgets; the message names the binding resource."""

    def __init__(self, message: str, minimums: dict[str, float]):
        super().__init__(message)
        self.minimums = minimums


def log_width_sum(c: Choice) -> float:
    """sum over a block's layers of log(width), the effectiveness term."""
    return c.depth * math.log(c.width)
