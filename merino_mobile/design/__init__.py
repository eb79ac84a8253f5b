"""The MeRino design problem and its solvers: `exact` (HiGHS MIP, proven optimal), `ea` (the
paper's evolutionary baseline) and `brute` (enumeration, the test oracle)."""

from __future__ import annotations

from merino_mobile.design.brute import solve_brute
from merino_mobile.design.ea import solve_ea
from merino_mobile.design.exact import solve_exact
from merino_mobile.design.problem import Budgets, Design, Infeasible, Metrics, Problem
from merino_mobile.errors import UserError

SOLVERS = ("exact", "ea", "brute")


def solve(problem: Problem, solver: str = "exact", **options) -> Design:
    """Maximize entropy under the problem's budgets with the named solver."""
    if solver == "exact":
        return solve_exact(problem, **options)
    if solver == "ea":
        return solve_ea(problem, **options)
    if solver == "brute":
        return solve_brute(problem, **options)
    raise UserError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")


__all__ = ["Budgets", "Design", "Infeasible", "Metrics", "Problem", "SOLVERS", "solve"]
