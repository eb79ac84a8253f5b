"""Objectives and effectiveness of a decoder: what the design step maximizes, and the bound that
keeps a design trainable.

Objectives (`OBJECTIVES`; `EntropySettings.objective`). Each is a sum over blocks of a value that
is affine in the block's depth once its width, FFN ratio and sharing are fixed, so the exact MIP
(`merino_mobile.design.exact`) optimizes it exactly.

- `deepmad`: DeepMAD's entropy of an MLP of widths w_j, sum_j log w_j, per layer
  (the attention map of width E, the FFN hidden layer of width R*E):

      H(A) = sum_i alpha_i * L_i * (a * log(E_i) + b * log(R_i * E_i))

- `merino` (the default, with a = 1, b = 4): MeRino's subspace entropy (arXiv 2403.07921,
  Section 3). A d_in x d_out matrix W drawn as at initialization (Gaussian entries, std
  1/sqrt(d_in)) spans a subspace whose entropy is H(W) = sum_i log(sigma_i + eps) over its
  min(d_in, d_out) singular values, eps = 1e-3. Its expected value per shape comes from a
  table computed once (`SubspaceTable`, shipped as merino_mobile/data/subspace_entropy.json,
  rebuilt by `python -m merino_mobile.entropy`). A layer accumulates its matrices, weighted
  like MeRino's alpha_1 (MHA) and alpha_2 (FFN):

      H(layer) = a * (H(q) + H(k) + H(v) + H(o)) + b * (H(ffn_up) + H(ffn_down))
      H(A) = sum_i alpha_i * L_i * H(layer of block i)

  so `a` and `b` are MeRino's alpha_1 and alpha_2 (`--alpha-mha`, `--alpha-ffn`). Under
  grouped-query attention k and v are the layer's own E x K maps (K = kv_heads x head_dim, the
  narrower subspace they span); a gated FFN (SwiGLU) adds its gate, a second E x F matrix, to the
  FFN term: H(ffn) = H(gate) + H(up) + H(down). At this
  scale a square matrix has about -0.5 nats per singular value (most of the spectrum lies below
  1), so with a = b = 1 every layer lowers H and wider matrices lower it more: maximized alone
  under upper budgets, H picks the smallest design of the space. Only the FFN's wide matrix
  (d_in = E < d_out = R*E, sigma ~ sqrt(R)) adds entropy, so weights with b well above a turn
  that around.

- `params`: LiteTransformerSearch's training-free proxy, the decoder's parameter count (the
  layers only, a shared block's once: `merino_mobile.accounting.decoder_params`), so it counts
  a gate's E x F and GQA's E x K maps as the accounting does (`accounting.LayerShape`). It
  takes no weights.

`deepmad` under GQA and gating. DeepMAD scores a layer as an MLP of the widths a token's
representation passes through: the attention's output (E) and the FFN's hidden layer (F). Neither
changes with the Llama-style kinds: K and V feed the attention scores and weighted sum, whose
output is still E wide, and SwiGLU's gate multiplies the F-wide up projection elementwise, so
the hidden layer is still F wide. So `deepmad` gives a GQA or gated layer the value of an MHA
GELU layer of the same E and F; what GQA saves and what the gate adds, `merino` and `params`
see (and every budget).

Shared blocks. `deepmad` and `merino` count executed layers: a shared block of L layers has the
entropy of an unshared one. Entropy measures the map a token's representation passes through,
and it passes through each executed layer; MeRino's own space shares every block's weights and
still searches 1 to 4 layers per block, which only makes sense if executed depth counts. What
sharing costs in capacity, entropy does not see; `params` does (a shared block counts once).

Effectiveness (`EFFECTIVENESS`; `EntropySettings.effectiveness`), bounded by rho <= rho_0. A
network too deep for its width does not train well, and without a bound the entropy optimum
degenerates into very deep, very thin stacks. With D = sum_i L_i:

- `deepmad`: rho = D / W, W = exp(sum_i L_i ln E_i / D) the depth-weighted
  geometric mean width;
- `merino` (the default, rho_0 0.08): rho = beta * D / w_eff with the effective width
  w_eff = sum_i L_i log2(E_i) / D (log2 of the same mean width, after Levine et al. 2020's
  logarithmic depth-width condition) and beta = 1/16: MeRino's Table 1 prints rho 0.008 for 1
  layer of width 256 (1/16 / 8 = 0.0078) and 0.25 for 24 layers of width 64 (24/16 / 6).

Both bounds are linear once D is fixed: sum_i L_i ln E_i >= D (ln D - ln rho_0), and
sum_i L_i log2 E_i >= beta D^2 / rho_0.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from merino_mobile import accounting
from merino_mobile.card import Card
from merino_mobile.errors import UserError

OBJECTIVES = ("deepmad", "merino", "params")
EFFECTIVENESS = ("deepmad", "merino")
# The defaults are the setting issue 17's experiment supports (benchmarks/objectives_experiment.py,
# 16 architectures trained at equal FLOPs; docs/experiments.md): MeRino's subspace entropy with
# the FFN weighed 4 times the attention, under MeRino's effectiveness at rho_0 0.08. Its design
# tied the OPT-style baseline where the deepmad and params designs lost to it, and merino ranked
# the trained set the right way (deepmad ranked it the wrong way, as in the 24-model experiment).
DEFAULT_OBJECTIVE = "merino"
DEFAULT_EFFECTIVENESS = "merino"
# MeRino's alpha_1 (a, attention) and alpha_2 (b, FFN) per objective when none is given. With
# a = b = 1 merino picks the smallest design of a space (every square matrix lowers it; see
# above); b = 4 is where its FLOPs-budget design trained as well as the baseline. deepmad keeps
# 1 and 1 (no weighting changed which architecture it picked); params takes no weights.
DEFAULT_WEIGHTS: dict[str, tuple[float, float]] = {"deepmad": (1.0, 1.0), "merino": (1.0, 4.0),
                                                   "params": (1.0, 1.0)}
# GPT-2 and OPT-125M sit at deepmad rho ~ 0.016, MobileLLM-style deep-and-thin models near 0.06;
# 0.03 is the bound under which the highest-entropy deepmad design trained best in the 24-model
# experiment (benchmarks/entropy_vs_loss.py). Under merino's rho (beta D / log2 width), 0.08
# allows about 9 layers at width 128 and 12 at 512: the bound of the supported setting above.
DEFAULT_RHO = 0.03
DEFAULT_MERINO_RHO = 0.08
# The bound each effectiveness takes when none is given.
DEFAULT_RHOS: dict[str, float] = {"deepmad": DEFAULT_RHO, "merino": DEFAULT_MERINO_RHO}
MERINO_BETA = Fraction(1, 16)

SUBSPACE_EPS = 1e-3
TABLE_PATH = Path(__file__).resolve().parent / "data" / "subspace_entropy.json"
TABLE_SCHEMA = 1
REBUILD = "python -m merino_mobile.entropy"
# The table's grid: m = min(d_in, d_out), and the ratio max/min. Denser near ratio 1, where the
# smallest singular values leave zero and the entropy changes fastest.
TABLE_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024,
               1536, 2048, 3072, 4096)
TABLE_RATIOS = (1.0, 1.015625, 1.03125, 1.0625, 1.125, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0,
                5.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0)
# The stated error of the table against the true expectation, per matrix: TABLE_ERROR_NATS +
# TABLE_ERROR_PER_SV * m nats. The build samples each grid point until its standard error is a
# third of that, then checks integer shapes off the grid against fresh samples and refuses to
# write a table that misses one by more than this plus three standard errors.
TABLE_ERROR_NATS = 0.15
TABLE_ERROR_PER_SV = 1e-3
MHA_MATRICES = ("q", "k", "v", "o")


@dataclass(frozen=True)
class EntropySettings:
    """What the design maximizes and how effectiveness bounds it.

    `objective` is one of OBJECTIVES, `effectiveness` one of EFFECTIVENESS, `rho` its bound
    rho_0 (None: the variant's default, DEFAULT_RHOS). `a` and `b` weigh the MHA and FFN terms
    of the entropy objectives (MeRino's alpha_1 and alpha_2; None: the objective's default,
    DEFAULT_WEIGHTS), `alpha` each block (missing blocks weigh 1). Weights must be finite and
    not negative; `params` takes none.

    `penalty` (gamma, default 0: none) lowers the objective of an architecture whose rho (of the
    same variant) exceeds `penalty_rho` (rho_p) by gamma times its deficit on the linear row of
    rho <= rho_p (`rho_deficit`): MeRino's penalty on large rho in a form the exact MIP keeps
    exact. It acts only where rho_p is below the hard bound rho_0.
    """

    a: float | None = None
    b: float | None = None
    alpha: tuple[float, ...] = ()
    rho: float | None = None
    objective: str = DEFAULT_OBJECTIVE
    effectiveness: str = DEFAULT_EFFECTIVENESS
    penalty: float = 0.0
    penalty_rho: float | None = None

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise UserError(f"unknown objective {self.objective!r}; choose one of "
                            f"{', '.join(OBJECTIVES)}")
        if self.effectiveness not in EFFECTIVENESS:
            raise UserError(f"unknown effectiveness {self.effectiveness!r}; choose one of "
                            f"{', '.join(EFFECTIVENESS)}")
        default_a, default_b = DEFAULT_WEIGHTS[self.objective]
        if self.a is None:
            object.__setattr__(self, "a", default_a)
        if self.b is None:
            object.__setattr__(self, "b", default_b)
        weights = [("the MHA weight a (alpha_1, --alpha-mha)", self.a),
                   ("the FFN weight b (alpha_2, --alpha-ffn)", self.b)]
        weights += [(f"the weight alpha of block {i}", w) for i, w in enumerate(self.alpha)]
        for name, w in weights:
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) \
                    or w < 0:
                raise UserError(f"{name} must be a finite number at least 0, got {w!r}")
        if self.objective == "params" and ((self.a, self.b) != (1.0, 1.0)
                                           or any(w != 1.0 for w in self.alpha)):
            raise UserError("the params objective counts parameters and takes no weights: drop "
                            "--alpha-mha and --alpha-ffn (they weigh the entropy objectives)")
        p = self.penalty
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) \
                or p < 0:
            raise UserError(f"the rho penalty (--penalty) must be a finite number at least 0, "
                            f"got {p!r}")
        q = self.penalty_rho
        if p > 0 and q is None:
            raise UserError("--penalty needs --penalty-rho: the rho above which an "
                            "architecture's objective is lowered (below --rho, the hard bound)")
        if q is not None and (isinstance(q, bool) or not isinstance(q, (int, float))
                              or not math.isfinite(q) or q <= 0):
            raise UserError(f"--penalty-rho must be a finite positive number, got {q!r}")
        if q is not None and p == 0:
            raise UserError("--penalty-rho without --penalty changes nothing: give --penalty "
                            "GAMMA (how much each unit of deficit lowers the objective)")
        if self.rho is None:
            object.__setattr__(self, "rho", DEFAULT_RHOS[self.effectiveness])

    def alpha_of(self, block_index: int) -> float:
        return self.alpha[block_index] if block_index < len(self.alpha) else 1.0


# -- deepmad -------------------------------------------------------------------------------------

def layer_entropy(width: int, ffn_ratio: float, s: EntropySettings, block_index: int = 0) -> float:
    """DeepMAD entropy contributed by one layer of a block."""
    return s.alpha_of(block_index) * (s.a * math.log(width) + s.b * math.log(ffn_ratio * width))


DEEPMAD = EntropySettings(objective="deepmad", effectiveness="deepmad")


def entropy(card: Card, settings: EntropySettings = DEEPMAD) -> float:
    """DeepMAD's entropy of a card (the `deepmad` objective; weights from `settings`, by default
    deepmad's own a = b = 1)."""
    return sum(b.depth * layer_entropy(b.width, b.ffn_ratio, settings, i)
               for i, b in enumerate(card.blocks))


# -- merino: the subspace entropy table ----------------------------------------------------------

class OutsideTable(UserError):
    """A matrix shape the subspace entropy table does not cover."""


def _mp_limit(ratio: float, wide: bool) -> float:
    """Marchenko-Pastur limit of E[log sigma] per singular value (eps = 0) for a matrix of
    max/min `ratio` with N(0, 1/d_in) entries: tall (d_in = max) or wide (d_in = min)."""
    tall = -0.5 if ratio <= 1.0 else 0.5 * ((1.0 - ratio) * math.log1p(-1.0 / ratio) - 1.0)
    return tall + (0.5 * math.log(ratio) if wide else 0.0)


def _y(ratio: float) -> float:
    """The ratio axis of the interpolation: the limit above has a (r-1) log(r-1) term at 1."""
    return math.sqrt(ratio - 1.0)


class SubspaceTable:
    """Expected subspace entropy E[sum_i log(sigma_i + eps)] per matrix shape.

    `tall[i][j]` / `wide[i][j]` hold it for m = sizes[i] = min(d_in, d_out) and
    ratios[j] = max/min, with d_in the larger (tall) or the smaller (wide) side. Off the grid,
    H/m minus its Marchenko-Pastur limit (`_mp_limit`) is interpolated bilinearly in
    (log m, sqrt(ratio - 1)), and the limit added back: the residual is smooth where H/m is not.
    `error(m)` is the stated error against the true expectation.
    """

    def __init__(self, data: dict[str, Any], source: str) -> None:
        self.source = source
        self.eps = float(data["eps"])
        self.sizes: list[float] = [float(m) for m in data["sizes"]]
        self.ratios: list[float] = [float(r) for r in data["ratios"]]
        self.error_nats = float(data["error"]["nats"])
        self.error_per_sv = float(data["error"]["per_singular_value"])
        self._x = [math.log(m) for m in self.sizes]
        self._yy = [_y(r) for r in self.ratios]
        self._res = {}
        for side in ("tall", "wide"):
            self._res[side] = [[h / m - _mp_limit(r, side == "wide")
                                for h, r in zip(row, self.ratios, strict=True)]
                               for row, m in zip(data[side], self.sizes, strict=True)]
        self._cache: dict[tuple[int, int], float] = {}

    @property
    def max_size(self) -> int:
        return int(self.sizes[-1])

    @property
    def max_ratio(self) -> float:
        return self.ratios[-1]

    def covers(self, d_in: int, d_out: int) -> bool:
        m, big = min(d_in, d_out), max(d_in, d_out)
        return 1 <= m <= self.sizes[-1] and big <= self.ratios[-1] * m

    def error(self, d_in: int, d_out: int) -> float:
        """The stated error (nats) of `expected(d_in, d_out)`."""
        return self.error_nats + self.error_per_sv * min(d_in, d_out)

    def expected(self, d_in: int, d_out: int) -> float:
        """E[H(W)] for a d_in x d_out matrix; OutsideTable where the grid does not reach."""
        key = (d_in, d_out)
        if key in self._cache:
            return self._cache[key]
        if not self.covers(d_in, d_out):
            raise OutsideTable(
                f"the merino objective's table ({self.source}) covers matrices with "
                f"min(d_in, d_out) from 1 to {self.max_size} and max/min up to "
                f"{self.max_ratio:g}; a {d_in} x {d_out} matrix is outside it: use "
                f"--objective deepmad or params for this space")
        m = min(d_in, d_out)
        ratio = max(d_in, d_out) / m
        wide = d_in < d_out
        res = _bilinear(self._x, self._yy, self._res["wide" if wide else "tall"], math.log(m),
                        _y(ratio))
        value = m * (res + _mp_limit(ratio, wide))
        self._cache[key] = value
        return value


def _bilinear(xs: list[float], ys: list[float], grid: list[list[float]], x: float,
              y: float) -> float:
    i = min(max(bisect.bisect_right(xs, x) - 1, 0), len(xs) - 2)
    j = min(max(bisect.bisect_right(ys, y) - 1, 0), len(ys) - 2)
    tx = (x - xs[i]) / (xs[i + 1] - xs[i])
    ty = (y - ys[j]) / (ys[j + 1] - ys[j])
    return ((1 - tx) * (1 - ty) * grid[i][j] + tx * (1 - ty) * grid[i + 1][j]
            + (1 - tx) * ty * grid[i][j + 1] + tx * ty * grid[i + 1][j + 1])


def _corrupt(path: Path, why: str) -> UserError:
    return UserError(f"{path}: the merino objective's subspace entropy table is corrupt ({why}); "
                     f"rebuild it with `{REBUILD}` (a few minutes) or reinstall merino-mobile")


def load_subspace_table(path: str | Path = TABLE_PATH) -> SubspaceTable:
    """Read and check a subspace entropy table; a missing or corrupt file is a UserError that
    names it and the command that rebuilds it."""
    from merino_mobile.workspace import parse_json, read_text

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: the merino objective's subspace entropy table is missing; "
                        f"rebuild it with `{REBUILD}` (a few minutes) or reinstall merino-mobile")
    try:
        data = parse_json(read_text(path, "subspace entropy table"), path)
    except UserError as e:
        raise _corrupt(path, str(e).removeprefix(f"{path}: ")) from None
    if not isinstance(data, dict):
        raise _corrupt(path, "not a JSON object")
    if data.get("schema_version") != TABLE_SCHEMA:
        raise _corrupt(path, f"schema_version is {data.get('schema_version')!r}, not "
                             f"{TABLE_SCHEMA}")

    def numbers(value: Any, what: str, n: int | None = None) -> list[float]:
        if not isinstance(value, list) or (n is not None and len(value) != n) or not value or \
                not all(type(v) in (int, float) and math.isfinite(v) for v in value):
            raise _corrupt(path, f"{what} is not a list of {n or 'some'} finite numbers")
        return value

    sizes = numbers(data.get("sizes"), "sizes")
    ratios = numbers(data.get("ratios"), "ratios")
    if len(sizes) < 2 or len(ratios) < 2 or sizes[0] < 1 or ratios[0] != 1 or any(
            b <= a for s in (sizes, ratios) for a, b in zip(s, s[1:], strict=False)):
        raise _corrupt(path, "sizes and ratios must rise from 1, two values at least")
    for side in ("tall", "wide"):
        rows = data.get(side)
        if not isinstance(rows, list) or len(rows) != len(sizes):
            raise _corrupt(path, f"{side} needs one row per size")
        for i, row in enumerate(rows):
            numbers(row, f"{side}[{i}]", len(ratios))
    eps, error = data.get("eps"), data.get("error")
    if eps != SUBSPACE_EPS:
        raise _corrupt(path, f"eps is {eps!r}, this version defines the objective with "
                             f"{SUBSPACE_EPS}")
    if not isinstance(error, dict) or any(
            type(error.get(k)) not in (int, float) or not 0 <= error[k] < math.inf
            for k in ("nats", "per_singular_value")):
        raise _corrupt(path, "error must give nats and per_singular_value")
    return SubspaceTable(data, str(path))


@functools.lru_cache(maxsize=4)
def _cached_table(path: Path) -> SubspaceTable:
    return load_subspace_table(path)


def subspace_table(path: str | Path | None = None) -> SubspaceTable:
    """The subspace entropy table (read once per path; default TABLE_PATH)."""
    return _cached_table(Path(path or TABLE_PATH))


def merino_layer(width: int, ffn_hidden: int, s: EntropySettings, block_index: int = 0,
                 shape: accounting.LayerShape | None = None) -> float:
    """MeRino entropy of one layer of a block: q, k, v, o (E x E, or k and v E x K under
    grouped-query attention) weighed by a, the FFN's matrices (E x F and F x E, and a gated FFN's
    E x F gate) by b. `shape` (a layer's `accounting.LayerShape`) gives its matrices; without
    it, a version 1 layer of `width` and `ffn_hidden`."""
    t = subspace_table()
    shape = shape or accounting.LayerShape(width, ffn_hidden)
    mha = ffn = 0.0
    for name, rows, cols in shape.matrices():
        h = t.expected(cols, rows)  # rows are the output width
        if name in MHA_MATRICES:
            mha += h
        else:
            ffn += h
    return s.alpha_of(block_index) * (s.a * mha + s.b * ffn)


def merino_entropy(card: Card, settings: EntropySettings = EntropySettings()) -> float:
    """MeRino's entropy of a card: every matrix of every executed layer, from the table.

    A layer's matrices are the card's own (`accounting.matrices`, as the card's layer stores
    them: narrower k and v under grouped-query attention, a gate beside up when gated)."""
    t = subspace_table()
    by_block: dict[int, tuple[float, float]] = {}
    for mat in accounting.matrices(card):
        parts = mat.name.split(".")
        if len(parts) != 3 or not parts[0].startswith("block") or parts[1] != "layer0":
            continue
        i = int(parts[0].removeprefix("block"))
        mha, ffn = by_block.get(i, (0.0, 0.0))
        h = t.expected(mat.cols, mat.rows)  # rows are the output width
        by_block[i] = (mha + h, ffn) if parts[2] in MHA_MATRICES else (mha, ffn + h)
    return sum(b.depth * settings.alpha_of(i) * (settings.a * by_block[i][0]
                                                 + settings.b * by_block[i][1])
               for i, b in enumerate(card.blocks))


# -- every objective -----------------------------------------------------------------------------

def block_value(width: int, ffn_ratio: float, depth: int, shared: bool, s: EntropySettings,
                block_index: int = 0, shape: accounting.LayerShape | None = None) -> float:
    """One block's share of the objective for a block of a search space: what the solvers add
    up. `shape` is its layer as `Space.to_card` builds it (`Space.layer_shape`: the gate, the
    K/V width, biases and norm); without it, a version 1 layer with biases."""
    hidden = round(width * ffn_ratio)
    shape = shape or accounting.LayerShape(width, hidden)
    if s.objective == "params":
        copies = 1 if shared and depth > 1 else depth
        return float(copies * shape.params)
    if s.objective == "merino":
        return depth * merino_layer(width, hidden, s, block_index, shape)
    return depth * layer_entropy(width, ffn_ratio, s, block_index)


def objective_value(card: Card, settings: EntropySettings = EntropySettings()) -> float:
    """The value of `settings.objective` for a card, less its rho penalty (if any)."""
    if settings.objective == "params":
        value = float(accounting.decoder_params(card))
    elif settings.objective == "merino":
        value = merino_entropy(card, settings)
    else:
        value = entropy(card, settings)
    if settings.penalty > 0:
        assert settings.penalty_rho is not None  # EntropySettings requires it
        value -= settings.penalty * rho_deficit(card, settings.effectiveness,
                                                settings.penalty_rho)
    return value


def objectives(card: Card, settings: EntropySettings = EntropySettings()
               ) -> dict[str, float | None]:
    """Every objective's value for a card, without rho penalty (the design's `entropy` is the
    penalized value it maximized): `settings.objective` at the weights of `settings`, every
    other at its own defaults (DEFAULT_WEIGHTS; deepmad's b = 1 and merino's b = 4 measure
    different things, and one's weights say nothing of the other's). The merino value is None
    where its table cannot score the card: matrices outside its shapes, or a table file that is
    missing or corrupt (`subspace_table()` raises that error, naming the file)."""
    out: dict[str, float | None] = {}
    for name in OBJECTIVES:
        s = (dataclasses.replace(settings, penalty=0.0, penalty_rho=None)
             if name == settings.objective else
             EntropySettings(rho=settings.rho, objective=name,
                             effectiveness=settings.effectiveness))
        try:
            out[name] = objective_value(card, s)
        except UserError:  # only merino reads a file, and only its table refuses shapes
            out[name] = None
    return out


# -- effectiveness -------------------------------------------------------------------------------

def effectiveness(card: Card, variant: str = DEFAULT_EFFECTIVENESS) -> float:
    """rho of a card: `deepmad` D / W with W the depth-weighted geometric mean width, or
    `merino` beta * D / (depth-weighted mean of log2 widths); infinite for a merino rho of
    width-1 layers only."""
    depth = card.depth
    if variant == "merino":
        mean_log2 = sum(b.depth * math.log2(b.width) for b in card.blocks) / depth
        return math.inf if mean_log2 <= 0 else float(MERINO_BETA) * depth / mean_log2
    if variant != "deepmad":
        raise UserError(f"unknown effectiveness {variant!r}; choose one of "
                        f"{', '.join(EFFECTIVENESS)}")
    mean_log_width = sum(b.depth * math.log(b.width) for b in card.blocks) / depth
    return depth / math.exp(mean_log_width)


def rho_linear(variant: str, rho: float) -> tuple[Callable[[int], float],
                                                 Callable[[int], float]]:
    """The bound rho <= rho_0 as a linear row for a fixed total depth D:
    sum_i L_i coef(E_i) >= need(D) (`deepmad`: coef ln, need D (ln D - ln rho_0); `merino`:
    coef log2, need beta D^2 / rho_0)."""
    if variant == "merino":
        beta = float(MERINO_BETA)
        return math.log2, lambda d: beta * d * d / rho
    log_rho = math.log(rho)
    return math.log, lambda d: d * (math.log(d) - log_rho)


def rho_deficit(card: Card, variant: str, rho: float) -> float:
    """How far the card falls short of the linear row of rho <= `rho` (`rho_linear`), 0 when
    within: need(D) - sum_i L_i coef(E_i) over executed layers. For `deepmad` that is
    D ln(rho_card / rho); for `merino`, beta D^2 (1 / rho - 1 / rho_card)."""
    coef, need = rho_linear(variant, rho)
    depth = card.depth
    if depth == 0:
        return 0.0
    return max(0.0, need(depth) - sum(b.depth * coef(b.width) for b in card.blocks))


def effectiveness_all(card: Card) -> dict[str, float]:
    """rho of a card under every effectiveness variant."""
    return {v: effectiveness(card, v) for v in EFFECTIVENESS}


MAX_LOG2_BITS = 1 << 13


def log2_at_least(n: int, t: Fraction) -> bool:
    """Whether log2(n) >= t, decided exactly for a whole number n >= 1 and a fraction t.

    A power of two has a whole logarithm, compared as such. Any other n has an irrational one,
    never equal to t: its bits are computed by repeated squaring of n / 2^e in fixed point with
    outward rounding (an interval that always holds the true value) until t falls outside the
    interval they leave; a precision that cannot tell the next bit doubles."""
    if n < 1:
        raise ValueError(f"log2 of {n}")
    e = n.bit_length() - 1
    if n == 1 << e:
        return e >= t
    if t <= e:
        return True
    if t >= e + 1:
        return False
    r = t - e  # in (0, 1): is log2(y) >= r for y = n / 2^e in (1, 2)?
    prec = 64
    while prec <= MAX_LOG2_BITS:
        shift = prec - e
        if shift >= 0:
            lo = hi = n << shift
        else:
            lo = n >> -shift
            hi = lo + (0 if lo << -shift == n else 1)
        two = 2 << prec
        low, width = Fraction(0), Fraction(1)  # log2(y) in [low, low + width)
        for _ in range(prec // 2):
            lo = (lo * lo) >> prec
            hi = -((-hi * hi) >> prec)
            width /= 2
            if lo >= two:
                low += width
                lo >>= 1
                hi = -((-hi) >> 1)
            elif hi >= two:
                break  # this precision cannot tell the next bit
            if low >= r:
                return True
            if low + width <= r:
                return False
        prec *= 2
    raise ArithmeticError(f"log2({n}) agrees with {t} to {MAX_LOG2_BITS // 2} bits")


# -- building the table --------------------------------------------------------------------------

def _singular_values(m: int, big: float, rng: Any) -> Any:
    """Singular values of an m x big standard Gaussian matrix (m <= big), sampled exactly through
    its bidiagonal form (Golub-Kahan; Dumitriu and Edelman 2002): diagonal chi_{big}, ...,
    chi_{big-m+1}, superdiagonal chi_{m-1}, ..., chi_1. O(m^2) instead of the O(m^2 big) of an
    SVD; a fractional `big` continues the distribution smoothly between whole shapes."""
    import numpy as np
    from scipy.linalg import eigvalsh_tridiagonal

    d2 = rng.chisquare(big - np.arange(m))
    if m == 1:
        return np.sqrt(d2)
    e2 = rng.chisquare(np.arange(m - 1, 0, -1, dtype=float))
    diag = d2.copy()
    diag[1:] += e2
    ev = eigvalsh_tridiagonal(diag, np.sqrt(d2[:-1] * e2))  # of B^T B
    return np.sqrt(np.clip(ev, 0.0, None))


def sample_entropy(m: int, big: float, rng: Any, target: float, least: int = 16,
                   most: int = 4000) -> dict[str, float]:
    """Monte Carlo mean of H(W) for W = m x big (tall: d_in = big) and its transpose (wide:
    d_in = m), sampled until the standard error is at most `target` (or `most` samples)."""
    import numpy as np

    tall, wide = [], []
    while True:
        s = _singular_values(m, big, rng)
        tall.append(float(np.sum(np.log(s / math.sqrt(big) + SUBSPACE_EPS))))
        wide.append(float(np.sum(np.log(s / math.sqrt(m) + SUBSPACE_EPS))))
        k = len(tall)
        if k >= least and k % 8 == 0:
            se = max(float(np.std(tall, ddof=1)), float(np.std(wide, ddof=1))) / math.sqrt(k)
            if se <= target or k >= most:
                break
    return {"tall": float(np.mean(tall)), "wide": float(np.mean(wide)), "se": se, "samples": k}


def stated_error(m: int) -> float:
    return TABLE_ERROR_NATS + TABLE_ERROR_PER_SV * m


def build_table(path: Path = TABLE_PATH, seed: int = 0, progress: Any = print) -> Path:
    """Sample the grid, check the interpolation off it, and write the table (atomically).

    Raises RuntimeError, and writes nothing, when an off-grid check misses the stated error."""
    import time

    import numpy as np

    from merino_mobile.files import utc_now, write_json
    from merino_mobile.toolchain import package_versions

    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    rows: dict[str, list[list[float]]] = {"tall": [], "wide": [], "standard_error": [],
                                          "samples": []}
    for m in TABLE_SIZES:
        cells = [sample_entropy(m, m * r, rng, stated_error(m) / 3) for r in TABLE_RATIOS]
        for key, name in (("tall", "tall"), ("wide", "wide"), ("standard_error", "se"),
                          ("samples", "samples")):
            rows[key].append([c[name] for c in cells])
        progress(f"m = {m}: {sum(c['samples'] for c in cells)} samples "
                 f"({time.perf_counter() - start:.0f} s)")
    data: dict[str, Any] = {
        "schema_version": TABLE_SCHEMA,
        "definition": "E[sum_i log(sigma_i + eps)] over the singular values of a d_in x d_out "
                      "matrix of N(0, 1/d_in) entries; tall: d_in >= d_out, wide: d_in < d_out",
        "eps": SUBSPACE_EPS, "sizes": list(TABLE_SIZES), "ratios": list(TABLE_RATIOS),
        "tall": rows["tall"], "wide": rows["wide"],
        "error": {"nats": TABLE_ERROR_NATS, "per_singular_value": TABLE_ERROR_PER_SV},
        "interpolation": "bilinear in (log m, sqrt(ratio - 1)) of H/m minus its "
                         "Marchenko-Pastur limit",
        "standard_error": rows["standard_error"], "samples": rows["samples"],
        "seed": seed, "built": utc_now(), "versions": package_versions(("numpy", "scipy")),
    }
    table = SubspaceTable(data, str(path))
    checks, worst = [], 0.0
    for m in (5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560):
        for r in (1.0, 1.01, 1.03, 1.1, 1.375, 2.25, 4.5, 10.0, 40.0):
            big = round(m * r)
            if any(c["d"] == [m, big] for c in checks):
                continue
            s = sample_entropy(m, big, rng, stated_error(m) / 3)
            for side, (d_in, d_out) in (("tall", (big, m)), ("wide", (m, big))):
                miss = abs(table.expected(d_in, d_out) - s[side])
                limit = table.error(d_in, d_out) + 3 * s["se"]
                worst = max(worst, miss / limit)
                if miss > limit:
                    raise RuntimeError(f"the table misses {d_in} x {d_out} by {miss:.3f} nats, "
                                       f"over its stated {table.error(d_in, d_out):.3f} plus "
                                       f"3 standard errors ({s['se']:.3f})")
            checks.append({"d": [m, big], "tall": s["tall"], "wide": s["wide"], "se": s["se"]})
        progress(f"checked m = {m} off the grid ({time.perf_counter() - start:.0f} s)")
    data["validation"] = {"shapes": checks, "worst_share_of_limit": worst}
    data["seconds"] = round(time.perf_counter() - start, 1)
    return write_json(path, data)


def main(argv: list[str] | None = None) -> int:
    """`python -m merino_mobile.entropy [--out PATH] [--seed N]`: rebuild the table."""
    import argparse

    ap = argparse.ArgumentParser(description="Rebuild the merino objective's subspace entropy "
                                             "table (a few minutes of CPU).")
    ap.add_argument("--out", type=Path, default=TABLE_PATH)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    path = build_table(args.out, args.seed)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
