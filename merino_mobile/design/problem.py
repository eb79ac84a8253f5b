"""The MeRino design problem: maximize an objective under latency, FLOPs, parameter and memory
budgets.

    maximize  H(A)
    subject to  lat(A) <= T, flops(A) <= F, params(A) <= P, memory(A) <= M, rho(A) <= rho_0,
                A in the search space

H is the objective of the entropy settings (`merino_mobile.entropy`: `deepmad`, `merino` or
`params`), rho its effectiveness variant (`deepmad` or `merino`); `Metrics.entropy` is the value
of that objective, whichever it is.

`Problem.evaluate` scores one architecture through the card and `merino_mobile.accounting` (the
source of truth). `Problem.violations` checks it against every constraint in exact arithmetic:
every solver's answer passes that check before it is returned (`Problem.certify`), so no design
over its budget is ever reported. `Problem.pieces` decomposes each resource over the solver's
per-block choices for the exact solver; tests check the two agree by solving small spaces both
ways.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from merino_mobile import accounting as acc
from merino_mobile.card import Card
from merino_mobile.entropy import (
    MERINO_BETA,
    EntropySettings,
    block_value,
    effectiveness,
    log2_at_least,
    objective_value,
    rho_linear,
    subspace_table,
)
from merino_mobile.errors import UserError
from merino_mobile.latency import LatencyTable, predict_latency
from merino_mobile.latency.predict import LayerKind, MissingLayerKind
from merino_mobile.space import Choice, Space

RESOURCES = ("latency_ms", "flops", "params", "memory")
UNITS = {"latency_ms": "ms", "flops": "FLOPs/token", "params": "parameters", "memory": "bytes"}
# what Problem.violations checks, in this order ("space": choice sets, block count and ordering)
CONSTRAINTS = ("space", *RESOURCES, "rho")


def format_budget(resource: str, value: float) -> str:
    """A budget or cost of one resource (see RESOURCES) for people: "1.05ms", "60.0M", "200.0MB"."""
    from merino_mobile.units import human_bytes, human_count

    if resource == "latency_ms":
        short = f"{value:.3g}"
        # 3 significant digits, but never an exponent ("1e+03ms" is no card name or reading)
        return f"{short if 'e' not in short else f'{value:.0f}'}ms"
    if resource == "memory":
        return human_bytes(value)
    return human_count(value)


def _exact(resource: str, value: float) -> str:
    """A cost or a bound in full, for a message about a constraint missed by a few units."""
    if resource == "latency_ms":
        return f"{value!r}ms"
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,}"


@dataclass(frozen=True)
class Budgets:
    """Upper bounds; None means unconstrained."""

    latency_ms: float | None = None
    flops: float | None = None
    params: float | None = None
    memory: float | None = None

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise UserError(f"the {name} budget must be a number, got {value!r}")
            if not math.isfinite(value) or value <= 0:
                raise UserError(f"the {name} budget must be a finite positive number of "
                                f"{UNITS[name]}, got {value!r}")

    def active(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Metrics:
    """Everything the design reports about one architecture (`entropy`: the value of the
    problem's objective; `rho`: its effectiveness variant)."""

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
        if not (math.isfinite(self.settings.rho) and self.settings.rho > 0):
            raise UserError(f"--rho must be a finite positive number, got {self.settings.rho}")
        if self.latency is not None and not self.space.is_v1:
            self._check_layer_kinds()
        if self.settings.objective == "merino":  # every matrix shape of the space, or refuse now
            table = subspace_table()
            for w in self.space.widths:
                for r in self.space.ffn_ratios:
                    for kv in self.space.kv_choices:
                        shape = self.space.layer_shape(Choice(w, r, 1, False, kv))
                        for _, rows, cols in shape.matrices():
                            table.expected(cols, rows)

    def _check_layer_kinds(self) -> None:
        """Refuse now, naming the space to profile, when the latency table lacks a layer kind
        of the space (rather than from inside the solver)."""
        s, t = self.space, self.latency
        w, r = s.widths[0], s.ffn_ratios[0]
        for kv in s.kv_choices:
            kind = LayerKind(s.ffn, kv, s.norm, s.bias)
            if kind.is_v1:
                continue
            try:
                t.layer(w, r, w // s.head_dim, self.context, kind=kind)
            except MissingLayerKind as e:
                space = Path(s.source).stem if s.source != "<space>" else s.name
                raise MissingLayerKind(str(e).replace("--space SPACE", f"--space {space}")
                                       ) from None

    # -- scoring through the card ------------------------------------------------------------

    def card(self, arch: tuple[Choice, ...], name: str = "design") -> Card:
        return self.space.to_card(arch, name)

    def evaluate(self, arch: tuple[Choice, ...]) -> Metrics:
        card = self.card(arch)
        # the linear model the exact solver optimizes (see predict_latency's cache_aware)
        lat = (predict_latency(card, self.latency, self.context, cache_aware=False)
               if self.latency is not None else None)
        return Metrics(
            entropy=objective_value(card, self.settings),
            rho=effectiveness(card, self.settings.effectiveness),
            depth=card.depth,
            params=acc.params(card),
            flops=acc.flops_per_token(card, self.context),
            kv_cache_bytes=acc.kv_cache_bytes(card, self.context, self.kv_dtype),
            memory=acc.memory_bytes(card, self.context, self.quant, self.kv_dtype),
            latency_ms=lat,
        )

    def violations(self, arch: tuple[Choice, ...], m: Metrics | None = None) -> dict[str, str]:
        """Every constraint (see CONSTRAINTS) the architecture breaks, each with what breaks it;
        empty when it meets them all.

        Exact: counts are Python integers from `merino_mobile.accounting` and are compared with
        the budgets as fractions (a float budget is a binary fraction, compared as such);
        latency is the table's own float sum, compared as a float; rho <= rho_0 is decided
        without logarithms (see `rho_within`). No tolerance: one parameter over is over.
        """
        space = self.space_violation(arch)
        if space:  # not an architecture of the space: nothing else to score
            return {"space": space}
        m = self.evaluate(arch) if m is None else m
        out = {}
        for name, bound in self.budgets.active().items():
            value = m.resource(name)
            if name == "latency_ms":
                over = float(value) > float(bound)
            else:
                over = Fraction(value) > Fraction(bound)
            if over:
                out[name] = f"{name} {_exact(name, value)} > budget {_exact(name, bound)}"
        if not rho_within(arch, self.settings.rho, self.settings.effectiveness):
            out["rho"] = f"rho ({self.settings.effectiveness}) {m.rho!r} > {self.settings.rho!r}"
        return out

    def feasible(self, arch: tuple[Choice, ...], m: Metrics | None = None) -> bool:
        return not self.violations(arch, m)

    def space_violation(self, arch: tuple[Choice, ...]) -> str | None:
        """Why an architecture is not one of the space's (block count, choice sets, order)."""
        s = self.space
        if not s.min_blocks <= len(arch) <= s.max_blocks:
            return f"{len(arch)} blocks, the space allows {s.min_blocks} to {s.max_blocks}"
        for i, c in enumerate(arch):
            if c.width not in s.widths:
                return f"block {i} width {c.width} is not one of {list(s.widths)}"
            if c.ffn_ratio not in s.ffn_ratios:
                return f"block {i} FFN ratio {c.ffn_ratio:g} is not one of {list(s.ffn_ratios)}"
            if c.depth not in s.depths:
                return f"block {i} depth {c.depth} is outside {s.depths.start}..{s.max_depth}"
            if c.kv_heads not in s.kv_choices:
                return (f"block {i} K/V heads {c.kv_heads} are not one of "
                        f"{list(s.kv_heads) or 'the heads (multi-head attention)'}")
            if not s.allows_sharing(c.shared, c.depth):
                if c.shared:
                    return f"block {i} shares weights, which the space does not allow there"
                return (f"block {i} of {c.depth} layers does not share weights, which the space "
                        f"requires (sharing = \"always\")")
        for i, (a, b) in enumerate(zip(arch, arch[1:], strict=False)):
            if not s.allows_step(a.width, b.width):
                return f"block {i + 1} width {b.width} after {a.width} breaks order {s.order!r}"
        return None

    def certify(self, arch: tuple[Choice, ...], info: SolverInfo,
                m: Metrics | None = None) -> Design:
        """The Design of a solver's answer, once it passes the exact check of every constraint
        (recorded in `info.checked`); raises Unverified when it does not."""
        m = self.evaluate(arch) if m is None else m
        bad = self.violations(arch, m)
        if bad:
            raise Unverified(f"the {info.name} solver's design breaks its constraints: "
                             + "; ".join(bad.values()))
        info.checked = [c for c in CONSTRAINTS
                        if c in ("space", "rho") or c in self.budgets.active()]
        return Design(arch=arch, metrics=m, solver=info)

    # -- decomposition for the exact solver ---------------------------------------------------

    def block_score(self, c: Choice, block_index: int) -> float:
        """Block `block_index`'s share of the objective with choice `c` (the solvers' sum)."""
        return block_value(c.width, c.ffn_ratio, c.depth, c.shared, self.settings, block_index,
                           self.space.layer_shape(c))

    @property
    def objective_sees_sharing(self) -> bool:
        """Whether a shared block scores differently from an unshared one (`params` counts a
        shared block's weights once; the entropies count executed layers)."""
        return self.settings.objective == "params"

    def pieces(self, resource: str) -> Pieces:
        """Decompose one resource (see RESOURCES) over the per-block choices."""
        s, ctx, v = self.space, self.context, self.space.vocab
        fixed_e = s.embed_width  # None: the embedding has the first block's width
        pos_rows = s.context if s.positions == "learned" else 0

        def copies(c: Choice) -> int:
            return 1 if c.shared and c.depth > 1 else c.depth

        if resource == "params":
            def proj(a: int, b: int) -> float:
                return acc.projection_params(a, b)

            def layer(c: Choice) -> float:
                return copies(c) * s.layer_shape(c).params

            def first(w: int) -> float:
                e = fixed_e or w
                head = 0 if s.tied_head else v * e
                return pos_rows * w + (proj(e, w) if fixed_e else v * w + head)

            def last(w: int) -> float:  # final norm, projection out
                return acc.norm_params(s.norm, w) + (proj(w, fixed_e) if fixed_e else 0)

            const = (v * fixed_e * (1 if s.tied_head else 2)) if fixed_e else 0
        elif resource == "memory":
            q = self.quant

            def proj(a: int, b: int) -> float:
                return 0 if a == b else acc.matrix_bytes(b, a, q)

            def layer(c: Choice) -> float:
                shape = s.layer_shape(c)
                weights = sum(acc.matrix_bytes(rows, cols, q)
                              for _, rows, cols in shape.matrices())
                weights += 4 * shape.vector_params
                return copies(c) * weights + c.depth * acc.kv_bytes_per_layer(
                    shape.kv, ctx, self.kv_dtype)

            def first(w: int) -> float:
                e = fixed_e or w
                out = acc.matrix_bytes(pos_rows, w, q) if pos_rows else 0
                if fixed_e:
                    return out + proj(e, w)
                head = 0 if s.tied_head else acc.matrix_bytes(v, e, q)
                return out + acc.matrix_bytes(v, e, q) + head

            def last(w: int) -> float:
                return 4 * acc.norm_params(s.norm, w) + (proj(w, fixed_e) if fixed_e else 0)

            const = (acc.matrix_bytes(v, fixed_e, q) * (1 if s.tied_head else 2)) if fixed_e else 0
        elif resource == "flops":
            def proj(a: int, b: int) -> float:
                return 0 if a == b else 2 * a * b

            def layer(c: Choice) -> float:
                return c.depth * s.layer_shape(c).flops(ctx)

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
                # the layer kind only where it is not version 1's: a table (or a test's
                # synthetic one) of version 1 layers is called exactly as before
                kind = LayerKind(s.ffn, c.kv_heads, s.norm, s.bias)
                extra = {} if kind.is_v1 else {"kind": kind}
                return c.depth * t.layer(c.width, c.ffn_ratio, c.width // s.head_dim, ctx,
                                         **extra)

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
    checked: list[str] = field(default_factory=list)  # constraints verified exactly (certify)


@dataclass
class Design:
    """A solver's answer: the architecture, its metrics, and how it was found."""

    arch: tuple[Choice, ...]
    metrics: Metrics
    solver: SolverInfo

    def to_json(self) -> dict[str, Any]:
        return {"architecture": [c.to_json() for c in self.arch],
                "metrics": asdict(self.metrics),
                "solver": asdict(self.solver)}


class Infeasible(UserError):
    """No architecture of the space meets the budgets; the message names the binding resource."""

    def __init__(self, message: str, minimums: dict[str, float]):
        super().__init__(message)
        self.minimums = minimums


class Unverified(UserError):
    """A solver found no design that passes the exact check (never returned as a design)."""


def rho_within(arch: tuple[Choice, ...], rho: float, variant: str = "deepmad") -> bool:
    """rho(A) <= rho_0 decided exactly (rho as in `merino_mobile.entropy.effectiveness`).

    deepmad: rho = D / exp(sum_i L_i log E_i / D) <= rho_0 is, raised to the power D > 0,
    D^D <= rho_0^D * prod_i E_i^L_i: integers and one binary fraction, no logarithm.
    merino: rho = beta D / (sum_i L_i log2 E_i / D) <= rho_0 is
    log2(prod_i E_i^L_i) >= beta D^2 / rho_0, the logarithm of a whole number against a
    fraction, which `log2_at_least` decides exactly.
    """
    depth = sum(c.depth for c in arch)
    if depth == 0:
        return False
    widths = math.prod(c.width ** c.depth for c in arch)
    if variant == "merino":
        return log2_at_least(widths, MERINO_BETA * depth * depth / Fraction(rho))
    return Fraction(depth) ** depth <= Fraction(rho) ** depth * widths


rho_row = rho_linear  # the bound rho <= rho_0 as the exact MIP's row (entropy.rho_linear)
