"""What the CLI and the pipeline do with the design problem: solve it with a named solver, design
one card (solve and write models/<name>.json), or sweep one budget along a Pareto frontier."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from merino_mobile.card import DESIGNED_BY, Card, save_card
from merino_mobile.design.brute import solve_brute
from merino_mobile.design.ea import solve_ea
from merino_mobile.design.exact import solve_exact
from merino_mobile.design.problem import Budgets, Design, Infeasible, Problem, format_budget
from merino_mobile.entropy import EntropySettings
from merino_mobile.errors import UserError
from merino_mobile.files import utc_now
from merino_mobile.latency import LatencyTable
from merino_mobile.space import Space
from merino_mobile.units import Range, parse_bytes, parse_count, parse_latency_ms, parse_range

SOLVERS = ("exact", "ea", "brute")
MAX_SWEEP_POINTS = 200  # a sweep solves once per point: more is a typo in the step, not a plan
_SHORT = {"latency_ms": "lat", "flops": "f", "params": "p", "memory": "m"}
# a card name becomes models/<name>.json: a plain file name, nothing that leaves models/
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
MAX_NAME = 200


def read_budgets(latency: str | None = None, flops: str | None = None,
                 params: str | None = None, memory: str | None = None
                 ) -> tuple[dict[str, float | Range], str | None]:
    """The budgets a user gave (`--latency 50ms`, `--params 20M:100M:20M`...) by name, and the
    one that is a range to sweep (None: a single design). At least one budget, at most one
    range."""
    given = {
        "latency_ms": latency and parse_range(latency, parse_latency_ms, "--latency"),
        "flops": flops and parse_range(flops, parse_count, "--flops"),
        "params": params and parse_range(params, parse_count, "--params"),
        "memory": memory and parse_range(memory, parse_bytes, "--memory"),
    }
    given = {k: v for k, v in given.items() if v}
    if not given:
        raise UserError("give at least one budget: --latency 50ms, --flops 2G, --params 60M or "
                        "--memory 200MB")
    sweeps = [k for k, v in given.items() if isinstance(v, Range)]
    if len(sweeps) > 1:
        raise UserError(f"only one budget can be a range at a time (got {', '.join(sweeps)})")
    return given, (sweeps[0] if sweeps else None)


def solve(problem: Problem, solver: str = "exact", **options: Any) -> Design:
    """Maximize entropy under the problem's budgets with the named solver."""
    if solver == "exact":
        return solve_exact(problem, **options)
    if solver == "ea":
        return solve_ea(problem, **options)
    if solver == "brute":
        return solve_brute(problem, **options)
    raise UserError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")


def _label(name: str, value: float) -> str:
    # "60.0M" -> "60M", but "1.05ms" stays as it is
    return _SHORT[name] + re.sub(r"\.0(?=[A-Za-z])", "", format_budget(name, value))


def default_name(budgets: dict[str, float], device: str | None) -> str:
    parts = ["merino"] + [_label(k, v) for k, v in budgets.items()]
    if device and "latency_ms" in budgets:
        parts.append(device)
    return "-".join(parts)


def check_name(name: str) -> str:
    """A card name as given, or UserError: letters, digits, '.', '-' and '_', not starting with
    '.' (no path separators, no hidden files, nothing outside models/)."""
    if not _NAME.fullmatch(name) or len(name) > MAX_NAME:
        raise UserError(
            f"card name {name!r} is not a plain file name: use letters, digits, '.', '-' and '_' "
            f"(at most {MAX_NAME} characters, not starting with '.'); the card is written to "
            "models/<name>.json (use --out for a file elsewhere)")
    return name


def design_card(ws: Any, space: Space, budgets: dict[str, float], settings: EntropySettings,
                context: int, quant: str, table: LatencyTable | None, solver: str,
                options: dict[str, Any], *, name: str | None = None, out: Path | None = None,
                force: bool = False, lut_info: dict | None = None) -> tuple[Design, Card, Path]:
    """Solve, and write the card: `out`, else models/<name>.json in the workspace (an automatic
    name never replaces an existing card: it gets a numeric suffix). A `name` must be a plain
    file name (see check_name); it is refused before anything is solved."""
    name = check_name(name if name is not None
                      else default_name(budgets, (lut_info or {}).get("device")))
    problem = Problem(space, Budgets(**budgets), settings, context, quant, latency=table)
    d = solve(problem, solver, **options)
    if out is None:
        out = ws.models / f"{name}.json"
        n = 2
        while out.exists() and not force:
            out = ws.models / f"{name}-{n}.json"
            n += 1
        name = out.stem
    meta = {
        "designed_by": DESIGNED_BY,  # how card.last_designed finds it
        "date": utc_now(),
        "space": space.source,
        "budgets": budgets,
        "context": context,
        "quant": quant,
        "settings": asdict(settings),
        "entropy": d.metrics.entropy,
        "predicted_latency_ms": d.metrics.latency_ms,
        "latency_table": lut_info,
        "solver": asdict(d.solver),
    }
    card = space.to_card(d.arch, name, meta)
    return d, card, save_card(card, out, force=force)


@dataclass
class SweepPoint:
    budget: float
    design: Design | None
    infeasible: str | None = None


@dataclass
class Sweep:
    """Designs along one budget: the entropy/cost Pareto frontier."""

    resource: str
    points: list[SweepPoint]

    def frontier(self) -> list[SweepPoint]:
        """Feasible points that beat every cheaper budget's entropy."""
        out, best = [], float("-inf")
        for p in self.points:
            if p.design and p.design.metrics.entropy > best + 1e-9:
                out.append(p)
                best = p.design.metrics.entropy
        return out

    def to_json(self) -> dict[str, Any]:
        frontier = {id(p) for p in self.frontier()}
        return {"resource": self.resource, "points": [
            {"budget": p.budget, "on_frontier": id(p) in frontier, "infeasible": p.infeasible,
             **({"architecture": [asdict(c) for c in p.design.arch],
                 "metrics": asdict(p.design.metrics),
                 "solver": asdict(p.design.solver)} if p.design else {})}
            for p in self.points]}

    def table(self) -> Any:
        from rich.table import Table

        t = Table(title=f"Pareto frontier of entropy over {self.resource}")
        for col in ("budget", "entropy", "rho", "depth", "params", "used", "blocks (w x r x L)"):
            t.add_column(col, justify="right")
        frontier = {id(p) for p in self.frontier()}
        fmt = format_budget
        for p in self.points:
            if p.design is None:
                t.add_row(fmt(self.resource, p.budget), "[red]infeasible[/red]", "", "", "", "", "")
                continue
            m = p.design.metrics
            blocks = " ".join(f"{c.width}x{c.ffn_ratio:g}x{c.depth}{'s' if c.shared else ''}"
                              for c in p.design.arch)
            mark = "" if id(p) in frontier else " [dim](dominated)[/dim]"
            t.add_row(fmt(self.resource, p.budget), f"{m.entropy:.1f}{mark}", f"{m.rho:.4f}",
                      str(m.depth), f"{m.params / 1e6:.1f}M",
                      fmt(self.resource, m.resource(self.resource)), blocks)
        return t

    def plot(self, path: Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        pts = [p for p in self.points if p.design]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([p.design.metrics.resource(self.resource) for p in pts],
                [p.design.metrics.entropy for p in pts], "o-")
        ax.set_xlabel({"latency_ms": "predicted latency per token (ms)", "flops": "FLOPs/token",
                       "params": "parameters", "memory": "memory (bytes)"}[self.resource])
        ax.set_ylabel("entropy H(A)")
        ax.set_title("MeRino designs: entropy vs " + self.resource)
        ax.grid(alpha=0.3)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


def sweep(space: Space, budgets: dict[str, Any], resource: str, settings: EntropySettings,
          context: int, quant: str, table: LatencyTable | None, solver: str,
          options: dict[str, Any]) -> Sweep:
    """Solve once per value of the one range budget; infeasible values are kept as such.
    Refuses a range of more than MAX_SWEEP_POINTS values before solving anything."""
    rng = budgets[resource]
    if not isinstance(rng, Range):
        raise UserError(f"a sweep needs a range start:stop:step for {resource}, got {rng!r}")
    n = rng.count()
    if n > MAX_SWEEP_POINTS:
        step = (rng.stop - rng.start) / (MAX_SWEEP_POINTS - 1)
        count = f"{n:,}" if n < 10**15 else f"over 10^{len(str(n)) - 1}"
        raise UserError(
            f"the {resource} sweep {format_budget(resource, rng.start)}:"
            f"{format_budget(resource, rng.stop)}:{format_budget(resource, rng.step)} has {count} "
            f"points, one solve each; at most {MAX_SWEEP_POINTS} are allowed: use a step of at "
            f"least {format_budget(resource, step)} or a shorter range")
    points = []
    for value in rng.values():
        b = dict(budgets) | {resource: value}
        problem = Problem(space, Budgets(**b), settings, context, quant, latency=table)
        try:
            points.append(SweepPoint(value, solve(problem, solver, **options)))
        except Infeasible as e:
            points.append(SweepPoint(value, None, str(e)))
    return Sweep(resource, points)
