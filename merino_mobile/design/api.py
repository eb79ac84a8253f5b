"""What the CLI and the pipeline do with the design problem: solve it with a named solver, design
one card (solve and write models/<name>.json), or sweep one budget along a Pareto frontier."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from matplotlib.figure import Figure

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
    """Maximize the problem's objective (`problem.settings.objective`) under its budgets with
    the named solver."""
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
    quant: str | None = None  # the weight format the sweep designed for
    context: int | None = None  # the context of its latency, FLOPs and KV cache
    device: str | None = None  # the latency table's device and runtime (a latency budget)
    runtime: str | None = None

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
             **({"architecture": [c.to_json() for c in p.design.arch],
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

    def figure(self) -> Figure:
        """Entropy over the resource each design uses: the chosen designs (the frontier: each
        beats every smaller budget's) filled and labelled with their budget, dominated ones
        hollow, infeasible budgets as red crosses on the axis. The title says the device and
        runtime of the latency table (when a budget is a latency), and the quantization."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter

        fig = Figure(figsize=(7, 4.6), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        chosen = {id(p) for p in self.frontier()}

        def used(p: SweepPoint) -> float:
            return p.design.metrics.resource(self.resource)

        def at(p: SweepPoint) -> tuple[float, float]:
            return used(p), p.design.metrics.entropy

        # a bigger budget whose optimum is the same design joins that design's label; only a
        # dominated design of its own is drawn as a point
        groups: list[tuple[SweepPoint, list[float]]] = []
        dominated: list[SweepPoint] = []
        for p in self.points:
            if id(p) in chosen:
                groups.append((p, [p.budget]))
            elif p.design and groups and at(p) == at(groups[-1][0]):
                groups[-1][1].append(p.budget)
            elif p.design:
                dominated.append(p)
        ax.plot([used(p) for p, _ in groups], [p.design.metrics.entropy for p, _ in groups],
                "o-", color="#1f77b4", ms=7, gid="chosen",
                label="chosen: the best design of its budget (Pareto frontier)")
        for p, budgets in groups:
            span = "-".join(dict.fromkeys(format_budget(self.resource, b)
                                          for b in (budgets[0], budgets[-1])))
            ax.annotate(f"budget {span}", at(p), textcoords="offset points", xytext=(6, -12),
                        fontsize=7, color="#1f77b4")
        if dominated:
            ax.plot([used(p) for p in dominated], [p.design.metrics.entropy for p in dominated],
                    "o", mfc="none", color="#999999", ms=7, gid="dominated",
                    label="dominated: no better than a smaller budget's design")
        bad = [p.budget for p in self.points if p.design is None]
        if bad:
            # on the x axis at the budget (y in axes units): there is no design to place
            ax.plot(bad, [0.03] * len(bad), "x", color="#d62728", ms=8, mew=2, gid="infeasible",
                    transform=ax.get_xaxis_transform(), clip_on=False,
                    label="infeasible budget")
        ax.xaxis.set_major_formatter(FuncFormatter(
            lambda v, _: format_budget(self.resource, v) if v > 0 else "0" if v == 0 else ""))
        ax.set_xlabel({"latency_ms": "predicted latency per token", "flops": "FLOPs/token",
                       "params": "parameters", "memory": "memory (weights + KV cache)"}
                      [self.resource] + " of the design")
        ax.set_ylabel("entropy H(A)")
        where = (f"{self.device} · {self.runtime} · {self.quant}" if self.device
                 else f"any device and runtime (no latency budget) · {self.quant}")
        ctx = f", context {self.context}" if self.context else ""
        what = {"latency_ms": "latency"}.get(self.resource, self.resource)
        ax.set_title(f"MeRino designs: entropy vs {what}\n{where}{ctx}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.margins(x=0.15, y=0.12)  # room for the labels right of and under the last points
        # a frontier rises to the right, so the upper left is where the legend hides nothing
        ax.legend(fontsize=7, loc="upper left")
        return fig

    def plot(self, path: Path) -> Path:
        """Write `figure` as a PNG at `path`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.figure().savefig(path, dpi=120)
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
    # a LatencyTable need not know whose it is; the measured tables (latency.table.Lut) do
    return Sweep(resource, points, quant, context, getattr(table, "device", None),
                 getattr(table, "runtime", None))
