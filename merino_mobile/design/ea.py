"""Evolutionary baseline, as the MeRino paper searched: a population of architectures, mutation,
and rejection of candidates that break a constraint. Seeded, so runs are reproducible. Fitness is
the problem's objective (`Metrics.entropy`), whichever it is."""

from __future__ import annotations

import math
import random
import time
from dataclasses import replace

from merino_mobile.design.problem import Design, Metrics, Problem, SolverInfo
from merino_mobile.errors import UserError
from merino_mobile.space import Choice, Space


def _random_block(space: Space, rng: random.Random, min_width: int | None = None) -> Choice:
    widths = [w for w in space.widths if min_width is None or space.allows_step(min_width, w)]
    depth = rng.choice(space.depths)
    # drawn in this order, and K/V heads only where the space chooses them: the seeded runs
    # of version 1 spaces see the same random sequence as before
    width, ratio = rng.choice(widths), rng.choice(space.ffn_ratios)
    shared = space.sharing and depth > 1 and rng.random() < 0.5
    kv = rng.choice(space.kv_heads) if space.kv_heads else None
    return space.with_sharing(Choice(width, ratio, depth, shared, kv))


def _random_arch(space: Space, rng: random.Random) -> tuple[Choice, ...]:
    n = rng.randint(space.min_blocks, space.max_blocks)
    arch: list[Choice] = []
    for _ in range(n):
        arch.append(_random_block(space, rng, arch[-1].width if arch else None))
    return tuple(arch)


def _valid(space: Space, arch: tuple[Choice, ...]) -> bool:
    steps = zip(arch, arch[1:], strict=False)
    return (space.min_blocks <= len(arch) <= space.max_blocks
            and all(space.allows_step(a.width, b.width) for a, b in steps))


def mutate(space: Space, arch: tuple[Choice, ...], rng: random.Random) -> tuple[Choice, ...]:
    """Change one thing: a block's width, ratio, depth, sharing or K/V heads (a space that
    chooses them); add or drop a block."""
    blocks = list(arch)
    i = rng.randrange(len(blocks))
    c = blocks[i]
    moves = ("width", "ratio", "depth", "share", "add", "drop")
    # the K/V move only where there is a choice: version 1 spaces mutate as before
    move = rng.choice(moves + ("kv",) if len(space.kv_heads) > 1 else moves)
    if move == "width":
        c = replace(c, width=rng.choice(space.widths))
    elif move == "ratio":
        c = replace(c, ffn_ratio=rng.choice(space.ffn_ratios))
    elif move == "depth":
        d = rng.choice(space.depths)
        c = replace(c, depth=d, shared=c.shared and d > 1)
    elif move == "share" and space.sharing and not space.share_always and c.depth > 1:
        c = replace(c, shared=not c.shared)
    elif move == "kv":
        c = replace(c, kv_heads=rng.choice(space.kv_heads))
    elif move == "add" and len(blocks) < space.max_blocks:
        blocks.insert(i + 1, _random_block(space, rng))
    elif move == "drop" and len(blocks) > space.min_blocks:
        del blocks[i]
        return tuple(blocks)
    blocks[i] = space.with_sharing(c)
    return tuple(blocks)


def solve_ea(problem: Problem, *, seconds: float = 1.0, population: int = 64,
             generations: int | None = None, seed: int = 0) -> Design:
    """Evolve for `seconds` (or a fixed number of `generations`); keep the best feasible design.

    Each generation mutates a tournament-selected parent; infeasible or invalid children are
    rejected (feasible: the exact check every solver's answer passes). The worst member is
    replaced when a child beats it.
    """
    from merino_mobile.design.exact import explain_infeasible

    if not (math.isfinite(seconds) and seconds > 0):
        raise UserError(f"--ea-seconds must be a finite positive number of seconds, got {seconds}")
    if population < 1:
        raise UserError(f"the EA's population must be at least 1, got {population}")
    if generations is not None and generations < 0:
        raise UserError(f"the EA's generations must not be negative, got {generations}")

    rng = random.Random(seed)
    space = problem.space
    start = time.perf_counter()
    scored: list[tuple[tuple[Choice, ...], Metrics]] = []
    seen: dict[tuple[Choice, ...], Metrics | None] = {}
    evaluated = 0

    def score(arch: tuple[Choice, ...]) -> Metrics | None:
        nonlocal evaluated
        if arch not in seen:
            evaluated += 1
            m = problem.evaluate(arch)
            seen[arch] = m if problem.feasible(arch, m) else None
        return seen[arch]

    def out_of_time(gen: int) -> bool:
        if generations is not None:
            return gen >= generations
        return time.perf_counter() - start > seconds

    # initial population: random feasible architectures (rejection sampling)
    tries = 0
    while len(scored) < population and tries < population * 200 and not out_of_time(0):
        tries += 1
        arch = _random_arch(space, rng)
        m = score(arch)
        if m is not None and all(arch != a for a, _ in scored):
            scored.append((arch, m))
    if not scored:
        raise explain_infeasible(problem)

    gen = 0
    while not out_of_time(gen):
        gen += 1
        parent = max(rng.sample(scored, min(4, len(scored))), key=lambda p: p[1].entropy)[0]
        child = mutate(space, parent, rng)
        if not _valid(space, child):
            continue
        m = score(child)
        if m is None:
            continue
        worst = min(range(len(scored)), key=lambda k: scored[k][1].entropy)
        if m.entropy > scored[worst][1].entropy and all(child != a for a, _ in scored):
            scored[worst] = (child, m)
    best, best_m = max(scored, key=lambda p: p[1].entropy)
    info = SolverInfo(name="ea", seconds=time.perf_counter() - start, optimal=False,
                      evaluated=evaluated,
                      detail={"generations": gen, "population": population, "seed": seed})
    return problem.certify(best, info, best_m)
