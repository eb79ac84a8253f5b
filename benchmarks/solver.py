"""Exact MIP solver against the paper's evolutionary search, on the default space.

For 20 budgets (parameters, FLOPs, memory and combinations): the exact solve time, and the
entropy the EA reaches, as a share of the proven optimum, when given the same wall time as the
exact solver and ten times that. Prints a table and writes benchmarks/results/solver.json.

    python benchmarks/solver.py [--budgets N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from merino_mobile.design import Budgets, Infeasible, Problem, solve
from merino_mobile.space import load_space
from merino_mobile.workspace import BUILTIN

BUDGETS = [
    Budgets(params=p) for p in (15e6, 25e6, 40e6, 60e6, 80e6, 120e6)
] + [
    Budgets(flops=f) for f in (150e6, 300e6, 500e6, 800e6, 1.2e9, 2e9)
] + [
    Budgets(memory=m) for m in (60e6, 120e6, 250e6)
] + [
    Budgets(params=30e6, memory=100e6), Budgets(params=60e6, flops=600e6),
    Budgets(params=40e6, flops=1e9, memory=200e6), Budgets(flops=400e6, memory=150e6),
    Budgets(params=100e6, flops=1.5e9),
]


def label(b: Budgets) -> str:
    units = {"params": 1e6, "flops": 1e6, "memory": 1e6}
    names = {"params": "P", "flops": "F", "memory": "M"}
    return " ".join(f"{names[k]}{v / units[k]:g}M" for k, v in b.active().items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", type=int, default=len(BUDGETS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ea-factors", default="1,10",
                    help="EA time as multiples of the exact time, comma-separated ('' = no EA)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "solver.json")
    args = ap.parse_args()

    factors = [int(f) for f in args.ea_factors.split(",") if f]
    space = load_space(BUILTIN / "search" / "default.toml")
    rows = []
    for b in BUDGETS[: args.budgets]:
        problem = Problem(space, b, context=512)
        try:
            exact = solve(problem, "exact")
        except Infeasible as e:
            rows.append({"budget": label(b), "infeasible": str(e)})
            continue
        t = exact.solver.seconds
        row = {"budget": label(b), "exact_seconds": t, "optimal": exact.solver.optimal,
               "gap": exact.solver.gap, "entropy": exact.metrics.entropy}
        for factor in factors:
            start = time.perf_counter()
            try:
                ea = solve(problem, "ea", seconds=factor * t, seed=args.seed)
                share = ea.metrics.entropy / exact.metrics.entropy
                evaluated = ea.solver.evaluated
            except Infeasible:  # the EA found no feasible start within its time
                share, evaluated = 0.0, None
            row[f"ea_{factor}x_share"] = share
            row[f"ea_{factor}x_seconds"] = time.perf_counter() - start
            row[f"ea_{factor}x_evaluated"] = evaluated
        rows.append(row)
        print(json.dumps(row), flush=True)

    solved = [r for r in rows if "exact_seconds" in r]
    times = [r["exact_seconds"] for r in solved]
    summary = {
        "budgets": len(rows),
        "exact_median_s": statistics.median(times),
        "exact_max_s": max(times),
        "all_proven_optimal": all(r["optimal"] for r in solved),
        **{f"ea_{f}x_{stat}_share": fn(r[f"ea_{f}x_share"] for r in solved)
           for f in factors for stat, fn in (("median", statistics.median), ("min", min))},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_avg_1m": os.getloadavg()[0]},
    }
    table = Table(title="exact MIP vs evolutionary search (default space, context 512)")
    for col in ["budget", "exact s", "optimal", "entropy"] + [f"EA @{f}x time" for f in factors]:
        table.add_column(col, justify="right")
    for r in rows:
        if "exact_seconds" not in r:
            table.add_row(r["budget"], "-", "infeasible", "", *["" for _ in factors])
            continue
        table.add_row(r["budget"], f"{r['exact_seconds']:.2f}", "yes" if r["optimal"] else "no",
                      f"{r['entropy']:.1f}", *[f"{100 * r[f'ea_{f}x_share']:.1f}%"
                                                for f in factors])
    console = Console()
    console.print(table)
    ea = ", ".join(f"{100 * summary[f'ea_{f}x_median_share']:.1f}% ({f}x)" for f in factors)
    console.print(f"exact: median {summary['exact_median_s']:.2f} s, max "
                  f"{summary['exact_max_s']:.2f} s, all proven optimal: "
                  f"{summary['all_proven_optimal']}; EA median share of optimum: {ea or '-'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"schema_version": 1, "summary": summary, "rows": rows},
                                   indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
