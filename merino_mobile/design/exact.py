"""Exact solver: the design problem as one mixed-integer program, solved to optimality by HiGHS.

Variables (in any integer solution):
- u[i, k]    0/1: block i is present with type k = (width, FFN ratio, shared, K/V heads); the
             K/V heads are a space's per-block choice (`Space.kv_heads`), None without one;
- d[i, k]    integer: its depth (0 when the block is absent). The objective and every resource
             are affine in depth for a fixed type, c_u u + c_d d (a shared block's weights are
             paid, and counted by the `params` objective, once);
- t[i, a, b] 0/1: blocks i and i+1 are both present with widths a and b. A path through a layered
             graph of widths, so the projections between blocks cost exactly what they should;
- z[a, b]    0/1: the last block has width a and the first width b (only when the tied embedding has
             the first block's width, which then needs a projection back from the last);
- y[D]       0/1: the total depth is D.

The effectiveness bound rho = D / exp(sum_i L_i log E_i / D) <= rho_0 is not linear, but with the
total depth fixed it is: sum_i L_i log E_i >= D (log D - log rho_0), so the one-hot y[D] selects
the right-hand side. MeRino's rho = beta D / (sum_i L_i log2 E_i / D) <= rho_0 is likewise
sum_i L_i log2 E_i >= beta D^2 / rho_0 (`problem.rho_row`). HiGHS closes the gap to 1e-9
relative: the answer is the proven optimum.

The rho penalty (`EntropySettings.penalty` gamma, from `penalty_rho` rho_p) is one continuous
variable p >= 0 with p >= need_p(D) - sum_i L_i coef(E_i), the same row for rho_p, and -gamma p
in the objective: maximizing pushes p down to exactly the deficit max(0, need_p(D) - ...), which
is what `objective_value` subtracts for a card (`entropy.rho_deficit`).

Exactness. HiGHS accepts a solution that breaks a row by its feasibility tolerance (about 1e-6,
and integer variables may be off by as much), so a design a few parameters over its budget could
come back as optimal. Two things keep that from reaching a user:
- the rows are relaxations of the exact constraints, never tighter: parameter, FLOP and memory
  rows keep their whole-unit (int4 memory: 1/8 byte) coefficients unscaled, with the budget
  rounded down plus a margin (`COUNT_MARGIN`) short of the next unit, so HiGHS's tolerances are
  a fraction of one unit; latency and rho rows get a relative hair of slack for float rounding;
- every decoded design is checked exactly (`Problem.violations`). One that breaks a constraint is
  cut off by a no-good cut (exactly that design, nothing else) and the program is solved again,
  at most `MAX_RESOLVES` times, after which the solver raises `Unverified` instead of answering.
Cutting off designs that break an exact constraint removes no feasible design, so the first
design that passes is optimal for the exact problem (within the MIP gap).

Sharing: a shared block has the same entropy, FLOPs, latency and KV cache as an unshared one and
fewer weights. With a parameter or memory budget the solver therefore considers multi-layer blocks
as shared only (never worse); without one it considers them unshared only (the same optimum, with
the model's full capacity). The `params` objective counts a shared block's weights once, so there
sharing is a trade (fewer parameters scored, fewer paid): with a parameter or memory budget it
considers both. A space with `sharing = "always"` gets shared types only. The brute-force oracle
enumerates every choice and finds the same optimum.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

from merino_mobile.design.problem import (
    Budgets,
    Design,
    Infeasible,
    Pieces,
    Problem,
    SolverInfo,
    Unverified,
    format_budget,
    rho_row,
)
from merino_mobile.space import Choice

MIP_GAP = 1e-9
MAX_RESOLVES = 20  # no-good cuts tried before giving up on an exactly feasible design
# Rows of whole-unit costs (parameters, FLOPs, memory but int4's) admit floor(budget) +
# COUNT_MARGIN: every cost within the budget, and the next unit only through integrality noise of
# nearly a whole unit. int4 weights cost multiples of 1/8 byte that the accounting rounds to whole
# bytes, so up to +0.5 may still be within: those rows admit floor(budget) + 0.5 + COUNT_MARGIN.
COUNT_MARGIN = 1 / 16
FLOAT_SLACK = 1e-9  # relative slack of the latency and rho rows (float sums in another order)
Expr = dict[int, float]
Pick = tuple[int, int, int]  # (block, type, depth) of one present block


class _Program:
    """Variables, constraint rows and objective of the MIP for one problem."""

    def __init__(self, problem: Problem):
        self.problem = problem
        s = problem.space
        self.nb = s.max_blocks
        self.widths = list(s.widths)
        self.dmin, self.dmax = max(1, s.min_depth), s.max_depth
        self.types = [(w, r, shared, kv) for w in self.widths for r in s.ffn_ratios
                      for shared in _sharing(problem) for kv in s.kv_choices]
        self.lo: list[float] = []
        self.hi: list[float] = []
        self.integral: list[float] = []
        self.u = [[self._var(1) for _ in self.types] for _ in range(self.nb)]
        self.d = [[self._var(self.dmax) for _ in self.types] for _ in range(self.nb)]
        self.t = [{(a, b): self._var(1) for a in self.widths for b in self.widths
                   if s.allows_step(a, b)} for _ in range(self.nb - 1)]
        self.z = {(a, b): self._var(1) for a in self.widths for b in self.widths
                  if a != b and s.allows_step(b, a)} if s.embed_width is None else {}
        self.y = {D: self._var(1) for D in range(1, self.nb * self.dmax + 1)}
        # the rho penalty's deficit, a continuous variable (see the module docstring)
        self.p = self._var(np.inf, integral=False) if problem.settings.penalty > 0 else None
        self.rows: list[tuple[Expr, float, float]] = []
        self._constraints()

    def _var(self, upper: float, integral: bool = True) -> int:
        self.lo.append(0.0)
        self.hi.append(upper)
        self.integral.append(1.0 if integral else 0.0)
        return len(self.hi) - 1

    @property
    def n(self) -> int:
        return len(self.hi)

    # -- expressions -----------------------------------------------------------------------------

    def width_of_block(self, i: int, w: int) -> Expr:
        return {self.u[i][k]: 1.0 for k, ty in enumerate(self.types) if ty[0] == w}

    def last_width(self, w: int) -> Expr:
        """1 when the last present block has width w: present at i, no transition out of it."""
        expr: Expr = defaultdict(float)
        for i in range(self.nb):
            for v in self.width_of_block(i, w):
                expr[v] += 1.0
            if i < self.nb - 1:
                for (a, _), v in self.t[i].items():
                    if a == w:
                        expr[v] -= 1.0
        return expr

    def linear(self, pieces: Pieces) -> tuple[Expr, float]:
        """One resource as (coefficients, constant)."""
        expr: Expr = defaultdict(float)
        for i in range(self.nb):
            for k, (w, r, shared, kv) in enumerate(self.types):
                one = pieces.layer(Choice(w, r, 1, False, kv))
                two = pieces.layer(Choice(w, r, 2, shared, kv))
                per_layer = two - one
                expr[self.u[i][k]] += one - per_layer
                expr[self.d[i][k]] += per_layer
        for i in range(self.nb - 1):
            for (a, b), v in self.t[i].items():
                expr[v] += pieces.proj(a, b)
        for w in self.widths:
            for v in self.width_of_block(0, w):
                expr[v] += pieces.first(w)
            for v, k in self.last_width(w).items():
                expr[v] += k * pieces.last(w)
        if pieces.wrap is not None:
            for (a, b), v in self.z.items():
                expr[v] += pieces.wrap(a, b)
        return expr, pieces.const

    def objective(self) -> Expr:
        """The problem's objective (to maximize) as coefficients of u and d."""
        expr: Expr = defaultdict(float)
        for i in range(self.nb):
            for k, (w, r, shared, kv) in enumerate(self.types):
                one = self.problem.block_score(Choice(w, r, 1, False, kv), i)
                per_layer = self.problem.block_score(Choice(w, r, 2, shared, kv), i) - one
                expr[self.u[i][k]] += one - per_layer
                expr[self.d[i][k]] += per_layer
        if self.p is not None:
            expr[self.p] -= self.problem.settings.penalty
        return expr

    # -- constraints -----------------------------------------------------------------------------

    def _constraints(self) -> None:
        s, rows = self.problem.space, self.rows
        for i in range(self.nb):
            rows.append(({v: 1.0 for v in self.u[i]}, 1.0 if i < s.min_blocks else 0.0, 1.0))
            if i < self.nb - 1:  # empty blocks come last
                prefix = {v: 1.0 for v in self.u[i]} | {v: -1.0 for v in self.u[i + 1]}
                rows.append((prefix, 0.0, np.inf))
            for k in range(len(self.types)):  # dmin*u <= d <= dmax*u
                rows.append(({self.d[i][k]: 1.0, self.u[i][k]: -self.dmin}, 0.0, np.inf))
                rows.append(({self.d[i][k]: 1.0, self.u[i][k]: -self.dmax}, -np.inf, 0.0))
        for i in range(self.nb - 1):  # a transition leaves block i and enters block i+1
            for a in self.widths:
                out = {v: 1.0 for (w, _), v in self.t[i].items() if w == a}
                rows.append((out | {v: -1.0 for v in self.width_of_block(i, a)}, -np.inf, 0.0))
                into = {v: 1.0 for (_, w), v in self.t[i].items() if w == a}
                rows.append((into | {v: -1.0 for v in self.width_of_block(i + 1, a)}, 0.0, 0.0))
        for (a, b), v in self.z.items():  # z[a, b] >= last(a) + first(b) - 1
            expr: Expr = defaultdict(float, {v: 1.0})
            for q, k in self.last_width(a).items():
                expr[q] -= k
            for q in self.width_of_block(0, b):
                expr[q] -= 1.0
            rows.append((expr, -1.0, np.inf))
        rows.append(({v: 1.0 for v in self.y.values()}, 1.0, 1.0))
        depth = {v: 1.0 for row in self.d for v in row} | {v: -float(D) for D, v in self.y.items()}
        rows.append((depth, 0.0, 0.0))
        settings = self.problem.settings
        coef, need = rho_row(settings.effectiveness, settings.rho)
        logs = {self.d[i][k]: coef(w) for i in range(self.nb)
                for k, (w, *_) in enumerate(self.types)}
        logs |= {v: -need(D) for D, v in self.y.items()}
        # slack for rounding in the logarithms: a design exactly on the bound stays in
        slack = FLOAT_SLACK * self.nb * self.dmax * max(abs(coef(w)) for w in self.widths)
        rows.append((logs, -slack, np.inf))
        if self.p is not None:  # p >= need_p(D) - sum_i L_i coef(E_i), p >= 0
            coef, need = rho_row(settings.effectiveness, settings.penalty_rho)
            short = {self.d[i][k]: coef(w) for i in range(self.nb)
                     for k, (w, *_) in enumerate(self.types)}
            short |= {v: -need(D) for D, v in self.y.items()}
            rows.append((short | {self.p: 1.0}, 0.0, np.inf))

    def budget_rows(self, skip: str | None = None) -> list[tuple[Expr, float, float]]:
        """One row per active budget, each a relaxation of the exact constraint (see the module
        docstring): no design that meets the budget exactly is cut off."""
        out = []
        for name, bound in self.problem.budgets.active().items():
            if name == skip:
                continue
            expr, const = self.linear(self.problem.pieces(name))
            if name == "latency_ms":
                rhs = bound + abs(bound) * FLOAT_SLACK - const
            else:  # whole (or 1/8) units, unscaled: HiGHS's tolerances stay a fraction of a unit
                whole = all(float(c).is_integer() for c in (const, *expr.values()))
                rhs = math.floor(bound) + (0 if whole else 0.5) + COUNT_MARGIN - const
            out.append((dict(expr), -np.inf, rhs))
        return out

    def exclude(self, picks: list[Pick]) -> None:
        """A no-good cut: forbid exactly the design of `picks`, and nothing else.

        The design is: block i present with type k_i at depth L_i for i < n, block n absent.
        Another design differs in a type or presence (some u[i, k_i] = 0, or block n present),
        or in a depth, which binaries a_i (d <= L_i - 1) and b_i (d >= L_i + 1) witness.
        """
        n = len(picks)
        after = picks[-1][0] + 1 if picks else 0  # the first absent block
        cover: Expr = defaultdict(float)
        for i, k, depth in picks:
            d = self.d[i][k]
            a, b = self._var(1), self._var(1)
            # a = 1 forces d <= depth - 1; b = 1 forces d >= depth + 1
            self.rows.append(({d: 1.0, a: float(self.dmax)}, -np.inf, depth - 1.0 + self.dmax))
            self.rows.append(({d: 1.0, b: -(depth + 1.0)}, 0.0, np.inf))
            cover[self.u[i][k]] -= 1.0
            cover[a] += 1.0
            cover[b] += 1.0
        if after < self.nb:
            for v in self.u[after]:
                cover[v] += 1.0
        self.rows.append((cover, 1.0 - n, np.inf))

    def solve(self, objective: Expr, extra: list[tuple[Expr, float, float]],
              time_limit: float | None):
        rows = self.rows + extra
        r, c, vals = [], [], []
        for ri, (expr, _, _) in enumerate(rows):
            for v, k in expr.items():
                if k:
                    r.append(ri)
                    c.append(v)
                    vals.append(k)
        a = coo_matrix((vals, (r, c)), shape=(len(rows), self.n)).tocsr()
        cost = np.zeros(self.n)
        for v, k in objective.items():
            cost[v] += k
        options = {"mip_rel_gap": MIP_GAP, "presolve": False}  # presolve costs more than it saves
        if time_limit:
            options["time_limit"] = time_limit
        with _stdout_to_stderr():
            return milp(cost, integrality=np.array(self.integral), bounds=Bounds(self.lo, self.hi),
                        constraints=LinearConstraint(a, [x[1] for x in rows],
                                                     [x[2] for x in rows]),
                        options=options)

    def picks(self, xs: np.ndarray) -> list[Pick]:
        out = []
        for i in range(self.nb):
            for k in range(len(self.types)):
                if xs[self.u[i][k]] > 0.5:
                    out.append((i, k, round(xs[self.d[i][k]])))
        return out

    def decode(self, picks: list[Pick]) -> tuple[Choice, ...]:
        arch = []
        for _, k, depth in picks:
            w, r, shared, kv = self.types[k]
            arch.append(Choice(w, r, depth, shared and depth > 1, kv))
        return tuple(arch)


def _sharing(problem: Problem) -> tuple[bool, ...]:
    """Which sharing flags the program's block types take (see the module docstring)."""
    s = problem.space
    if s.share_always:
        return (True,)
    if not s.sharing:
        return (False,)
    if not set(problem.budgets.active()) & {"params", "memory"}:
        return (False,)  # sharing saves nothing budgeted, and never scores more
    return (True, False) if problem.objective_sees_sharing else (True,)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """HiGHS prints an occasional debug line with C's printf, which would corrupt `--json` on
    stdout: while it runs, file descriptor 1 points at stderr."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(2, 1)
    except (OSError, ValueError):  # no real stdout/stderr (embedded): nothing to protect
        yield
        return
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _optimize(prog: _Program, problem: Problem, objective: Expr,
              extra: list[tuple[Expr, float, float]], time_limit: float | None):
    """Solve, decode and check exactly; cut off each design that breaks a constraint (and its
    reorderings that break it too) and solve again. Returns (HiGHS result, design, metrics,
    what each cut-off design broke): the design is None when HiGHS found none (infeasible, or
    out of time). Raises Unverified after MAX_RESOLVES solves that all broke a constraint."""
    start = time.perf_counter()
    rejected: list[str] = []
    for _ in range(MAX_RESOLVES + 1):
        left = None
        if time_limit:
            left = time_limit - (time.perf_counter() - start)
            if left <= 0:
                last = f", the last: {rejected[-1]}" if rejected else ""
                raise Unverified(f"the exact solver ran out of its {time_limit:g}s time limit "
                                 f"before a design passed the exact check ({len(rejected)} cut "
                                 f"off{last})")
        res = prog.solve(objective, extra, left)
        if res.x is None:
            return res, None, None, rejected
        picks = prog.picks(res.x)
        arch = prog.decode(picks)
        m = problem.evaluate(arch)
        bad = problem.violations(arch, m)
        if not bad:
            return res, arch, m, rejected
        rejected.append("; ".join(bad.values()))
        prog.exclude(picks)
        # blocks of one width reordered cost the same, so they break the same budget: cut off
        # at once each one that the exact check refuses too, rather than one per solve
        for other in _reorderings(prog, picks):
            if problem.violations(prog.decode(other)):
                prog.exclude(other)
    raise Unverified(
        f"the exact solver found no design that meets the constraints exactly: HiGHS's answers "
        f"kept breaking them within its tolerance ({len(rejected)} solves, the last: "
        f"{rejected[-1]}); loosen that budget by a few units, or try --solver ea")


def _reorderings(prog: _Program, picks: list[Pick], limit: int = 200) -> Iterator[list[Pick]]:
    """The design with its blocks reordered within each run of one width (not itself; at most
    `limit`). Runs longer than 6 blocks keep their order."""
    runs: list[list[tuple[int, int]]] = []
    for _, k, depth in picks:
        if runs and prog.types[runs[-1][0][0]][0] == prog.types[k][0]:
            runs[-1].append((k, depth))
        else:
            runs.append([(k, depth)])
    options = [sorted(set(itertools.permutations(r))) if len(r) <= 6 else [tuple(r)]
               for r in runs]
    original = [tuple(r) for r in runs]
    count = 0
    for combo in itertools.product(*options):
        if list(combo) == original:
            continue
        if count == limit:
            return
        count += 1
        blocks = [b for run in combo for b in run]
        yield [(i, k, depth) for i, (k, depth) in enumerate(blocks)]


def solve_exact(problem: Problem, time_limit: float | None = 120.0) -> Design:
    """Maximize the problem's objective; proven optimal unless the time limit stops HiGHS (then
    optimal=False and the remaining gap is reported). The design passed the exact check of every
    constraint. Raises Infeasible naming the binding budget."""
    start = time.perf_counter()
    prog = _Program(problem)
    objective = {v: -k for v, k in prog.objective().items()}
    res, arch, m, rejected = _optimize(prog, problem, objective, prog.budget_rows(), time_limit)
    seconds = time.perf_counter() - start
    if arch is None:
        if res.status == 1:  # time limit without any solution
            raise Infeasible(f"HiGHS found no design within the {time_limit}s time limit", {})
        raise explain_infeasible(problem)
    gap = float(getattr(res, "mip_gap", 0.0) or 0.0)
    info = SolverInfo(name="exact", seconds=seconds, optimal=res.status == 0, gap=gap,
                      detail={"variables": prog.n, "constraints": len(prog.rows),
                              "status": res.message, "cut_off": rejected})
    return problem.certify(arch, info, m)


def minimum(problem: Problem, resource: str, time_limit: float | None = 60.0) -> float | None:
    """Smallest value of one resource the space allows under the rho bound alone (None when not
    even the rho bound can be met): the exact cost of a design that passes the exact check."""
    prog = _Program(problem)
    expr, _ = prog.linear(problem.pieces(resource))
    alone = replace(problem, budgets=Budgets())
    _, arch, m, _ = _optimize(prog, alone, expr, [], time_limit)
    return None if arch is None else m.resource(resource)


def explain_infeasible(problem: Problem) -> Infeasible:
    """Which budget cannot be met, and the smallest value of it the space allows."""
    if minimum(problem, "params") is None:
        return Infeasible(
            f"infeasible: no architecture in the space satisfies rho <= {problem.settings.rho:g}; "
            "raise --rho or allow wider blocks in the search space", {})
    budgets = problem.budgets.active()
    mins = {name: minimum(problem, name) for name in budgets}
    binding = [name for name, low in mins.items() if low > budgets[name]]
    if binding:
        parts = [f"{name} budget {format_budget(name, budgets[name])} is below the smallest "
                 f"achievable {format_budget(name, mins[name])}" for name in binding]
        return Infeasible("infeasible: " + "; ".join(parts), mins)
    parts = [f"{name} >= {format_budget(name, v)}" for name, v in mins.items()]
    return Infeasible("infeasible: each budget can be met alone but not all together (smallest "
                      "achievable: " + ", ".join(parts) + "); loosen one of them", mins)
