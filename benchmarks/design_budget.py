"""Does a latency budget hold on the device? Designs with and without `design --verify`, benched
side by side, for several budgets (issue 16, item 6).

For each budget, on this host with ExecuTorch int8 and the workspace's latency table:

- `raw`: what `design --latency B` gives (the exact solver, the table as it is when the run
  starts: calibrated if its calibration applies), designed first for every budget, before any
  verify loop refits the calibration;
- `verified`: what `design --latency B --verify` gives (`merino_mobile.deploy.verify`: export,
  bench, refit and redesign until the measured median is within B, at most --iterations
  designs); when no design keeps B, the fastest one it measured, marked with its status.

Then every distinct design is benched side by side in one run (`bench_side_by_side`:
interleaved rounds, order reversed every other round), so all the measured numbers in the table
come from measurements taken together, not from the loop's own benches minutes apart.

    python benchmarks/design_budget.py --workspace WS [--budgets 8ms,10ms,13ms,16ms,20ms]
        [--space default] [--context 256] [--iterations 3] [--repeat 5] [--rounds 3]

The default budgets are OPT-350M's predicted decode latency (the solver's streaming sum, as the
demo's budget) over 8, 6, 4.9, 4 and 3. Prints a table and writes
benchmarks/results/design_budget.json: `rows`, one per budget, each `budget_ms`, `raw` and
`verified` ({`card`, `predicted_ms`, `measured_ms`, `measured_over_budget`, `rounds_ms` (each
round's median), `speeds`, `slow_ms`, `fast_ms`, `fast_share` and `slow_over_budget`
(`base.two_speeds` of the rounds: on a host that runs a model at two speeds, the slow one's
median over the budget); `verified` also `iterations`, `status` and `loop_measured_ms`, the
loop's own measurement).

Slow with the default space (an export and a bench of a 20-70M-parameter model per iteration).
Resumable: the designs and each budget's finished loop are kept in
benchmarks/results/design_budget.partial.json (for the same workspace and settings), an
interrupted loop resumes from its own state (build/verify/), and every export is reused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from merino_mobile import accounting
from merino_mobile.card import load_card
from merino_mobile.deploy.bench import bench_side_by_side
from merino_mobile.deploy.verify import (
    BudgetNotMet,
    bench_lengths,
    blocks_label,
    export_card,
    table_record,
    verify_design,
)
from merino_mobile.design import Infeasible, design_card, format_budget
from merino_mobile.device.base import two_speeds
from merino_mobile.entropy import EntropySettings
from merino_mobile.errors import UserError
from merino_mobile.files import write_json
from merino_mobile.latency import predict_latency
from merino_mobile.space import load_space
from merino_mobile.target import resolve_target
from merino_mobile.toolchain import quiet_dependencies
from merino_mobile.units import parse_latency_ms
from merino_mobile.workspace import Workspace

HERE = Path(__file__).resolve().parent
DEVICE, FORMAT, QUANT = "host", "executorch", "int8"
SPEEDUPS = (8.0, 6.0, 4.9, 4.0, 3.0)  # the default budgets: OPT-350M's prediction over these
REFERENCE = "opt-350m"


def default_budgets(ws: Workspace, table: Any, context: int) -> list[float]:
    ref = load_card(ws.find("models", REFERENCE, ".json"))
    base = predict_latency(ref, table, context, "decode", cache_aware=False)
    return [base / s for s in SPEEDUPS]


def label(budget: float) -> str:
    return format_budget("latency_ms", budget).replace(".", "p")


def export_of(ws: Workspace, card: Any, context: int) -> Path:
    """The design's export in the verify loop's folder (made there if missing, reused after)."""
    from merino_mobile.export import export, reusable_export

    xcard = export_card(card)
    where = ws.root / "build" / "verify" / "exports" / f"{FORMAT}-{QUANT}-ctx{context}" / xcard.name
    res = reusable_export(where, xcard, FORMAT, QUANT, context)
    if res is None:
        print(f"  exporting {blocks_label(card)}", flush=True)
        res = export(xcard, FORMAT, QUANT, where, force=True, cache_len=context, verify=False)
    return Path(res.artifact)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", type=Path, required=True,
                    help="a workspace with a host ExecuTorch int8 latency table")
    ap.add_argument("--budgets", help="comma-separated latency budgets, e.g. 8ms,10ms,13ms "
                    "(default: OPT-350M's predicted latency over 8, 6, 4.9, 4 and 3)")
    ap.add_argument("--space", default="default", help="search space file or name")
    ap.add_argument("--context", type=int, default=256, help="decode context of the design "
                    "and of the exports' KV cache")
    ap.add_argument("--rho", type=float, default=None, help="effectiveness bound (default: "
                    "the design default)")
    ap.add_argument("--iterations", type=int, default=3, help="designs each --verify may bench")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per phase (loop, rounds)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the final bench")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "design_budget.json")
    args = ap.parse_args()
    quiet_dependencies()
    try:
        run(args)
    except UserError as e:
        sys.exit(f"error: {e}")


def run(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    ws = Workspace.resolve(args.workspace)
    target = resolve_target(ws, DEVICE, FORMAT, QUANT)
    try:
        table = target.table()
    except UserError as e:
        sys.exit(f"{e}\nthis benchmark needs a profiled host table (ExecuTorch int8) in the "
                 f"workspace: make one with `merino-mobile demo --workspace {args.workspace}` "
                 f"(or `merino-mobile profile --device host --runtime executorch --quant int8`)")
    context = args.context
    space = load_space(ws.find("search", args.space, ".toml"))
    settings = EntropySettings() if args.rho is None else EntropySettings(rho=args.rho)
    budgets = ([parse_latency_ms(b.strip()) for b in args.budgets.split(",") if b.strip()]
               if args.budgets else default_budgets(ws, table, context))
    if not budgets:
        sys.exit("--budgets is empty: give values such as 8ms,10ms,13ms")
    prompt, generate = bench_lengths(context)
    settings_key = {"workspace": str(ws.root), "space": space.source, "context": context,
                    "rho": settings.rho, "iterations": args.iterations, "repeat": args.repeat,
                    "budgets": budgets}
    partial_path = args.out.with_suffix(".partial.json")
    partial = _read_partial(partial_path, settings_key)
    print(f"table {table.source} ({'calibrated' if table.calibrated else 'raw'}); budgets "
          + ", ".join(format_budget("latency_ms", b) for b in budgets), flush=True)

    # 1. the raw designs, all before any verify loop refits the calibration
    if "raw" not in partial:
        info = table_record(target, table)
        partial["raw"] = {}
        for b in budgets:
            try:
                d, card, path = design_card(ws, space, {"latency_ms": b}, settings, context,
                                            QUANT, table, "exact", {},
                                            name=f"budget-raw-{label(b)}", force=True,
                                            lut_info=info)
                partial["raw"][str(b)] = {"card": str(path), "predicted_ms": d.metrics.latency_ms}
            except Infeasible as e:
                partial["raw"][str(b)] = {"card": None, "predicted_ms": None, "error": str(e)}
        partial["table_calibrated"] = table.calibrated
        write_json(partial_path, partial)

    # 2. the verified designs, one loop per budget (each resumable on its own)
    partial.setdefault("verified", {})
    for b in budgets:
        if str(b) in partial["verified"]:
            print(f"budget {format_budget('latency_ms', b)}: verified before, reused", flush=True)
            continue
        print(f"budget {format_budget('latency_ms', b)}: design --verify", flush=True)
        path = None
        try:
            r = verify_design(ws, space, {"latency_ms": b}, settings, context, device=target,
                              quant=QUANT, name=f"budget-verified-{label(b)}", force=True,
                              iterations=args.iterations, repeat=args.repeat,
                              say=lambda m: print(f"  {m}", flush=True))
            path = r.path
        except BudgetNotMet as e:
            r = e.result
            print(f"  {e}", flush=True)
        except Infeasible as e:
            partial["verified"][str(b)] = {"card": None, "error": str(e)}
            write_json(partial_path, partial)
            continue
        c = r.chosen
        assert c is not None
        partial["verified"][str(b)] = {
            "card": str(path) if path else c.card, "predicted_ms": c.predicted_ms,
            "loop_measured_ms": c.measured_ms, "status": r.status,
            "iterations": [it.summary() for it in r.iterations]}
        write_json(partial_path, partial)

    # 3. every distinct design, benched side by side in one run
    designs: dict[str, Path] = {}  # card file -> artifact
    for kind in ("raw", "verified"):
        for entry in partial[kind].values():
            if entry.get("card") and entry["card"] not in designs:
                designs[entry["card"]] = export_of(ws, load_card(entry["card"]), context)
    artifacts = list(dict.fromkeys(designs.values()))
    print(f"benching {len(artifacts)} distinct designs side by side ({args.rounds} rounds of "
          f"{args.repeat} runs, prompt {prompt}, generate {generate})", flush=True)
    reports = bench_side_by_side(ws, artifacts, target, prompt=prompt, generate=generate,
                                 repeat=args.repeat, rounds=args.rounds,
                                 on_round=lambda r, n: print(f"  round {r + 1} of {n}",
                                                             flush=True),
                                 tag="design-budget")
    by_artifact = dict(zip(artifacts, reports, strict=True))

    rows = []
    for b in budgets:
        row: dict[str, Any] = {"budget_ms": b}
        for kind in ("raw", "verified"):
            e = dict(partial[kind][str(b)])
            rep = by_artifact[designs[e["card"]]] if e.get("card") else None
            m = rep.decode_ms_per_token.median if rep else None
            card = load_card(e["card"]) if e.get("card") else None
            if rep:  # each round's median, and the two speeds when the rounds ran at two
                sp = two_speeds(rep.round_decode_ms)
                e |= {"rounds_ms": rep.round_decode_ms, **sp,
                      "slow_over_budget": sp["slow_ms"] / b}
            e |= {"measured_ms": m, "measured_over_budget": m / b if m is not None else None,
                  "params": accounting.params(card) if card else None,
                  "architecture": blocks_label(card) if card else None}
            row[kind] = e
        rows.append(row)
    print_table(rows)
    result = {"schema_version": 1, "kind": "merino-mobile-design-budget",
              "device": DEVICE, "format": FORMAT, "quant": QUANT, "context": context,
              "space": space.source, "latency_table": table.source,
              "table_calibrated_at_start": partial.get("table_calibrated"),
              "iterations": args.iterations, "repeat": args.repeat, "rounds": args.rounds,
              "prompt": prompt, "generate": generate, "rows": rows,
              "wall_s": round(time.perf_counter() - t0, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)
    partial_path.unlink(missing_ok=True)
    print(f"wrote {args.out}")


def _read_partial(path: Path, key: dict[str, Any]) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"key": key}
    if data.get("key") != json.loads(json.dumps(key)):
        return {"key": key}
    print(f"resuming {path}", flush=True)
    return data


def print_table(rows: list[dict[str, Any]]) -> None:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.3g}"

    def ratio(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}x"

    print(f"\n{'budget':>8} | {'raw design':<28} {'pred':>7} {'meas':>7} {'/B':>6} {'slow/B':>6} | "
          f"{'verified design':<28} {'pred':>7} {'meas':>7} {'/B':>6} {'slow/B':>6} {'its':>3} "
          f"status")
    for r in rows:
        raw, ver = r["raw"], r["verified"]
        print(f"{r['budget_ms']:>8.3g} | {(raw.get('architecture') or '-')[:28]:<28} "
              f"{ms(raw.get('predicted_ms')):>7} {ms(raw['measured_ms']):>7} "
              f"{ratio(raw['measured_over_budget']):>6} {ratio(raw.get('slow_over_budget')):>6} | "
              f"{(ver.get('architecture') or '-')[:28]:<28} {ms(ver.get('predicted_ms')):>7} "
              f"{ms(ver['measured_ms']):>7} {ratio(ver['measured_over_budget']):>6} "
              f"{ratio(ver.get('slow_over_budget')):>6} "
              f"{len(ver.get('iterations') or []):>3} {ver.get('status') or ver.get('error')}")

if __name__ == "__main__":
    main()
