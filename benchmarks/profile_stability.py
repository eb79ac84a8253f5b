"""Do two profiles of one device, run back to back, predict the same designs? (issue 16, item 4)

Two host tables (ExecuTorch, --quant) are profiled one after the other in two workspaces, A then
B, each as the demo profiles: the demo's grid of the search space (decode context 193, the mean
of a 128 + 128 bench) and its whole-model anchors, timed interleaved with the micro-benchmarks
in the same run, so each table's calibration is fitted on its own anchors only (B reuses A's
exported programs, not its timings). Then:

- budgets: OPT-350M's decode latency as A predicts it (calibrated) over 8, 6, 4.9, 4 and 3 (the
  budgets of benchmarks/design_budget.py);
- designs: the exact solver's design at every budget from each table (up to 10 cards), plus the
  reference cards (OPT-350M, OPT-125M);
- every card is predicted by both tables, calibrated and raw, and the spread is B over A.

The target of the issue: every design predicted within 10% by the two calibrated tables.

    python benchmarks/profile_stability.py [--workspace build/profile_stability] [--quant int8]
        [--space default] [--speedups 8,6,4.9,4,3] [--passes N] [--seed-cache DIR]

Resumable: a workspace that already holds its table is not profiled again (delete
WORKSPACE/a or WORKSPACE/b to measure anew). Prints a table and writes
benchmarks/results/profile_stability.json: `profiles` (per table: seconds, calibration factors
and leave-one-out error), `rows` (per card: `predicted_ms` and `raw_ms` for `a` and `b`,
`ratio` and `raw_ratio` b/a) and `summary` (`max_abs_diff_pct`, `within_10pct` for calibrated
and raw; `cells`: how alike the two raw tables read each decode cell, streaming and hot).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from merino_mobile import accounting
from merino_mobile.card import load_card
from merino_mobile.deploy.bench import DEFAULT_GENERATE, DEFAULT_PROMPT, decode_context
from merino_mobile.deploy.verify import blocks_label, table_record
from merino_mobile.design import Infeasible, design_card
from merino_mobile.entropy import DEEPMAD
from merino_mobile.errors import UserError
from merino_mobile.export.build import format_attends
from merino_mobile.files import utc_now, write_json
from merino_mobile.latency import predict_latency
from merino_mobile.latency.anchors import DEFAULT_ANCHORS
from merino_mobile.latency.grid import make_grid
from merino_mobile.latency.profile import run_profile
from merino_mobile.latency.table import lut_path
from merino_mobile.space import load_space
from merino_mobile.target import resolve_target
from merino_mobile.toolchain import quiet_dependencies
from merino_mobile.workspace import Workspace

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
REFERENCES = ("opt-350m", "opt-125m")
COMMAND = "python benchmarks/profile_stability.py"


def profile(ws: Workspace, quant: str, space_path: Path, context: int, seed_cache: Path | None,
            passes: int | None, say: Any) -> dict[str, Any]:
    """The demo's profile of `space_path` in `ws` (skipped when its table exists)."""
    target = resolve_target(ws, "host", "executorch", quant)
    # the workspace's own table: resolving one would fall back to the repository's devices/,
    # which holds a table wherever the demo has run
    if lut_path(ws.devices, "host", "executorch", quant).is_file():
        say(f"{ws.root}: table present, not profiled again")
        return {"profiled_now": False}
    if seed_cache is not None and seed_cache.is_dir() and not (ws.state / "cache").exists():
        # the same programs, timed anew: exporting them again would only add minutes
        shutil.copytree(seed_cache, ws.state / "cache")
    grid = make_grid(space_path, "quick", [context], [DEFAULT_PROMPT])
    say(f"profiling {ws.root} ({len(grid.points())} micro-benchmarks, {DEFAULT_ANCHORS} anchors, "
        f"{passes or target.profile.measure.passes} passes)")
    t0 = time.perf_counter()
    report = run_profile(ws, target, "executorch", quant, grid, anchors=DEFAULT_ANCHORS,
                         space=space_path, passes=passes)
    return {"profiled_now": True, "seconds": round(time.perf_counter() - t0, 1),
            "export_s": round(report.export_s, 1), "passes": report.passes,
            "finished_at": utc_now()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", type=Path, default=ROOT / "build" / "profile_stability",
                    help="holds the two workspaces, a/ and b/")
    ap.add_argument("--quant", default="int8")
    ap.add_argument("--space", default="default")
    ap.add_argument("--speedups", default="8,6,4.9,4,3",
                    help="budgets: OPT-350M's predicted latency over these")
    ap.add_argument("--passes", type=int, default=None,
                    help="readings of every point and anchor per profile (default: the host "
                         "profile's [measure] passes)")
    ap.add_argument("--seed-cache", type=Path, default=None,
                    help="a workspace's .merino-mobile/cache whose exported programs both "
                         "profiles reuse (timed anew; saves the exports)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "profile_stability.json")
    args = ap.parse_args()
    quiet_dependencies()

    def say(msg: str) -> None:
        print(msg, flush=True)

    try:
        speedups = [float(s) for s in args.speedups.split(",") if s.strip()]
    except ValueError:
        sys.exit(f"--speedups: give numbers such as 8,6,4.9 (got {args.speedups!r})")
    if not speedups or min(speedups) <= 0:
        sys.exit("--speedups: give at least one positive number")
    if args.passes is not None and args.passes < 1:
        sys.exit(f"--passes: give 1 or more (got {args.passes})")
    if args.seed_cache is not None and not args.seed_cache.is_dir():
        sys.exit(f"--seed-cache: {args.seed_cache} is not a folder (give a workspace's "
                 f".merino-mobile/cache)")
    try:
        result = run(args, speedups, say)
    except UserError as e:
        sys.exit(f"error: {e}")
    result["command"] = " ".join([COMMAND, *sys.argv[1:]])
    write_json(args.out, result)
    say(f"wrote {args.out}")


def run(args: argparse.Namespace, speedups: list[float], say: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    root = args.workspace.resolve()
    wss = {k: Workspace(root / k) for k in ("a", "b")}
    space_path = Workspace(ROOT).find("search", args.space, ".toml")
    space = load_space(space_path)
    context = decode_context(DEFAULT_PROMPT, DEFAULT_GENERATE, DEFAULT_PROMPT + DEFAULT_GENERATE,
                             format_attends("executorch"))
    profiles: dict[str, Any] = {}
    for k, ws in wss.items():  # back to back: A, then B at once
        ws.models.mkdir(parents=True, exist_ok=True)
        seed = args.seed_cache or (wss["a"].state / "cache" if k == "b" else None)
        profiles[k] = profile(ws, args.quant, space_path, context, seed, args.passes, say)
    if args.out.is_file():  # a rescore keeps what the run that profiled measured of its time
        before = json.loads(args.out.read_text()).get("profiles", {})
        for k, rec in profiles.items():
            if not rec["profiled_now"] and before.get(k, {}).get("seconds") is not None:
                rec |= {key: before[k][key] for key in ("seconds", "export_s", "passes",
                                                         "finished_at") if key in before[k]}
    tables, raws = {}, {}
    for k, ws in wss.items():
        target = resolve_target(ws, "host", "executorch", args.quant)
        tables[k], raws[k] = target.table(), target.table(calibrated=False)
        t = tables[k]
        profiles[k] |= {"table": t.source, "calibrated": t.calibrated, "reason": t.reason,
                        "calibration": t.summary() if t.calibrated else None}
        say(f"table {k}: {'calibrated' if t.calibrated else 'raw'} ({t.reason})")

    refs = {n: load_card(Workspace(ROOT).find("models", n, ".json")) for n in REFERENCES}
    base = predict_latency(refs["opt-350m"], tables["a"], context, "decode", cache_aware=False)
    budgets = [base / s for s in speedups]
    cards: dict[str, Any] = dict(refs)
    designs: list[dict[str, Any]] = []
    for k, ws in wss.items():
        info = table_record(resolve_target(ws, "host", "executorch", args.quant), tables[k])
        for s, b in zip(speedups, budgets, strict=True):
            name = f"stability-{k}-{s:g}x".replace(".", "p")
            try:
                # deepmad: the objective its stored results were measured with (the default then)
                d, card, path = design_card(ws, space, {"latency_ms": b}, DEEPMAD,
                                            context, args.quant, tables[k], "exact", {},
                                            name=name, force=True, lut_info=info)
            except Infeasible as e:
                designs.append({"table": k, "speedup": s, "budget_ms": b, "error": str(e)})
                continue
            cards[name] = card
            designs.append({"table": k, "speedup": s, "budget_ms": b, "card": name,
                            "architecture": blocks_label(card)})

    rows = []
    for name, card in cards.items():
        row: dict[str, Any] = {"card": name, "architecture": blocks_label(card),
                               "params": accounting.params(card),
                               "design": name not in refs}
        for k in wss:
            row[k] = {"predicted_ms": predict_latency(card, tables[k], context, "decode",
                                                      cache_aware=False),
                      "raw_ms": predict_latency(card, raws[k], context, "decode",
                                                cache_aware=False)}
        row["ratio"] = row["b"]["predicted_ms"] / row["a"]["predicted_ms"]
        row["raw_ratio"] = row["b"]["raw_ms"] / row["a"]["raw_ms"]
        rows.append(row)

    def spread(key: str, only_designs: bool) -> dict[str, Any]:
        rs = [r[key] for r in rows if r["design"] or not only_designs]
        return {"max_abs_diff_pct": 100 * max(abs(x - 1) for x in rs),
                "within_10pct": sum(abs(x - 1) <= 0.10 for x in rs) / len(rs), "n": len(rs)}

    summary = {"calibrated": spread("ratio", True), "raw": spread("raw_ratio", True),
               "calibrated_all_cards": spread("ratio", False),
               "raw_all_cards": spread("raw_ratio", False),
               "cells": cell_agreement(raws["a"], raws["b"])}
    print(f"\n{'card':<22} {'architecture':<34} {'A ms':>8} {'B ms':>8} {'B/A':>6} | "
          f"{'A raw':>8} {'B raw':>8} {'B/A':>6}")
    for r in rows:
        print(f"{r['card']:<22} {r['architecture'][:34]:<34} {r['a']['predicted_ms']:>8.3f} "
              f"{r['b']['predicted_ms']:>8.3f} {r['ratio']:>6.3f} | {r['a']['raw_ms']:>8.3f} "
              f"{r['b']['raw_ms']:>8.3f} {r['raw_ratio']:>6.3f}")
    for k in ("calibrated", "raw"):
        s = summary[k]
        print(f"designs, {k}: {100 * s['within_10pct']:.0f}% of {s['n']} within 10% of each "
              f"other, the largest difference {s['max_abs_diff_pct']:.1f}%")
    for k, c in summary["cells"].items():
        print(f"decode cells, {k}: {100 * c['within_10pct']:.0f}% of {c['n']} within 10% between "
              f"the tables, geometric sd of B / A {c['geometric_sd']:.3f}")
    return {"schema_version": 1, "kind": "merino-mobile-profile-stability", "date": utc_now(),
            "device": "host", "runtime": "executorch", "quant": args.quant,
            "space": str(space_path), "context": context, "speedups": speedups,
            "budgets_ms": budgets, "profiles": profiles, "designs": designs, "rows": rows,
            "summary": summary, "machine": {"cpus": os.cpu_count(),
                                            "load_avg_end": os.getloadavg()},
            "wall_s": round(time.perf_counter() - t0, 1)}


def cell_agreement(a: Any, b: Any) -> dict[str, dict[str, float]]:
    """How alike two raw tables read the same decode cells (layers and heads, the terms a
    design's latency is made of): per kind of cell, streaming or hot, the share within 10% and
    the geometric standard deviation of B / A."""
    out = {}
    for hot in (False, True):
        ratios = []
        for term in ("layer", "head"):
            mine = {p.key: ms for p, ms in a.entries.get(term, {}).get("decode", [])
                    if p.hot == hot}
            for p, ms in b.entries.get(term, {}).get("decode", []):
                if p.hot == hot and p.key in mine and mine[p.key] > 0 and ms > 0:
                    ratios.append(ms / mine[p.key])
        if ratios:
            out["hot" if hot else "streaming"] = {
                "n": len(ratios), "within_10pct": sum(abs(r - 1) <= 0.10 for r in ratios)
                / len(ratios),
                "geometric_sd": math.exp(statistics.pstdev(math.log(r) for r in ratios))}
    return out


if __name__ == "__main__":
    main()
