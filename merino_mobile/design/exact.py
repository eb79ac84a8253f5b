"""Exact solver: the design problem as one mixed-integer program, solved to optimality by HiGHS.

Variables (in any integer solution):
- u[i, k]    0/1: block i is present with type k = (width, FFN ratio, shared);
- d[i, k]    integer: its depth (0 when the block is absent). Entropy and every resource are linear
             in depth for a fixed type (a shared block's weights are paid once);
- t[i, a, b] 0/1: blocks i and i+1 are both present with widths a and b. A path through a layered
             graph of widths, so the projections between blocks cost exactly what they should;
- z[a, b]    0/1: the last block has width a and the first width b (only when the tied embedding has
             the first block's width, which then needs a projection back from the last);
- y[D]       0/1: the total depth is D.

The effectiveness bound rho = D / exp(sum_i L_i log E_i / D) <= rho_0 is not linear, but with the
total depth fixed it is: sum_i L_i log E_i >= D (log D - log rho_0), so the one-hot y[D] selects
the right-hand side. HiGHS closes the gap to 1e-9 relative: the answer is the proven optimum.

Sharing: a shared block has the same entropy, FLOPs, latency and KV cache as an unshared one and
fewer weights. With a parameter or memory budget the solver therefore considers multi-layer blocks
as shared only (never worse); without one it considers them unshared only (the same optimum, with
the model's full capacity). The brute-force oracle enumerates both and finds the same entropy.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

from merino_mobile.design.problem import Design, Infeasible, Pieces, Problem, SolverInfo
from merino_mobile.space import Choice

MIP_GAP = 1e-9
Expr = dict[int, float]


class _Program:
    """Variables, constraint rows and objective of the MIP for one problem."""

    def __init__(self, problem: Problem):
        self.problem = problem
        s = problem.space
        self.nb = s.max_blocks
        self.widths = list(s.widths)
        self.dmin, self.dmax = max(1, s.min_depth), s.max_depth
        budgets = set(problem.budgets.active())
        share = s.sharing and bool(budgets & {"params", "memory"})
        self.types = [(w, r, share) for w in self.widths for r in s.ffn_ratios]
        self.lo: list[float] = []
        self.hi: list[float] = []
        self.u = [[self._var(1) for _ in self.types] for _ in range(self.nb)]
        self.d = [[self._var(self.dmax) for _ in self.types] for _ in range(self.nb)]
        self.t = [{(a, b): self._var(1) for a in self.widths for b in self.widths
                   if s.allows_step(a, b)} for _ in range(self.nb - 1)]
        self.z = {(a, b): self._var(1) for a in self.widths for b in self.widths
                  if a != b and s.allows_step(b, a)} if s.embed_width is None else {}
        self.y = {D: self._var(1) for D in range(1, self.nb * self.dmax + 1)}
        self.rows: list[tuple[Expr, float, float]] = []
        self._constraints()

    def _var(self, upper: float) -> int:
        self.lo.append(0.0)
        self.hi.append(upper)
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
            for k, (w, r, shared) in enumerate(self.types):
                one = pieces.layer(Choice(w, r, 1, False))
                two = pieces.layer(Choice(w, r, 2, shared))
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

    def entropy(self) -> Expr:
        return {self.d[i][k]: self.problem.layer_entropy(Choice(w, r, 1, False), i)
                for i in range(self.nb) for k, (w, r, _) in enumerate(self.types)}

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
        log_rho = math.log(self.problem.settings.rho)
        logs = {self.d[i][k]: math.log(w) for i in range(self.nb)
                for k, (w, _, _) in enumerate(self.types)}
        logs |= {v: -D * (math.log(D) - log_rho) for D, v in self.y.items()}
        rows.append((logs, 0.0, np.inf))

    def budget_rows(self, skip: str | None = None) -> list[tuple[Expr, float, float]]:
        out = []
        for name, bound in self.problem.budgets.active().items():
            if name != skip:
                expr, const = self.linear(self.problem.pieces(name))
                # scaled to O(1); a hair of slack so a design exactly on the budget is kept
                out.append(({v: c / bound for v, c in expr.items()}, -np.inf,
                            (bound * (1 + 1e-12) - const) / bound))
        return out

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
        return milp(cost, integrality=np.ones(self.n), bounds=Bounds(self.lo, self.hi),
                    constraints=LinearConstraint(a, [x[1] for x in rows], [x[2] for x in rows]),
                    options=options)

    def decode(self, xs: np.ndarray) -> tuple[Choice, ...]:
        arch = []
        for i in range(self.nb):
            for k, (w, r, shared) in enumerate(self.types):
                if xs[self.u[i][k]] > 0.5:
                    depth = round(xs[self.d[i][k]])
                    arch.append(Choice(w, r, depth, shared and depth > 1))
        return tuple(arch)


def solve_exact(problem: Problem, time_limit: float | None = 120.0) -> Design:
    """Maximize entropy; proven optimal unless the time limit stops HiGHS (then optimal=False and
    the remaining gap is reported). Raises Infeasible naming the binding budget."""
    start = time.perf_counter()
    prog = _Program(problem)
    objective = {v: -k for v, k in prog.entropy().items()}
    res = prog.solve(objective, prog.budget_rows(), time_limit)
    seconds = time.perf_counter() - start
    if res.x is None:
        if res.status == 1:  # time limit without any solution
            raise Infeasible(f"HiGHS found no design within the {time_limit}s time limit", {})
        raise explain_infeasible(problem)
    arch = prog.decode(res.x)
    gap = float(getattr(res, "mip_gap", 0.0) or 0.0)
    info = SolverInfo(name="exact", seconds=seconds, optimal=res.status == 0, gap=gap,
                      detail={"variables": prog.n, "constraints": len(prog.rows),
                              "status": res.message})
    return Design(arch=arch, metrics=problem.evaluate(arch), solver=info)


def minimum(problem: Problem, resource: str, time_limit: float | None = 60.0) -> float | None:
    """Smallest value of one resource the space allows under the rho bound alone (None when not
    even the rho bound can be met)."""
    prog = _Program(problem)
    expr, const = prog.linear(problem.pieces(resource))
    res = prog.solve(expr, [], time_limit)
    return None if res.x is None else float(res.fun + const)


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
        parts = [f"{name} budget {_fmt(name, budgets[name])} is below the smallest achievable "
                 f"{_fmt(name, mins[name])}" for name in binding]
        return Infeasible("infeasible: " + "; ".join(parts), mins)
    parts = [f"{name} >= {_fmt(name, v)}" for name, v in mins.items()]
    return Infeasible("infeasible: each budget can be met alone but not all together (smallest "
                      "achievable: " + ", ".join(parts) + "); loosen one of them", mins)


def _fmt(name: str, value: float) -> str:
    from merino_mobile.units import human_bytes, human_count

    if name == "latency_ms":
        return f"{value:.3g}ms"
    if name == "memory":
        return human_bytes(value)
    return human_count(value)
