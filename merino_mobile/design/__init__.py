"""The MeRino design problem and its solvers: `exact` (HiGHS MIP, proven optimal), `ea` (the
paper's evolutionary baseline) and `brute` (enumeration, the test oracle); plus the two things the
CLI does with them (`api`): design one card, or sweep one budget along a Pareto frontier."""

from merino_mobile.design.api import (
    MAX_SWEEP_POINTS,
    SOLVERS,
    Sweep,
    SweepPoint,
    check_name,
    default_name,
    design_card,
    read_budgets,
    solve,
    sweep,
)
from merino_mobile.design.problem import (
    Budgets,
    Design,
    Infeasible,
    Metrics,
    Problem,
    Unverified,
    format_budget,
)

__all__ = ["MAX_SWEEP_POINTS", "SOLVERS", "Budgets", "Design", "Infeasible", "Metrics", "Problem",
           "Sweep", "SweepPoint", "Unverified", "check_name", "default_name", "design_card",
           "format_budget", "read_budgets", "solve", "sweep"]
