"""Brute force: score every architecture of a small space. The oracle the other solvers are
tested against; it scores through the card and the accounting (and the objective of the card,
`merino_mobile.entropy.objective_value`), not through the MIP's pieces, and keeps the best
design that passes the same exact check (`Problem.violations`)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from merino_mobile.design.problem import Design, Problem, SolverInfo
from merino_mobile.errors import UserError
from merino_mobile.space import Choice, Space

MAX_SIZE = 200_000


def architectures(space: Space) -> Iterator[tuple[Choice, ...]]:
    """Every architecture of the space, each once."""
    choices = list(space.choices())

    def extend(prefix: tuple[Choice, ...]) -> Iterator[tuple[Choice, ...]]:
        if len(prefix) >= space.min_blocks:
            yield prefix
        if len(prefix) == space.max_blocks:
            return
        for c in choices:
            if not prefix or space.allows_step(prefix[-1].width, c.width):
                yield from extend(prefix + (c,))

    return extend(())


def solve_brute(problem: Problem) -> Design:
    """The architecture of the highest objective that meets every constraint, by enumeration
    (refuses spaces over MAX_SIZE)."""
    size = problem.space.size()
    if size > MAX_SIZE:
        raise UserError(f"the brute-force solver enumerates every architecture; this space has "
                        f"{size:,} (limit {MAX_SIZE:,}): use --solver exact")
    start = time.perf_counter()
    best, best_m, n = None, None, 0
    for arch in architectures(problem.space):
        n += 1
        m = problem.evaluate(arch)
        if (best_m is None or m.entropy > best_m.entropy) and problem.feasible(arch, m):
            best, best_m = arch, m
    seconds = time.perf_counter() - start
    if best is None:
        from merino_mobile.design.exact import explain_infeasible
        raise explain_infeasible(problem)
    info = SolverInfo(name="brute", seconds=seconds, optimal=True, gap=0.0, evaluated=n)
    return problem.certify(best, info, best_m)
